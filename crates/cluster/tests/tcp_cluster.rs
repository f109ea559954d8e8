//! Three nodes over the real cluster port on loopback: they authenticate with the secret,
//! replicate, and shrug off strangers, wrong secrets and garbage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polykv_cluster::identity::Identity;
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
    start_electing_after(id, listener, dir, Duration::from_millis(200)).await
}

/// A node that stands for election after `election_min` to twice that without a leader.
async fn start_electing_after(
    id: NodeId,
    listener: TcpListener,
    dir: &std::path::Path,
    election_min: Duration,
) -> Started {
    let path = dir.join(format!("e{id}"));
    // A node stopped just before may still be letting go of its engine.
    let mut engine = Engine::open_dir(&path, EngineConfig::default());
    for _ in 0..100 {
        if engine.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        engine = Engine::open_dir(&path, EngineConfig::default());
    }
    let engine = engine.unwrap();
    let mut config = NodeConfig::new(id, dir.join(format!("r{id}")));
    config.heartbeat = Duration::from_millis(50);
    config.election_min = election_min;
    config.election_max = 2 * election_min;
    let identity = Arc::new(Identity::open(&dir.join(format!("r{id}"))).unwrap());
    let transport = TcpTransport::new(id, SECRET, identity.clone());
    let node = Node::start(config, engine, transport.clone())
        .await
        .unwrap();
    let server = tokio::spawn(tcp::serve(
        listener,
        Arc::new(node.clone()),
        SECRET.into(),
        identity,
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
    polykv_cluster::auth::dial(&mut peer, SECRET, 9, &Identity::in_memory(None))
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
    polykv_cluster::auth::dial(&mut peer, SECRET, 9, &Identity::in_memory(None))
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

async fn listeners(n: u64) -> (Vec<TcpListener>, BTreeMap<NodeId, Member>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        members.insert(id, Member { addr });
        listeners.push(listener);
    }
    (listeners, members)
}

/// Three nodes founded in `dir` by node 1, which alone stands for election soon: it leads in
/// term 1. Then the same two writes, a keyspace and `k` = `value`, so that two such clusters
/// have histories that match entry for entry (ids, terms, leader), values aside.
async fn found_led_by_node_1(
    dir: &std::path::Path,
    value: i64,
) -> (Vec<Started>, BTreeMap<NodeId, Member>) {
    let (listeners, members) = listeners(3).await;
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let election = if id == 1 { 150 } else { 20_000 };
        nodes.push(start_electing_after(id, listener, dir, Duration::from_millis(election)).await);
    }
    nodes[0].node.initialize(members.clone()).await.unwrap();
    let leader: &Node = &nodes[0].node;
    leader
        .submit(
            Command::CreateKeyspace { name: "t".into() },
            Durability::Sync,
        )
        .await
        .unwrap();
    leader
        .submit(Command::put(0, "k", Value::I64(value)), Durability::Sync)
        .await
        .unwrap();
    for started in &nodes {
        started.node.read_barrier().await.unwrap();
    }
    (nodes, members)
}

async fn stop(started: Started) {
    started.node.shutdown().await;
    started.server.abort();
    started.node.engine().close();
}

/// A node whose data belongs to another cluster is refused at the cluster port by the cluster
/// id, even when the two clusters' histories match entry for entry: ids, terms and leader are
/// the same, so nothing in the Raft log tells them apart, and without the id the intruder
/// would take this cluster's next entries on top of its own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_with_a_matching_history_is_refused_by_the_cluster_id() {
    let ours_dir = tempfile::tempdir().unwrap();
    let theirs_dir = tempfile::tempdir().unwrap();
    let (mut ours, members) = found_led_by_node_1(ours_dir.path(), 1).await;
    let (mut theirs, _) = found_led_by_node_1(theirs_dir.path(), 7).await;
    let (a, b) = (ours[0].node.status(), theirs[0].node.status());
    assert_eq!((a.leader, a.term), (Some(1), 1), "{a:?}");
    assert_eq!((b.leader, b.term), (Some(1), 1), "{b:?}");
    assert_eq!(a.last_log_index, b.last_log_index);
    let (our_id, their_id) = (ours[0].node.cluster_uid(), theirs[0].node.cluster_uid());
    assert!(our_id.is_some() && their_id.is_some() && our_id != their_id);
    for started in &ours {
        assert_eq!(
            started.node.cluster_uid(),
            our_id,
            "every member took the founder's id"
        );
    }

    // Their node 3 comes up, with its data, where ours was.
    stop(ours.pop().unwrap()).await;
    let their_3 = theirs.pop().unwrap();
    assert_eq!(their_3.node.cluster_uid(), their_id);
    stop(their_3).await;
    for started in theirs {
        stop(started).await;
    }
    let listener = TcpListener::bind(&members[&3].addr).await.unwrap();
    let intruder =
        start_electing_after(3, listener, theirs_dir.path(), Duration::from_secs(20)).await;

    // Our cluster goes on; the intruder takes none of it and keeps its own data.
    for i in 0..10 {
        ours[0]
            .node
            .submit(
                Command::put(0, format!("later{i}"), Value::I64(i)),
                Durability::Sync,
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(intruder.node.cluster_uid(), their_id);
    let engine = intruder.node.engine();
    assert_eq!(
        engine.get(0, b"k").unwrap().unwrap().entry.value,
        Value::I64(7)
    );
    assert!(
        engine.get(0, b"later9").unwrap().is_none(),
        "the intruder took entries of a cluster its data does not belong to"
    );
    let refused = ours[0]
        .transport
        .counters
        .foreign_refusals
        .load(Ordering::Relaxed)
        + intruder
            .transport
            .counters
            .foreign_refusals
            .load(Ordering::Relaxed);
    assert!(refused >= 1, "the cluster id was checked");
    stop(intruder).await;
    for started in ours {
        stop(started).await;
    }
}
