//! Replays the saved fuzz corpus (`fuzz/seeds/TARGET/`, minimized with `cargo fuzz cmin`; see
//! `scripts/fuzz.sh`) through each codec's fuzz body, so the default test run exercises every
//! input the fuzzer found interesting, on stable.

use std::path::PathBuf;

use polykv_protocols::{jsonkv, minority, nmdb, opencluster, smalld};

/// A fuzz body: decodes, re-encodes and checks whatever it is given.
type Body = fn(&[u8]);

/// Runs `body` on every saved input of `target`; returns how many there were.
fn replay(target: &str, body: Body) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        body(&data);
        count += 1;
    }
    count
}

#[test]
fn every_saved_input_round_trips_through_its_codec() {
    let targets: [(&str, Body); 10] = [
        ("nmdb_server", nmdb::fuzz_server),
        ("nmdb_client", nmdb::fuzz_client),
        ("minority_server", minority::fuzz_server),
        ("minority_client", minority::fuzz_client),
        ("smalld_server", smalld::fuzz_server),
        ("smalld_client", smalld::fuzz_client),
        ("opencluster_server", opencluster::fuzz_server),
        ("opencluster_client", opencluster::fuzz_client),
        ("jsonkv_server", jsonkv::fuzz_server),
        ("jsonkv_client", jsonkv::fuzz_client),
    ];
    for (target, body) in targets {
        let count = replay(target, body);
        assert!(count > 0, "{target}: no saved inputs");
    }
}
