//! Crash test (slow; run by `scripts/crash-engine.sh`, ignored by the default test run):
//! a child process does concurrent Sync or Async writes, some while checkpoints run constantly,
//! and is SIGKILLed at random moments; after each restart every acknowledged write must be there
//! and versions must never go backwards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// key -> (value, version)
type State = HashMap<String, (i64, u64)>;

fn parse_line(line: &str) -> Option<(String, i64, u64)> {
    let mut parts = line.split_whitespace();
    Some((
        parts.next()?.to_string(),
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

fn verify(exe: &str, dir: &std::path::Path) -> State {
    let out = Command::new(exe)
        .arg(dir)
        .arg("verify")
        .output()
        .expect("run verify");
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_line)
        .map(|(k, v, ver)| (k, (v, ver)))
        .collect()
}

#[test]
#[ignore = "slow: run by scripts/crash-engine.sh"]
fn sigkill_never_loses_an_acknowledged_write() {
    let exe =
        std::env::var("CRASH_WRITER").expect("CRASH_WRITER = path of the crash_writer example");
    let cycles: u32 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut acked: State = HashMap::new();
    let mut max_version = 0u64;
    let mut total_acked = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        // Sync writes, then Async ones (acknowledged once in the OS buffers, which a killed
        // process cannot lose either), then Async ones while checkpoints run all the time.
        let mode = ["write", "write-async", "write-checkpointing"][cycle as usize % 3];
        let mut child = Command::new(&exe)
            .arg(dir.path())
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start child");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(100 + seed % 700);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse_line(&l))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(run_for);
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let lines = reader.join().unwrap();
        total_acked += lines.len() as u64;
        for (key, value, version) in lines {
            acked.insert(key, (value, version));
        }
        let state = verify(&exe, dir.path());
        for (key, (value, version)) in &acked {
            let (found_value, found_version) = state
                .get(key)
                .copied()
                .unwrap_or_else(|| panic!("cycle {cycle}: {key} lost"));
            assert!(
                found_value >= *value,
                "cycle {cycle}: {key} went back from {value} to {found_value}"
            );
            assert!(
                found_version >= *version,
                "cycle {cycle}: {key} version went back"
            );
        }
        let newest = state.values().map(|(_, v)| *v).max().unwrap_or(0);
        assert!(
            newest >= max_version,
            "versions went backwards across a restart"
        );
        max_version = newest;
        // Start the next cycle's expectations from what survived (later writes may have landed).
        acked = state;
    }
    println!(
        "crash test: {cycles} SIGKILL cycles, {total_acked} acknowledged Sync and Async writes verified, newest version {max_version}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
