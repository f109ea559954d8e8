//! Hot upgrade under open connections: opens CONNECTIONS idle nmdb connections and a few busy
//! ones (one GET at a time, back to back), runs `polykv upgrade`, and reports how long the
//! upgrade took and the longest wait a busy client saw (its pause); then every idle connection
//! must still answer a GET.
//!
//! `upgrade_pause POLYKV DATA_DIR NMDB_ADDR CONNECTIONS` (run by scripts/upgrade-pause.sh).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use polykv_client::nmdb::{Mode, NmdbClient};

const BUSY: usize = 4;
const T: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bin, data_dir, addr, count] = &args[..] else {
        eprintln!("usage: upgrade_pause POLYKV DATA_DIR NMDB_ADDR CONNECTIONS");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("CONNECTIONS is a number");

    let mut idle = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = NmdbClient::connect_tcp(addr, T)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.set(format!("idle{i}").as_bytes(), b"v", Mode::Normal)
            .await
            .expect("first set");
        idle.push(c);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let longest_us = Arc::new(AtomicU64::new(0));
    // When the longest wait began (µs since the epoch), to place it among the servers' logs.
    let longest_at = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut busy = Vec::new();
    for _ in 0..BUSY {
        let (addr, stop, longest_us, longest_at, failed) = (
            addr.clone(),
            stop.clone(),
            longest_us.clone(),
            longest_at.clone(),
            failed.clone(),
        );
        busy.push(tokio::spawn(async move {
            let mut c = NmdbClient::connect_tcp(&addr, T)
                .await
                .expect("busy client");
            let mut requests = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (started, wall) = (Instant::now(), epoch_us());
                if c.get(b"idle0", Mode::Normal).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let waited = started.elapsed().as_micros() as u64;
                if waited > longest_us.fetch_max(waited, Ordering::Relaxed) {
                    longest_at.store(wall, Ordering::Relaxed);
                }
                requests += 1;
            }
            requests
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Only the upgrade counts: the pause before it is the load's own.
    longest_us.store(0, Ordering::Relaxed);

    let started = Instant::now();
    let output = tokio::process::Command::new(bin)
        .args(["upgrade", "--data-dir", data_dir])
        .output()
        .await
        .expect("polykv upgrade runs");
    let upgrade_ms = started.elapsed().as_secs_f64() * 1e3;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        std::process::exit(1);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for task in busy {
        requests += task.await.expect("busy client");
    }

    let mut lost = 0;
    for (i, c) in idle.iter_mut().enumerate() {
        match c.get(format!("idle{i}").as_bytes(), Mode::Normal).await {
            Ok(Some(_)) => {}
            _ => lost += 1,
        }
    }
    println!(
        "connections {count}: upgrade command {upgrade_ms:.0} ms, longest busy-client wait {:.1} ms \
         (from {} UTC), {requests} busy requests, {} failed, idle connections lost {lost}",
        longest_us.load(Ordering::Relaxed) as f64 / 1e3,
        time_of_day(longest_at.load(Ordering::Relaxed)),
        failed.load(Ordering::Relaxed)
    );
    if lost > 0 || failed.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `HH:MM:SS.micros` of a time in µs since the epoch, as the servers' log lines show it.
fn time_of_day(us: u64) -> String {
    let (secs, micros) = (us / 1_000_000, us % 1_000_000);
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day / 60 % 60,
        day % 60
    )
}
