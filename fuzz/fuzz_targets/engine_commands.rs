#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polykv_engine::fuzz::fuzz_commands(data));
