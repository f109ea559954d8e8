//! Failover measurement (slow; run by `scripts/failover-cluster.sh`, ignored by the default test
//! run): three processes under a durable write load; the leader is SIGKILLed again and again
//! (restarted each time), and each time the test measures how long until a write invoked after
//! the kill is acknowledged. At the end every acknowledged write must be on every node.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{agreed_leader, client, spawn, spawn_ready, wait_ready, Ports};
use polykv_client::nmdb::Mode;

/// An acknowledged write: key, value, when it was sent and when it was acknowledged.
type Acked = (String, String, Instant, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: scripts/failover-cluster.sh"]
async fn leader_kills_fail_over_quickly_and_lose_no_acknowledged_write() {
    let kills: usize = std::env::var("POLYKV_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let ports = Arc::new(Ports::free());
    let (mut nodes, _) = spawn_ready(dir.path(), &ports);

    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..12u64 {
        let (acked, stop, ports) = (acked.clone(), stop.clone(), ports.clone());
        writers.push(tokio::spawn(async move {
            let mut id = w % 3 + 1;
            let mut conn = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = client(id, &ports).await;
                    if conn.is_none() {
                        id = id % 3 + 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                n += 1;
                let key = format!("w{w}-{n}");
                let value = format!("v{n}");
                let Some(c) = conn.as_mut() else { continue };
                let sent = Instant::now();
                match c.set(key.as_bytes(), value.as_bytes(), Mode::Sync).await {
                    Ok(()) => acked
                        .lock()
                        .unwrap()
                        .push((key, value, sent, Instant::now())),
                    Err(_) => {
                        // Try the next node: this one may be dead or cut off.
                        conn = None;
                        id = id % 3 + 1;
                    }
                }
            }
        }));
    }

    let acks = |acked: &Arc<Mutex<Vec<Acked>>>| acked.lock().unwrap().len();
    let mut failovers = Vec::new();
    for round in 0..kills {
        // Writes flow, every node up and caught up.
        let start = acks(&acked);
        for _ in 0..400 {
            if acks(&acked) >= start + 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leader = agreed_leader(&ports);
        let killed_at = Instant::now();
        nodes.remove(&leader);
        // Failover: the first write sent after the kill that is acknowledged.
        let mut failover = None;
        for _ in 0..1000 {
            failover = acked
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.2 >= killed_at)
                .map(|a| a.3 - killed_at)
                .min();
            if failover.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failover = failover.expect("writes resumed after the kill");
        eprintln!("kill {round}: leader {leader}, writes again after {failover:?}");
        failovers.push(failover);
        nodes.insert(leader, spawn(leader, dir.path(), &ports));
        wait_ready(leader, &ports, dir.path());
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    failovers.sort();
    let pick = |q: f64| failovers[((failovers.len() - 1) as f64 * q).round() as usize];
    let acked = acked.lock().unwrap().clone();
    let mut lost = 0usize;
    for id in 1..=3 {
        let mut c = client(id, &ports).await.unwrap();
        for (key, value, _, _) in &acked {
            let got = c.get(key.as_bytes(), Mode::Normal).await.unwrap();
            if got.map(|(v, _)| v).as_deref() != Some(value.as_bytes()) {
                lost += 1;
            }
        }
    }
    eprintln!(
        "failover over {kills} leader kills: p50 {:?}, p99 {:?}, max {:?}; {} writes acknowledged, {lost} lost",
        pick(0.5),
        pick(0.99),
        failovers.last().copied().unwrap_or_default(),
        acked.len()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(nodes.len(), 3);
}
