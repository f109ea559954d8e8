//! A rolling hot upgrade of a three-process cluster (127.0.0.1, .2, .3): `polykv upgrade` on
//! each node in turn, followers first, then the leader, while clients on every node write
//! through connections they never reopen. Nothing acknowledged fails or is lost, no
//! connection is closed by a server, and the cluster has a leader at the end.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{
    agreed_leader, assert_every_node_has, client, log_tails, spawn_ready_with, wait_ready, Ports,
};
use common::{serving_pid, Adopted};
use polykv_client::nmdb::Mode;

#[derive(Default)]
struct Tally {
    acked: Mutex<Vec<(String, String)>>,
    /// The slowest acknowledged write, in µs (printed: what a client waits at most).
    longest_us: std::sync::atomic::AtomicU64,
    /// Failed requests and closed connections, with what happened.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits (bounded) until `count` writes were acknowledged.
    async fn wait_for(&self, count: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.acked() >= count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_followers_then_leader_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    // What this test asks is that an upgrade loses and refuses nothing. The default timing
    // (30 ms heartbeats, 100 ms elections, 2 s for a write to find a leader) is tuned for fast
    // failover and assumes pauses well under 100 ms; with the whole suite running in parallel
    // on two cores, debug builds paused longer, every RPC timed out, elections churned and
    // Sync writes failed with ERR_DB. The timing is set to what such a machine needs.
    let timing = [
        "--cluster-heartbeat-ms=100",
        "--cluster-election-timeout-ms=1000",
        "--cluster-write-timeout-ms=10000",
    ];
    let (mut nodes, _) = spawn_ready_with(dir.path(), &ports, &timing);
    let leader = agreed_leader(&ports);

    // Two writers per node, each on one connection for the whole test: an error (a failed
    // request or a connection the server closed) is a failure, never retried.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let id = w % 3 + 1;
        let mut conn = client(id, &ports).await.expect("writer connects");
        let (tally, stop) = (tally.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let (key, value) = (format!("w{w}-{n}"), format!("value {n}"));
                let started = Instant::now();
                match conn.set(key.as_bytes(), value.as_bytes(), Mode::Sync).await {
                    Ok(()) => {
                        let us = started.elapsed().as_micros() as u64;
                        tally.longest_us.fetch_max(us, Ordering::Relaxed);
                        tally.acked.lock().unwrap().push((key, value));
                    }
                    Err(e) => {
                        let failure = format!("writer {w} on node {id}, {key}: {e}");
                        tally.failures.lock().unwrap().push(failure);
                        return;
                    }
                }
            }
        }));
    }
    assert!(tally.wait_for(200).await, "writes flow before the upgrade");

    let mut adopted = Vec::new();
    let order: Vec<u64> = (1..=3).filter(|id| *id != leader).chain([leader]).collect();
    for id in order {
        let data_dir = dir.path().join(format!("node{id}"));
        let before = tally.acked();
        let data = data_dir.to_str().unwrap().to_string();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let args = ["upgrade", "--data-dir", &data, "--timeout-secs", "60"];
            common::run_cli(&args, &[])
        })
        .await
        .unwrap();
        let log = std::fs::read_to_string(dir.path().join(format!("node{id}.log")));
        assert_eq!(
            code,
            0,
            "upgrade of node {id}: {out}{err}\n{}",
            log.unwrap_or_default()
        );
        let old_pid = nodes[&id].child.as_ref().unwrap().id() as i32;
        let new_pid = serving_pid(&data_dir);
        assert_ne!(
            new_pid, old_pid,
            "node {id}'s lock file names the new process"
        );
        adopted.push(Adopted(new_pid));
        // The old process hands over and exits 0.
        let old = nodes.get_mut(&id).unwrap().child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = old.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "node {id}'s old process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "node {id}'s old process: {status}");
        nodes.get_mut(&id).unwrap().child = None;
        // The upgraded node rejoins, and writes go on everywhere.
        wait_ready(id, &ports, dir.path());
        if !tally.wait_for(before + 100).await {
            panic!(
                "writes flow after node {id}'s upgrade (acknowledged {} in all; writers that \
                 stopped: {:?})\n{}",
                tally.acked(),
                tally.failures.lock().unwrap(),
                log_tails(dir.path(), 60)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    let failures = tally.failures.lock().unwrap().clone();
    if !failures.is_empty() {
        // The nodes' logs say why (a flake seen once under heavy load left none to read).
        let logs: String = (1..=3)
            .map(|id| {
                let log = std::fs::read_to_string(dir.path().join(format!("node{id}.log")));
                format!("--- node {id}\n{}\n", log.unwrap_or_default())
            })
            .collect();
        panic!("failed or closed: {failures:?}\n{logs}");
    }
    let leader_after = agreed_leader(&ports);
    let acked = tally.acked.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged, the slowest in {} ms; leader {leader} before, {leader_after} after",
        acked.len(),
        tally.longest_us.load(Ordering::Relaxed) / 1000
    );
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node{id}.log")));
        for line in log
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("upgrade:"))
        {
            eprintln!("node {id}: {line}");
        }
    }
    // Every acknowledged write is on every node.
    assert_every_node_has(&ports, &acked).await;
}
