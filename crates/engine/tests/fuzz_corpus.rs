//! Replays the saved corpus of the engine's command-sequence fuzz target
//! (`fuzz/seeds/engine_commands/`) on stable: each input drives the engine and a model and
//! compares them.

use std::path::PathBuf;

#[test]
fn every_saved_command_sequence_matches_the_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/engine_commands");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        polykv_engine::fuzz::fuzz_commands(&data);
        count += 1;
    }
    assert!(count > 0, "no saved inputs");
}
