#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polykv_protocols::jsonkv::fuzz_server(data));
