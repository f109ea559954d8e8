//! A cluster of real `polykv` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (node N on
//! 127.0.0.N), for the end-to-end cluster tests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use polykv_client::nmdb::{Mode, NmdbClient};

pub const T: Duration = Duration::from_secs(5);
pub const SECRET: &str = "end-to-end cluster secret";

/// A port free on all three loopback addresses.
pub fn free_everywhere() -> u16 {
    for _ in 0..100 {
        let port = super::free_port();
        if (2..=3).all(|n| TcpListener::bind((format!("127.0.0.{n}").as_str(), port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3");
}

pub struct Ports {
    pub admin: u16,
    pub nmdb: u16,
    pub cluster: u16,
}

impl Ports {
    /// Ports free on 127.0.0.1, .2 and .3 alike.
    pub fn free() -> Ports {
        Ports {
            admin: free_everywhere(),
            nmdb: free_everywhere(),
            cluster: free_everywhere(),
        }
    }
}

pub struct ClusterNode {
    pub child: Option<Child>,
}

/// Nodes 1, 2 and 3 (nmdb over TCP only), once each is ready; with the leader the last of them
/// reported.
pub fn spawn_ready(dir: &Path, ports: &Ports) -> (BTreeMap<u64, ClusterNode>, u64) {
    spawn_ready_with(dir, ports, &[])
}

/// [`spawn_ready`] with `settings` added to every node's flags (nmdb over TCP only).
pub fn spawn_ready_with(
    dir: &Path,
    ports: &Ports,
    settings: &[&str],
) -> (BTreeMap<u64, ClusterNode>, u64) {
    let flags: Vec<&str> = NMDB_ONLY.iter().chain(settings).copied().collect();
    let nodes = (1..=3)
        .map(|id| (id, spawn_with(id, dir, ports, &flags)))
        .collect();
    let mut leader = 0;
    for id in 1..=3 {
        leader = wait_ready(id, ports, dir);
    }
    (nodes, leader)
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn host(id: u64) -> String {
    format!("127.0.0.{id}")
}

/// Flags that switch off every protocol but nmdb over TCP.
const NMDB_ONLY: &[&str] = &[
    "--nmdb-udp-enabled=false",
    "--minority-enabled=false",
    "--opencluster-enabled=false",
    "--smalld-enabled=false",
    "--jsonkv-enabled=false",
    "--jsonkv-udp-enabled=false",
    "--jsonkv-rpc-enabled=false",
    "--jsonkv-agent-enabled=false",
];

/// Node `id` serving nmdb over TCP only.
pub fn spawn(id: u64, dir: &Path, ports: &Ports) -> ClusterNode {
    spawn_with(id, dir, ports, NMDB_ONLY)
}

/// Node `id` with `protocol_flags` (which protocols it serves, on which ports, and any other
/// setting) instead of nmdb only.
pub fn spawn_with(id: u64, dir: &Path, ports: &Ports, protocol_flags: &[&str]) -> ClusterNode {
    let peers = (1..=3)
        .map(|n| format!("{n}=127.0.0.{n}:{}", ports.cluster))
        .collect::<Vec<_>>()
        .join(",");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node{id}.log")))
        .unwrap();
    let child = Command::new(super::BIN)
        .arg("serve")
        .args(["--bind", &host(id)])
        .arg("--data-dir")
        .arg(dir.join(format!("node{id}")))
        .args(["--admin-port", &ports.admin.to_string()])
        .args(["--nmdb-port", &ports.nmdb.to_string()])
        .args(protocol_flags)
        .args(["--cluster-node-id", &id.to_string()])
        .args(["--cluster-port", &ports.cluster.to_string()])
        .args(["--cluster-peers", &peers])
        .args(["--cluster-secret", SECRET])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ClusterNode { child: Some(child) }
}

pub fn http(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(T)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The leader node `id` knows of, if it answers.
pub fn leader_of(id: u64, ports: &Ports) -> Option<u64> {
    let (status, body) = http(
        &format!("{}:{}", host(id), ports.admin),
        "GET",
        "/api/cluster",
    )?;
    if status != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["leader"].as_u64()
}

/// The leader all three nodes agree on, waiting (bounded) for them to agree.
pub fn agreed_leader(ports: &Ports) -> u64 {
    for _ in 0..1500 {
        let seen: Vec<Option<u64>> = (1..=3).map(|id| leader_of(id, ports)).collect();
        if let [Some(a), Some(b), Some(c)] = seen[..] {
            if a == b && b == c {
                return a;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the three nodes do not agree on a leader");
}

/// The last `lines` lines of every node's log, each under a heading (for failure messages).
pub fn log_tails(dir: &Path, lines: usize) -> String {
    (1..=3)
        .map(|id| {
            let log =
                std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            format!("--- node{id}.log, last lines ---\n{tail}\n")
        })
        .collect()
}

/// Waits (bounded) until the node serves its protocols and knows a leader; returns the leader.
pub fn wait_ready(id: u64, ports: &Ports, dir: &Path) -> u64 {
    let admin = format!("{}:{}", host(id), ports.admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, body)) = http(&admin, "GET", "/api/cluster") {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(leader) = status["leader"].as_u64() {
                return leader;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap_or_default();
    panic!("node {id} not ready; log:\n{log}");
}

pub async fn client(id: u64, ports: &Ports) -> Option<NmdbClient> {
    NmdbClient::connect_tcp(&format!("{}:{}", host(id), ports.nmdb), T)
        .await
        .ok()
}

/// Asserts that each of the three nodes holds every acknowledged `(key, value)` write. A
/// failure says which nodes do hold the write (the lost one of the seventh session was on the
/// node that took it only).
pub async fn assert_every_node_has(ports: &Ports, acked: &[(String, String)]) {
    for id in 1..=3 {
        let mut c = client(id, ports).await.unwrap();
        for (key, value) in acked {
            let got = c.get(key.as_bytes(), Mode::Normal).await.unwrap();
            if got.map(|(v, _)| v).as_deref() != Some(value.as_bytes()) {
                let mut holders = Vec::new();
                for other in 1..=3 {
                    let Some(mut o) = client(other, ports).await else {
                        continue;
                    };
                    if let Ok(Some((v, _))) = o.get(key.as_bytes(), Mode::Normal).await {
                        holders.push(format!("node {other}: {:?}", String::from_utf8_lossy(&v)));
                    }
                }
                panic!("node {id} lost acknowledged write {key} ({value:?}); held by {holders:?}");
            }
        }
    }
}
