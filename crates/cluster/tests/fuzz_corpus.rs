//! Replays the saved corpus of the cluster message codec's fuzz target
//! (`fuzz/seeds/cluster_wire/`) on stable.

use std::path::PathBuf;

#[test]
fn every_saved_frame_decodes_or_is_refused_without_panicking() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/cluster_wire");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        polykv_cluster::wire::fuzz_codec(&data);
        // Every cut and every flipped byte of a saved frame is handled too.
        for cut in 0..data.len() {
            polykv_cluster::wire::fuzz_codec(&data[..cut]);
        }
        for i in 0..data.len() {
            let mut flipped = data.clone();
            flipped[i] ^= 0xA5;
            polykv_cluster::wire::fuzz_codec(&flipped);
        }
        count += 1;
    }
    assert!(count > 0, "no saved inputs");
}
