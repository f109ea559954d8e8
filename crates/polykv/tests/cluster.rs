//! Three real `polykv` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 forming a cluster:
//! writes through a follower, SIGKILL of the leader under load, the survivors taking writes
//! again, the killed node restarting and catching up, and no acknowledged write lost.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{assert_every_node_has, client, spawn, spawn_ready, wait_ready, Ports};
use polykv_client::nmdb::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_a_leader_kill_under_load_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let (mut nodes, leader) = spawn_ready(dir.path(), &ports);
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Writes through a follower are answered on its own connection and read on every node.
    let mut c = client(follower, &ports).await.unwrap();
    for i in 0..20 {
        c.set(format!("f{i}").as_bytes(), b"v", Mode::Sync)
            .await
            .unwrap();
    }
    for id in 1..=3 {
        let mut c = client(id, &ports).await.unwrap();
        let got = c.get(b"f19", Mode::Normal).await.unwrap();
        assert_eq!(got.map(|(v, _)| v).as_deref(), Some(&b"v"[..]), "node {id}");
    }

    // Load: writers on every node record what was acknowledged; the leader is killed midway.
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let acked = acked.clone();
        let stop = stop.clone();
        let id = w % 3 + 1;
        let nmdb = ports.nmdb;
        writers.push(tokio::spawn(async move {
            let ports = Ports {
                admin: 0,
                nmdb,
                cluster: 0,
            };
            let mut conn = None;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5000 {
                n += 1;
                if conn.is_none() {
                    conn = client(id, &ports).await;
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let key = format!("w{w}-{n}");
                let value = format!("value {n}");
                let Some(c) = conn.as_mut() else { continue };
                match c.set(key.as_bytes(), value.as_bytes(), Mode::Sync).await {
                    Ok(()) => acked.lock().unwrap().push((key, value)),
                    Err(_) => {
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    // Let the load run, then SIGKILL the leader.
    let wait_for = |count: usize| {
        let acked = acked.clone();
        async move {
            for _ in 0..600 {
                if acked.lock().unwrap().len() >= count {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(wait_for(200).await, "writes flow before the kill");
    nodes.remove(&leader);
    let before_kill = acked.lock().unwrap().len();
    // The survivors take writes again.
    assert!(
        wait_for(before_kill + 200).await,
        "the survivors accept writes after the leader's death"
    );
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let new_leader = wait_ready(survivor, &ports, dir.path());
    assert_ne!(new_leader, leader);

    // The killed node restarts and catches up.
    nodes.insert(leader, spawn(leader, dir.path(), &ports));
    wait_ready(leader, &ports, dir.path());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    // Every acknowledged write is on every node, the restarted one included.
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged, {before_kill} before the leader ({leader}) was killed",
        acked.len()
    );
    assert!(acked.len() > 400, "{} writes acknowledged", acked.len());
    assert_every_node_has(&ports, &acked).await;
    assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
}
