#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| polykv_cluster::wire::fuzz_codec(data));
