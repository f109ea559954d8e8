//! Durable write throughput of a 3-node cluster in one process (in-process transport, or TCP on
//! loopback with `tcp` as the first argument): 64 concurrent writers on the leader.
//!   cargo run --release -p polykv-cluster --example throughput [tcp]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polykv_cluster::identity::Identity;
use polykv_cluster::sim::Router;
use polykv_cluster::tcp::{self, TcpTransport};
use polykv_cluster::transport::Transport;
use polykv_cluster::{Member, Node, NodeConfig};
use polykv_engine::{Command, Durability, Engine, EngineConfig, Value};

#[tokio::main]
async fn main() {
    let use_tcp = std::env::args().nth(1).as_deref() == Some("tcp");
    let size: u64 = std::env::var("NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let router = Router::new(1);
    let mut nodes = Vec::new();
    let mut members = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=size {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            id,
            Member {
                addr: listener.local_addr().unwrap().to_string(),
            },
        );
        listeners.push(listener);
    }
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let engine =
            Engine::open_dir(&dir.path().join(format!("e{id}")), EngineConfig::default()).unwrap();
        let config = NodeConfig::new(id, dir.path().join(format!("r{id}")));
        let identity = Arc::new(Identity::in_memory(None));
        let (transport, tcp_transport): (Arc<dyn Transport>, _) = if use_tcp {
            let t = TcpTransport::new(id, b"secret", identity.clone());
            (t.clone(), Some(t))
        } else {
            (router.transport(id), None)
        };
        let node = Node::start(config, engine, transport).await.unwrap();
        if let Some(t) = tcp_transport {
            tokio::spawn(tcp::serve(
                listener,
                Arc::new(node.clone()),
                b"secret".as_slice().into(),
                identity,
                t.counters.clone(),
            ));
        }
        router.register(id, Arc::new(node.clone()));
        nodes.push(node);
    }
    nodes[0].initialize(members).await.unwrap();
    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| n.is_leader()) {
            break n.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    leader
        .submit(
            Command::CreateKeyspace { name: "t".into() },
            Durability::Sync,
        )
        .await
        .unwrap();
    let started = Instant::now();
    let per_writer = 300u64;
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let node = leader.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let command = Command::put(0, format!("k{w}-{i}"), Value::I64(i as i64));
                node.submit(command, Durability::Sync).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{} writes in {elapsed:?}: {:.0}/s",
        64 * per_writer,
        (64 * per_writer) as f64 / elapsed.as_secs_f64()
    );
    for node in &nodes {
        node.shutdown().await;
    }
}
