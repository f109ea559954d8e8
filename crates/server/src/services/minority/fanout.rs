//! One writer per watched key: a set to a key with many subscribers is pushed to all of them
//! by one task, in one loop, instead of waking every subscriber's session.
//!
//! Each subscriber keeps its own engine watch (its queue, its coalescing, its version order).
//! A group of the key adds one more watch, its doorbell, registered after every member's (it
//! is renewed when one joins): the engine publishes to a key's watches in registration order,
//! so when the doorbell has an event every member has it too. The writer then takes each
//! member's events and writes them straight to the member's socket, but only while the
//! member's session waits with everything written: the session holds its connection's write
//! right ([`Outbox::write`]) whenever it is awake, and the writer only tries to take it. A
//! member whose session is awake keeps its events; its session is told and sends them
//! itself, after its replies. A push the socket takes only in part is finished by a task of
//! its own that keeps the write right until it is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use polykv_engine::{Change, Engine, Entry, KeyspaceId, Subscription};
use polykv_protocols::minority::{op, status, MinorityServerCodec, Response};
use polykv_protocols::ServerCodec;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedMutexGuard};

use super::keys::split_key;

/// Events the doorbell holds before it coalesces (it is drained at every pass).
const DOORBELL_QUEUE: usize = 64;
/// Most push bytes the writer composes for one member in one pass; more are left to the
/// member's session.
const MAX_PASS_BYTES: usize = 64 * 1024;

/// The keyspace's groups, one per watched key.
pub struct Fanout {
    engine: Engine,
    keyspace: KeyspaceId,
    codec: MinorityServerCodec,
    groups: Mutex<HashMap<Bytes, Arc<Group>>>,
}

/// A connection's write right and how its session is told about pushes left to it.
pub struct Outbox {
    /// Held by the session while it is awake, by the writer (or a task finishing a push)
    /// while it writes.
    write: Arc<tokio::sync::Mutex<()>>,
    /// The socket, while the session waits (set as it parks).
    stream: Mutex<Weak<TcpStream>>,
    /// Events were left to the session (it was awake, or a pass ran out of room).
    wake: Notify,
}

/// The write right, held.
pub type WriteRight = OwnedMutexGuard<()>;

impl Outbox {
    /// A new outbox and its write right, held: the session that asks is awake.
    pub fn new() -> (Arc<Outbox>, WriteRight) {
        let write = Arc::new(tokio::sync::Mutex::new(()));
        let held = write.clone().try_lock_owned().expect("a new lock is free");
        let outbox = Arc::new(Outbox {
            write,
            stream: Mutex::new(Weak::new()),
            wake: Notify::new(),
        });
        (outbox, held)
    }

    /// The session is about to wait with everything written: writers may use `stream`.
    pub fn park(&self, stream: &Arc<TcpStream>) {
        *self.stream.lock() = Arc::downgrade(stream);
    }

    /// Takes the write right (waits for a push being finished).
    pub async fn take(&self) -> WriteRight {
        self.write.clone().lock_owned().await
    }

    /// Waits until events were left to the session.
    pub async fn left(&self) {
        self.wake.notified().await
    }
}

/// One subscriber of a group: its own watch and where its pushes go.
pub struct Member {
    pub watch: Subscription,
    opaque: u32,
    outbox: Arc<Outbox>,
    group: Weak<Group>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(group) = self.group.upgrade() {
            group.live.fetch_sub(1, Ordering::Relaxed);
            group.rescan.notify_one();
        }
    }
}

/// The subscribers of one key and its writer's doorbell.
struct Group {
    key: Bytes,
    /// The key as minority ids, for the push frames.
    ids: (Bytes, Bytes),
    members: Mutex<Vec<Weak<Member>>>,
    doorbell: Mutex<Arc<Subscription>>,
    /// A member joined (a new doorbell) or left.
    rescan: Notify,
    /// Members not dropped yet: a rescan with members left and no event needs no pass.
    live: AtomicUsize,
}

impl Fanout {
    pub fn new(engine: Engine, keyspace: KeyspaceId, codec: MinorityServerCodec) -> Arc<Self> {
        Arc::new(Fanout {
            engine,
            keyspace,
            codec,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// Subscribes `outbox`'s connection to `key` (a key minority can express: see
    /// [`split_key`]). Returns the member and the key's current entry; pushes follow every
    /// change after that entry. Must run inside the Tokio runtime (the writer is spawned).
    pub fn join(
        self: &Arc<Self>,
        key: Bytes,
        opaque: u32,
        outbox: &Arc<Outbox>,
        capacity: usize,
    ) -> polykv_engine::Result<Option<(Arc<Member>, Option<Entry>)>> {
        let Some(ids) = split_key(&key) else {
            return Ok(None);
        };
        // Under the registry's lock: the writer leaves only through it, and joins of one key
        // renew its doorbell one at a time.
        let mut groups = self.groups.lock();
        let (watch, current) = self
            .engine
            .watch_key(self.keyspace, key.clone(), Some(capacity))?;
        let (doorbell, _) =
            self.engine
                .watch_key(self.keyspace, key.clone(), Some(DOORBELL_QUEUE))?;
        let doorbell = Arc::new(doorbell);
        let group = match groups.get(&key) {
            Some(group) => {
                *group.doorbell.lock() = doorbell;
                group.clone()
            }
            None => {
                let group = Arc::new(Group {
                    key: key.clone(),
                    ids,
                    members: Mutex::new(Vec::new()),
                    doorbell: Mutex::new(doorbell),
                    rescan: Notify::new(),
                    live: AtomicUsize::new(0),
                });
                groups.insert(key, group.clone());
                tokio::spawn(write_loop(Arc::downgrade(self), group.clone(), self.codec));
                group
            }
        };
        let member = Arc::new(Member {
            watch,
            opaque,
            outbox: outbox.clone(),
            group: Arc::downgrade(&group),
        });
        group.members.lock().push(Arc::downgrade(&member));
        group.live.fetch_add(1, Ordering::Relaxed);
        group.rescan.notify_one();
        Ok(Some((member, current)))
    }

    /// Removes `group` if it has no members left; false if it has (or gained) some.
    fn leave_if_empty(&self, group: &Arc<Group>) -> bool {
        let mut groups = self.groups.lock();
        let mut members = group.members.lock();
        members.retain(|m| m.strong_count() > 0);
        if !members.is_empty() {
            return false;
        }
        if groups
            .get(&group.key)
            .is_some_and(|g| Arc::ptr_eq(g, group))
        {
            groups.remove(&group.key);
        }
        true
    }
}

/// The writer of one group: at every doorbell, one pass over the members.
async fn write_loop(fanout: Weak<Fanout>, group: Arc<Group>, codec: MinorityServerCodec) {
    let mut scratch = BytesMut::with_capacity(4096);
    loop {
        let doorbell = group.doorbell.lock().clone();
        tokio::select! {
            _ = doorbell.changed() => {}
            _ = group.rescan.notified() => {}
        }
        let mut rang = false;
        while doorbell.try_recv().is_some() {
            rang = true;
        }
        // The engine is shutting down: one last pass delivers what its queues hold.
        let last = doorbell.is_closed();
        // A join or a leave alone needs no pass over every member: 10 000 subscribers joining
        // one key made one pass each (quadratic), and their notify requests timed out. Events
        // published before the join's new doorbell are in this one (drained above); later ones
        // ring the new one, which the next turn waits on.
        if !rang && !last && group.live.load(Ordering::Relaxed) > 0 {
            continue;
        }
        let members: Vec<Arc<Member>> = {
            let mut members = group.members.lock();
            members.retain(|m| m.strong_count() > 0);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        if members.is_empty() {
            match fanout.upgrade() {
                Some(fanout) if !fanout.leave_if_empty(&group) => continue,
                _ => return,
            }
        }
        for member in &members {
            deliver(member, &group.ids, &codec, &mut scratch);
        }
        if last {
            return;
        }
    }
}

/// Writes `member`'s waiting events to its socket if its session waits; otherwise leaves
/// them to the session.
fn deliver(member: &Member, ids: &(Bytes, Bytes), codec: &MinorityServerCodec, out: &mut BytesMut) {
    if member.watch.pending() == 0 {
        return;
    }
    let outbox = &member.outbox;
    let Ok(right) = outbox.write.clone().try_lock_owned() else {
        outbox.wake.notify_one();
        return;
    };
    let Some(stream) = outbox.stream.lock().upgrade() else {
        drop(right);
        outbox.wake.notify_one();
        return;
    };
    out.clear();
    while out.len() < MAX_PASS_BYTES {
        let Some(event) = member.watch.try_recv() else {
            break;
        };
        let (status, value) = match event.change {
            Change::Set(entry) => (status::OK, entry.value.to_bytes()),
            Change::Deleted => (status::NOT_FOUND, Bytes::new()),
        };
        let push = Response {
            op: op::NOTIFY,
            status,
            opaque: member.opaque,
            data_id: ids.0.clone(),
            datanum_id: ids.1.clone(),
            value,
        };
        codec.encode_response(&push, out);
    }
    if member.watch.pending() > 0 {
        outbox.wake.notify_one();
    }
    if out.is_empty() {
        return;
    }
    match stream.try_write(&out[..]) {
        Ok(n) if n == out.len() => {}
        Ok(n) => finish(right, stream, out.split_off(n).freeze()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            finish(right, stream, out.split().freeze())
        }
        // The connection is gone: its session finds out by itself.
        Err(_) => {}
    }
}

/// Finishes a push the socket took only in part, keeping the write right until done.
fn finish(right: WriteRight, stream: Arc<TcpStream>, mut rest: Bytes) {
    tokio::spawn(async move {
        let _right = right;
        while !rest.is_empty() {
            match stream.try_write(&rest) {
                Ok(0) => return,
                Ok(n) => bytes::Buf::advance(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stream.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
}
