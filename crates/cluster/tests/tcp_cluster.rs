//! Three nodes over the real cluster port on loopback: they authenticate with the secret,
//! replicate, and shrug off strangers, wrong secrets and garbage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polykv_cluster::tcp::{self, TcpTransport};
use polykv_cluster::{Member, Node, NodeConfig, NodeId};
use polykv_engine::{Command, Durability, Engine, EngineConfig, Outcome, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"test cluster secret";

struct Started {
    node: Node,
    transport: Arc<TcpTransport>,
    server: tokio::task::JoinHandle<()>,
}

async fn start(id: NodeId, listener: TcpListener, dir: &std::path::Path) -> Started {
    let engine = Engine::open_dir(&dir.join(format!("e{id}")), EngineConfig::default()).unwrap();
    let mut config = NodeConfig::new(id, dir.join(format!("r{id}")));
    config.heartbeat = Duration::from_millis(50);
    config.election_min = Duration::from_millis(200);
    config.election_max = Duration::from_millis(400);
    let transport = TcpTransport::new(id, SECRET);
    let node = Node::start(config, engine, transport.clone())
        .await
        .unwrap();
    let server = tokio::spawn(tcp::serve(
        listener,
        Arc::new(node.clone()),
        SECRET.into(),
        transport.counters.clone(),
    ));
    Started {
        node,
        transport,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_replicate_and_refuse_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        members.insert(id, Member { addr });
        listeners.push(listener);
    }
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        nodes.push(start(i as u64 + 1, listener, dir.path()).await);
    }
    nodes[0].node.initialize(members.clone()).await.unwrap();
    // A write through node 3 (a follower or the leader, whichever) reaches every node.
    let created = nodes[2]
        .node
        .submit(
            Command::CreateKeyspace { name: "t".into() },
            Durability::Sync,
        )
        .await
        .unwrap();
    assert_eq!(created, Outcome::KeyspaceCreated(0));
    for i in 0..20 {
        nodes[i % 3]
            .node
            .submit(
                Command::put(0, format!("k{i}"), Value::I64(i as i64)),
                Durability::Sync,
            )
            .await
            .unwrap();
    }
    for started in &nodes {
        started.node.read_barrier().await.unwrap();
        let got = started.node.engine().get(0, b"k19").unwrap().unwrap();
        assert_eq!(got.entry.value, Value::I64(19));
    }

    let target = &members[&1].addr;
    let counters = nodes[0].transport.counters.clone();
    // A wrong secret: the node closes the connection after the fixed-size answer.
    let mut stranger = TcpStream::connect(target).await.unwrap();
    let mut challenge = [0u8; polykv_cluster::auth::CHALLENGE_LEN];
    stranger.read_exact(&mut challenge).await.unwrap();
    stranger
        .write_all(&[0x41; polykv_cluster::auth::ANSWER_LEN])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stranger.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || rest.is_empty(),
        "nothing more is said to a stranger"
    );
    assert!(counters.auth_failures.load(Ordering::Relaxed) >= 1);

    // A peer that authenticates and then sends garbage is disconnected.
    let mut peer = TcpStream::connect(target).await.unwrap();
    polykv_cluster::auth::dial(&mut peer, SECRET, 9)
        .await
        .unwrap();
    peer.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(read.is_err() || rest.is_empty());
    // An oversized length is refused before its body is read.
    let mut peer = TcpStream::connect(target).await.unwrap();
    polykv_cluster::auth::dial(&mut peer, SECRET, 9)
        .await
        .unwrap();
    peer.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(read.is_err() || rest.is_empty());
    assert!(counters.garbage_disconnects.load(Ordering::Relaxed) >= 2);

    // And the cluster keeps serving.
    nodes[1]
        .node
        .submit(Command::put(0, "after", Value::I64(1)), Durability::Sync)
        .await
        .unwrap();
    for started in nodes {
        started.node.shutdown().await;
        started.server.abort();
    }
}
