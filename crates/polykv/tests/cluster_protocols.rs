//! The protocols' cluster behaviour on three real processes (127.0.0.1, .2 and .3):
//! OpenCluster's serverlist and hashmasks, tryelsewhere from a backup, pushes after a leader
//! kill and when a node goes and comes back, the dead node's locks released; jsonkv's agent
//! listing every live member; a minority subscriber on a follower seeing every committed
//! change in order across the leader change.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{agreed_leader, free_everywhere, spawn_with, wait_ready, ClusterNode, Ports};
use polykv_client::jsonkv::AgentClient;
use polykv_client::minority::MinorityClient;
use polykv_protocols::jsonkv::ServerProtocol;

/// The leader declares a node down after this long unreachable (`cluster.node_down_ms`).
const NODE_DOWN_MS: u64 = 1000;

struct Protocols {
    opencluster: u16,
    minority: u16,
    jsonkv: u16,
    agent: u16,
}

fn spawn(id: u64, dir: &std::path::Path, ports: &Ports, p: &Protocols) -> ClusterNode {
    let flags = [
        "--nmdb-udp-enabled=false".to_string(),
        "--smalld-enabled=false".into(),
        "--jsonkv-udp-enabled=false".into(),
        "--jsonkv-rpc-enabled=false".into(),
        format!("--opencluster-port={}", p.opencluster),
        format!("--minority-port={}", p.minority),
        format!("--jsonkv-port={}", p.jsonkv),
        format!("--jsonkv-agent-port={}", p.agent),
        format!("--cluster-node-down-ms={NODE_DOWN_MS}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_with(id, dir, ports, &flags)
}

fn host(id: u64) -> String {
    common::cluster::host(id)
}

/// One OpenCluster message: id, repcmd, user id, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    id: u16,
    repcmd: u16,
    user: u32,
    payload: Vec<u8>,
}

impl Message {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.id.to_be_bytes());
        out.extend(self.repcmd.to_be_bytes());
        out.extend(self.user.to_be_bytes());
        out.extend((self.payload.len() as u32).to_be_bytes());
        out.extend(&self.payload);
        out
    }
}

fn str_field(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u32).to_be_bytes().to_vec();
    out.extend(text.as_bytes());
    out
}

/// The serverlist push (100) naming `servers`.
fn serverlist(user: u32, servers: &[String]) -> Message {
    let mut payload = (servers.len() as u32).to_be_bytes().to_vec();
    for s in servers {
        payload.extend(str_field(s));
    }
    Message {
        id: 100,
        repcmd: 0,
        user,
        payload,
    }
}

/// The hashmasks push (110): mask 0x0F, every bucket at `level`.
fn hashmasks(user: u32, level: i32) -> Message {
    let mut payload = 0x0Fu32.to_be_bytes().to_vec();
    payload.extend(16u32.to_be_bytes());
    for bucket in 0..16u32 {
        payload.extend(bucket.to_be_bytes());
        payload.extend(level.to_be_bytes());
    }
    Message {
        id: 110,
        repcmd: 0,
        user,
        payload,
    }
}

struct Oc {
    stream: TcpStream,
    next_user: u32,
}

impl Oc {
    fn connect(id: u64, port: u16) -> Oc {
        let stream = TcpStream::connect((host(id).as_str(), port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Oc {
            stream,
            next_user: 1,
        }
    }

    fn send(&mut self, id: u16, payload: Vec<u8>) -> u32 {
        let user = self.next_user;
        self.next_user += 1;
        let message = Message {
            id,
            repcmd: 0,
            user,
            payload,
        };
        self.stream.write_all(&message.bytes()).unwrap();
        user
    }

    /// The next message, waiting up to `wait`.
    fn recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        let mut header = [0u8; 12];
        let mut got = 0;
        while got < 12 {
            if Instant::now() > deadline {
                assert_eq!(got, 0, "a message cut short");
                return None;
            }
            match self.stream.read(&mut header[got..]) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        self.stream.read_exact(&mut payload).unwrap();
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Some(Message {
            id: u16::from_be_bytes([header[0], header[1]]),
            repcmd: u16::from_be_bytes([header[2], header[3]]),
            user: u32::from_be_bytes(header[4..8].try_into().unwrap()),
            payload,
        })
    }

    /// The reply to the command with user id `user`, collecting the pushes that come first.
    fn reply(&mut self, user: u32, pushes: &mut Vec<Message>) -> Message {
        loop {
            let message = self.recv(Duration::from_secs(10)).expect("a reply in time");
            if message.repcmd == 0 {
                pushes.push(message);
            } else {
                assert_eq!(message.user, user, "replies come in order");
                return message;
            }
        }
    }

    /// Pushes until `done` holds for the pushes so far, within `wait`.
    fn pushes_until(
        &mut self,
        pushes: &mut Vec<Message>,
        wait: Duration,
        done: impl Fn(&[Message]) -> bool,
    ) {
        let deadline = Instant::now() + wait;
        while !done(pushes) {
            assert!(
                Instant::now() < deadline,
                "pushes so far: {:?}",
                pushes.iter().map(|p| p.id).collect::<Vec<_>>()
            );
            if let Some(message) = self.recv(Duration::from_millis(200)) {
                assert_eq!(message.repcmd, 0, "only pushes are expected here");
                pushes.push(message);
            }
        }
    }
}

fn set_int(name: &str, value: i32) -> Vec<u8> {
    let mut payload = 0u32.to_be_bytes().to_vec();
    payload.extend(fnv1a32(name.as_bytes()).to_be_bytes());
    payload.extend(0i32.to_be_bytes()); // expires
    payload.extend(1i32.to_be_bytes()); // full wait
    payload.extend(str_field(name));
    payload.extend(value.to_be_bytes());
    payload
}

fn lock(name: &str) -> Vec<u8> {
    let mut payload = 0i32.to_be_bytes().to_vec();
    payload.extend(str_field(name));
    payload
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn reply(id: u16, repcmd: u16, user: u32, payload: Vec<u8>) -> Message {
    Message {
        id,
        repcmd,
        user,
        payload,
    }
}

/// The OpenCluster listeners of `ids`, as serverlist names them.
fn listeners(ids: &[u64], port: u16) -> Vec<String> {
    ids.iter()
        .map(|id| format!("{}:{port}", host(*id)))
        .collect()
}

/// jsonkv's agent on node `id` lists these (node id, address) with the jsonkv TCP port.
async fn agent_lists(id: u64, p: &Protocols) -> Vec<(u64, String, u16)> {
    let Ok(mut agent) =
        AgentClient::connect(&format!("{}:{}", host(id), p.agent), Duration::from_secs(2)).await
    else {
        return Vec::new();
    };
    agent
        .get_server_list(ServerProtocol::Tcp)
        .await
        .map(|list| {
            list.into_iter()
                .map(|e| (e.nodeid, e.address, e.port))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_agent_lists(id: u64, p: &Protocols, want: &[u64]) {
    let want: Vec<(u64, String, u16)> = want.iter().map(|n| (*n, host(*n), p.jsonkv)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = agent_lists(id, p).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}'s agent lists {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocols_follow_the_cluster_across_a_leader_kill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let p = Protocols {
        opencluster: free_everywhere(),
        minority: free_everywhere(),
        jsonkv: free_everywhere(),
        agent: free_everywhere(),
    };
    let mut nodes: BTreeMap<u64, ClusterNode> = (1..=3)
        .map(|id| (id, spawn(id, dir.path(), &ports, &p)))
        .collect();
    for id in 1..=3 {
        wait_ready(id, &ports, dir.path());
    }
    let leader = agreed_leader(&ports);
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    // jsonkv: every node's agent lists every member under its node id.
    for id in 1..=3 {
        wait_agent_lists(id, &p, &[1, 2, 3]).await;
    }

    // OpenCluster hello: the other members, then level 0 on the leader and 1, 2 on the
    // backups by id.
    let mut oc: BTreeMap<u64, Oc> = BTreeMap::new();
    for id in 1..=3 {
        let mut c = Oc::connect(id, p.opencluster);
        let user = c.send(10, Vec::new());
        let others: Vec<u64> = (1..=3).filter(|n| *n != id).collect();
        let level = if id == leader {
            0
        } else if id == followers[0] {
            1
        } else {
            2
        };
        assert_eq!(
            c.recv(Duration::from_secs(5)),
            Some(reply(1, 10, user, vec![]))
        );
        assert_eq!(
            c.recv(Duration::from_secs(5)),
            Some(serverlist(0, &listeners(&others, p.opencluster))),
            "node {id}"
        );
        assert_eq!(
            c.recv(Duration::from_secs(5)),
            Some(hashmasks(1, level)),
            "node {id}"
        );
        oc.insert(id, c);
    }

    // A data command on a backup: tryelsewhere with the leader's listener, nothing written.
    let mut pushes = Vec::new();
    let backup = followers[0];
    let c = oc.get_mut(&backup).unwrap();
    let user = c.send(2000, set_int("something", 45));
    let elsewhere = format!("{}:{}", host(leader), p.opencluster);
    assert_eq!(
        c.reply(user, &mut pushes),
        reply(4, 2000, user, str_field(&elsewhere))
    );
    let c = oc.get_mut(&leader).unwrap();
    let user = c.send(2000, set_int("something", 45));
    assert_eq!(c.reply(user, &mut pushes), reply(1, 2000, user, vec![]));

    // A lock taken through the leader's node is one holder across the cluster.
    let ack_of = |user| reply(1, 1000, user, vec![]);
    let fail_of = |user| reply(2, 1000, user, vec![]);
    let c = oc.get_mut(&leader).unwrap();
    let user = c.send(1000, lock("job"));
    assert_eq!(c.reply(user, &mut pushes), ack_of(user));
    let mut locker = Oc::connect(backup, p.opencluster);
    let user = locker.send(1000, lock("job"));
    assert_eq!(
        locker.reply(user, &mut pushes),
        fail_of(user),
        "held by the leader's connection"
    );
    assert!(
        pushes.is_empty(),
        "no pushes before hello or without a change"
    );

    // A lock with a timeout: renewed by its holder, refused to others until it runs out, then
    // taken over; unlock only by the holder.
    let timed = |seconds: i32, name: &str| {
        let mut payload = seconds.to_be_bytes().to_vec();
        payload.extend(str_field(name));
        payload
    };
    let unlock_of = |name: &str| str_field(name);
    let mut first = Oc::connect(leader, p.opencluster);
    let user = first.send(1000, timed(1, "short"));
    assert_eq!(first.reply(user, &mut pushes), ack_of(user));
    let user = first.send(1000, timed(1, "short"));
    assert_eq!(first.reply(user, &mut pushes), ack_of(user), "renewed");
    let user = locker.send(1000, timed(1, "short"));
    assert_eq!(locker.reply(user, &mut pushes), fail_of(user));
    let user = locker.send(1010, unlock_of("short"));
    assert_eq!(
        locker.reply(user, &mut pushes),
        reply(2, 1010, user, vec![])
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let user = locker.send(1000, timed(0, "short"));
    assert_eq!(locker.reply(user, &mut pushes), ack_of(user), "taken over");
    let user = first.send(1010, unlock_of("short"));
    assert_eq!(first.reply(user, &mut pushes), reply(2, 1010, user, vec![]));
    let user = locker.send(1010, unlock_of("short"));
    assert_eq!(
        locker.reply(user, &mut pushes),
        reply(1, 1010, user, vec![])
    );
    assert!(pushes.is_empty());

    // minority: a subscriber on a follower that survives the kill.
    let watcher_node = followers[1];
    let minority = |id: u64| format!("{}:{}", host(id), p.minority);
    let mut watcher = MinorityClient::connect(&minority(watcher_node), Duration::from_secs(5))
        .await
        .unwrap();
    watcher.notify(b"cfg", b"n").await.unwrap();
    let writer_task = {
        let addrs: Vec<String> = followers.iter().map(|id| minority(*id)).collect();
        tokio::spawn(async move {
            // Writes alternate over the followers (they forward), each value once; the
            // acknowledged ones are returned.
            let mut acked = Vec::new();
            let mut clients: Vec<Option<MinorityClient>> = vec![None, None];
            for i in 0..120u32 {
                let slot = (i % 2) as usize;
                if clients[slot].is_none() {
                    clients[slot] = MinorityClient::connect(&addrs[slot], Duration::from_secs(2))
                        .await
                        .ok();
                }
                let Some(client) = &mut clients[slot] else {
                    continue;
                };
                let value = format!("{i:04}");
                match client.set(b"cfg", b"n", value.as_bytes()).await {
                    Ok(()) => acked.push(value),
                    Err(_) => clients[slot] = None,
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            acked
        })
    };

    // Kill the leader mid-way through the writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(nodes.remove(&leader));
    let killed = Instant::now();

    // Right after the kill the lock is still held (or the cluster cannot decide yet).
    let user = locker.send(1000, lock("job"));
    let early = locker.reply(user, &mut pushes);
    assert_ne!(
        early.id, 1,
        "the dead node's lock is not released at once: {early:?}"
    );

    // The survivors' clients learn the new leader: hashmask pushes, level 0 on its node.
    let new_leader = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = common::cluster::leader_of(followers[0], &ports).filter(|l| {
                *l != leader && Some(*l) == common::cluster::leader_of(followers[1], &ports)
            }) {
                break l;
            }
            assert!(Instant::now() < deadline, "no new leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let hashmask_levels = |pushes: &[Message]| -> Vec<(u32, i32)> {
        pushes
            .iter()
            .filter(|m| m.id == 120)
            .map(|m| {
                assert_eq!(m.payload.len(), 12);
                assert_eq!(m.payload[..4], 0x0Fu32.to_be_bytes());
                let bucket = u32::from_be_bytes(m.payload[4..8].try_into().unwrap());
                let level = i32::from_be_bytes(m.payload[8..12].try_into().unwrap());
                (bucket, level)
            })
            .collect()
    };
    let mut seen: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
    for id in &followers {
        let c = oc.get_mut(id).unwrap();
        let mut got = Vec::new();
        let primary = *id == new_leader;
        c.pushes_until(&mut got, Duration::from_secs(10), |pushes| {
            let levels = hashmask_levels(pushes);
            levels.len() >= 16
                && levels[levels.len() - 16..]
                    .iter()
                    .enumerate()
                    .all(|(b, (bucket, level))| *bucket == b as u32 && (*level == 0) == primary)
        });
        // Pushes count on from the hello's two.
        for (n, push) in got.iter().enumerate() {
            assert_eq!(push.user, 2 + n as u32, "push user ids grow by one");
        }
        seen.insert(*id, got);
    }

    // Once the leader has declared the dead node down: serverlist without it, and its lock
    // released.
    for id in &followers {
        let other: Vec<u64> = followers.iter().copied().filter(|n| n != id).collect();
        let want = serverlist(0, &listeners(&other, p.opencluster)).payload;
        let c = oc.get_mut(id).unwrap();
        let got = seen.get_mut(id).unwrap();
        c.pushes_until(got, Duration::from_secs(10), |pushes| {
            pushes.iter().any(|m| m.id == 100 && m.payload == want)
        });
    }
    let released = loop {
        let user = locker.send(1000, lock("job"));
        let answer = locker.reply(user, &mut pushes);
        if answer == ack_of(user) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the dead node's lock is never released: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        released >= Duration::from_millis(NODE_DOWN_MS),
        "released after {released:?}, before the node could be declared down"
    );

    // tryelsewhere now names the new leader; jsonkv lists the survivors only.
    let backup = *followers.iter().find(|id| **id != new_leader).unwrap();
    let c = oc.get_mut(&backup).unwrap();
    let user = c.send(2000, set_int("something", 46));
    let elsewhere = format!("{}:{}", host(new_leader), p.opencluster);
    let mut later = Vec::new();
    assert_eq!(
        c.reply(user, &mut later),
        reply(4, 2000, user, str_field(&elsewhere))
    );
    wait_agent_lists(new_leader, &p, &followers).await;

    // minority: every acknowledged change reached the subscriber, in commit order, once.
    let acked = writer_task.await.unwrap();
    assert!(acked.len() > 60, "only {} writes acknowledged", acked.len());
    let last = acked.last().unwrap().clone();
    let mut received: Vec<String> = Vec::new();
    while received.last() != Some(&last) {
        let push = watcher
            .next_push(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("every committed change is pushed");
        received.push(String::from_utf8(push.value.to_vec()).unwrap());
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "pushes in commit order, none twice: {received:?}"
    );
    for value in &acked {
        assert!(
            received.contains(value),
            "acknowledged {value} was never pushed"
        );
    }

    // The killed node comes back: it registers again and the others' clients hear of it.
    nodes.insert(leader, spawn(leader, dir.path(), &ports, &p));
    wait_ready(leader, &ports, dir.path());
    for id in &followers {
        let others: Vec<u64> = (1..=3).filter(|n| n != id).collect();
        let want = serverlist(0, &listeners(&others, p.opencluster)).payload;
        let c = oc.get_mut(id).unwrap();
        let got = seen.get_mut(id).unwrap();
        c.pushes_until(got, Duration::from_secs(20), |pushes| {
            pushes.iter().any(|m| m.id == 100 && m.payload == want)
        });
    }
    wait_agent_lists(leader, &p, &[1, 2, 3]).await;

    // Removing a member from the cluster takes it off the others' server lists.
    let current = common::cluster::leader_of(followers[0], &ports).unwrap();
    let admin = format!("{}:{}", host(current), ports.admin);
    let removed =
        common::cluster::http(&admin, "DELETE", &format!("/api/cluster/members/{leader}"));
    assert_eq!(removed.map(|(status, _)| status), Some(200));
    for id in &followers {
        let other: Vec<u64> = followers.iter().copied().filter(|n| n != id).collect();
        let want = serverlist(0, &listeners(&other, p.opencluster)).payload;
        let c = oc.get_mut(id).unwrap();
        let got = seen.get_mut(id).unwrap();
        let before = got.len();
        c.pushes_until(got, Duration::from_secs(10), |pushes| {
            pushes[before..]
                .iter()
                .any(|m| m.id == 100 && m.payload == want)
        });
    }
    wait_agent_lists(new_leader, &p, &followers).await;

    // A node shutting down sends hello elsewhere: tryelsewhere with the leader (or another live
    // node), after the goodbye push.
    let target = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = followers
                .iter()
                .map(|id| common::cluster::leader_of(*id, &ports))
                .collect::<Vec<_>>();
            if let [Some(a), Some(b)] = seen[..] {
                if a == b && followers.contains(&a) {
                    break a;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {followers:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let stopping = *followers.iter().find(|id| **id != target).unwrap();
    let mut late = Oc::connect(stopping, p.opencluster);
    let user = late.send(30, Vec::new());
    assert_eq!(
        late.reply(user, &mut later),
        reply(1, 30, user, vec![]),
        "ping"
    );
    let pid = nodes[&stopping].child.as_ref().unwrap().id();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let goodbye = late.recv(Duration::from_secs(5)).expect("the goodbye push");
    assert_eq!((goodbye.id, goodbye.repcmd), (20, 0));
    let user = late.send(10, Vec::new());
    let elsewhere = format!("{}:{}", host(target), p.opencluster);
    assert_eq!(
        late.recv(Duration::from_secs(5)),
        Some(reply(4, 10, user, str_field(&elsewhere)))
    );
}
