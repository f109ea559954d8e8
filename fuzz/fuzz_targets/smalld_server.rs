#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polykv_protocols::smalld::fuzz_server(data));
