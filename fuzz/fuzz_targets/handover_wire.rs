#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polykv_server::upgrade::wire::fuzz_decode(data));
