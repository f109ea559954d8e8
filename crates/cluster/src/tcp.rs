//! The cluster port: TCP between peers, one connection per peer in each direction, many
//! requests in flight on it at once (each frame carries a request id; replies come back in
//! any order).
//!
//! A connection starts with the challenge–response of [`crate::auth`]; until it passes,
//! nothing else is read. After it, every frame's length is checked before its body is read
//! ([`crate::wire`]); a frame that does not decode is garbage: the connection is closed and
//! the peer logged, and the node goes on serving the others. Frames are sent by
//! [`crate::frames`]: written at once by the task that has them when the socket takes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

use crate::auth::{self, AuthError};
use crate::frames::{FrameSender, SendError};
use crate::identity::Identity;
use crate::merge;
use crate::timing::{self, Hop};
use crate::transport::{CallFuture, Handler, Transport, TransportError};
use crate::wire::{self, Envelope, Reply, Rpc, WireError};
use crate::NodeId;

/// Longest a connection may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once per incoming connection (bounds the memory one peer can hold).
const MAX_IN_FLIGHT: usize = 1024;
/// Incoming connections open at once (authenticated or not): strangers cannot exhaust the node.
const MAX_CONNECTIONS: usize = 256;
/// Largest read buffer a connection keeps between frames.
const KEPT_READ_BUFFER: usize = 4 << 20;

/// Counters of the cluster port.
#[derive(Debug, Default)]
pub struct TcpCounters {
    pub connections_accepted: AtomicU64,
    pub auth_failures: AtomicU64,
    pub garbage_disconnects: AtomicU64,
    /// Connections closed at once because MAX_CONNECTIONS were open.
    pub refused_over_limit: AtomicU64,
    /// Handshakes (either side) refused because the peer belongs to another cluster.
    pub foreign_refusals: AtomicU64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One live outgoing connection.
struct Conn {
    addr: String,
    frames: Arc<FrameSender>,
    pending: Pending,
    /// Set when either half of the connection ended.
    dead: Arc<AtomicBool>,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst) && !self.frames.is_closed()
    }
}

/// The TCP transport of a node.
pub struct TcpTransport {
    me: NodeId,
    secret: Arc<[u8]>,
    identity: Arc<Identity>,
    conns: Mutex<HashMap<NodeId, Arc<Conn>>>,
    /// One dial at a time per peer.
    dialing: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
    pub counters: Arc<TcpCounters>,
}

impl TcpTransport {
    /// The transport of node `me`, which proves `secret` and checks peers against `identity`
    /// (the same one [`serve`] gets).
    pub fn new(me: NodeId, secret: &[u8], identity: Arc<Identity>) -> Arc<TcpTransport> {
        Arc::new(TcpTransport {
            me,
            secret: secret.into(),
            identity,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: Arc::default(),
        })
    }

    /// Closes every outgoing connection (the next call dials again, with a new handshake).
    fn close_all(&self) {
        self.conns.lock().clear();
    }

    fn live(&self, target: NodeId, addr: &str) -> Option<Arc<Conn>> {
        self.conns
            .lock()
            .get(&target)
            .filter(|c| c.alive() && c.addr == addr)
            .cloned()
    }

    async fn connection(&self, target: NodeId, addr: &str) -> Result<Arc<Conn>, TransportError> {
        if let Some(conn) = self.live(target, addr) {
            return Ok(conn);
        }
        let gate = self.dialing.lock().entry(target).or_default().clone();
        let _one = gate.lock().await;
        if let Some(conn) = self.live(target, addr) {
            return Ok(conn);
        }
        let unreachable = |why: String| TransportError::Unreachable(target, why);
        let connect = || async {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            Ok::<_, TransportError>(stream)
        };
        let handshake_error = |e: AuthError| {
            if matches!(e, AuthError::Foreign(_)) {
                self.counters
                    .foreign_refusals
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = target, %addr, error = %e, "cluster peer refused");
            }
            unreachable(e.to_string())
        };
        let mut stream = connect().await?;
        let dialed = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            auth::dial(&mut stream, &self.secret, self.me, &self.identity),
        )
        .await
        .map_err(|_| unreachable("handshake timed out".into()))?;
        if let Err(AuthError::OlderListener) = dialed {
            // A polykv from before cluster ids: only a node without one gets here.
            stream = connect().await?;
            tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                auth::dial_v1(&mut stream, &self.secret, self.me),
            )
            .await
            .map_err(|_| unreachable("handshake timed out".into()))?
            .map_err(handshake_error)?;
        } else {
            dialed.map_err(handshake_error)?;
        }
        let (read, write) = stream.into_split();
        let (frames, writer) = FrameSender::new(write);
        tokio::spawn(writer);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        // Reader: replies go to whoever waits for them; the end of the connection fails them all.
        let waiting = pending.clone();
        let peer = addr.to_string();
        let reader_dead = dead.clone();
        tokio::spawn(async move {
            let mut read = BufReader::with_capacity(64 << 10, read);
            let mut frame = Vec::new();
            loop {
                match read_frame(&mut read, &mut frame).await {
                    Ok(Envelope::Answer { id, reply }) => {
                        if let Some(tx) = waiting.lock().remove(&id) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(Envelope::Call { .. }) => {
                        tracing::warn!(peer, "cluster peer sent a request on a reply channel");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "cluster connection ended");
                        break;
                    }
                }
            }
            reader_dead.store(true, Ordering::SeqCst);
            waiting.lock().clear();
        });
        let conn = Arc::new(Conn {
            addr: addr.to_string(),
            frames,
            pending,
            dead,
        });
        self.conns.lock().insert(target, conn.clone());
        Ok(conn)
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads one frame: the length first, checked, then exactly that many bytes, into `frame`
/// (one buffer per connection, reused: a fresh allocation of an append's size per frame costs
/// the allocator fresh, zeroed pages).
async fn read_frame(
    read: &mut BufReader<OwnedReadHalf>,
    frame: &mut Vec<u8>,
) -> Result<Envelope, ReadError> {
    let mut header = [0u8; 4];
    read.read_exact(&mut header).await?;
    let len = wire::body_len(&header)?.unwrap_or(0);
    frame.clear();
    frame.extend_from_slice(&header);
    frame.resize(4 + len, 0);
    read.read_exact(&mut frame[4..]).await?;
    let decoded = wire::decode(frame);
    // A rare large frame (a snapshot chunk) does not stay allocated for the connection's life.
    if frame.capacity() > KEPT_READ_BUFFER {
        *frame = Vec::new();
    }
    match decoded? {
        Some((envelope, _)) => Ok(envelope),
        None => Err(WireError::Garbage("frame shorter than its length".into()).into()),
    }
}

impl Transport for TcpTransport {
    fn identity(&self) -> Option<Arc<Identity>> {
        Some(self.identity.clone())
    }

    fn reconnect(&self) {
        self.close_all();
    }

    fn call<'a>(
        &'a self,
        target: NodeId,
        addr: &'a str,
        rpc: wire::Rpc,
        timeout: Duration,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let conn = tokio::time::timeout(timeout, self.connection(target, addr))
                .await
                .map_err(|_| TransportError::Unreachable(target, "connect timed out".into()))??;
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().insert(id, tx);
            if let Err(e) = conn.frames.send_envelope(&Envelope::Call { id, rpc }) {
                conn.pending.lock().remove(&id);
                return Err(match e {
                    SendError::TooLarge(e) => TransportError::TooLarge(e.to_string()),
                    SendError::Closed => {
                        TransportError::Unreachable(target, "connection closed".into())
                    }
                });
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                // The connection ended after the request was sent: it may have been acted on.
                Ok(Err(_)) => Err(TransportError::Timeout(target)),
                Err(_) => {
                    conn.pending.lock().remove(&id);
                    Err(TransportError::Timeout(target))
                }
            }
        })
    }
}

/// Serves the cluster port until the listener fails or the task is dropped.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    secret: Arc<[u8]>,
    identity: Arc<Identity>,
    counters: Arc<TcpCounters>,
) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The connections end with this future (dropping it drops the handler everywhere: a hot
    // upgrade reopens the node in another process).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cluster port accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "cluster port: too many connections; closed");
            continue;
        };
        let handler = handler.clone();
        let secret = secret.clone();
        let identity = identity.clone();
        let counters = counters.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, handler, &secret, &identity, &counters).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<dyn Handler>,
    secret: &[u8],
    identity: &Identity,
    counters: &TcpCounters,
) {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        auth::accept(&mut stream, secret, identity),
    )
    .await;
    let from = match accepted {
        Ok(Ok(from)) => from,
        Ok(Err(e @ AuthError::Foreign(_))) => {
            counters.foreign_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "cluster port: peer of another cluster refused");
            return;
        }
        Ok(Err(e)) => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "cluster port: connection refused");
            return;
        }
        Err(_) => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "cluster port: no handshake in time; connection closed");
            return;
        }
    };
    let (read, write) = stream.into_split();
    let (frames, writer) = FrameSender::new(write);
    let writer = tokio::spawn(writer);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut read = BufReader::with_capacity(64 << 10, read);
    let mut frame = Vec::new();
    // A request read while merging appends that is not one of them: served next.
    let mut carried = None;
    loop {
        let next = match carried.take() {
            Some(call) => Some(call),
            None => next_call(&mut read, &mut frame, counters, peer, from).await,
        };
        let Some((id, rpc)) = next else {
            break;
        };
        // A leader pipelines its appends to a follower: served here, in order, without a
        // hand-off to another task. Everything else may wait long (a forwarded write waits
        // for its commit) and is served beside the reading.
        if let Rpc::AppendEntries(first) = rpc {
            let since = Instant::now();
            let mut merged = first;
            let mut parts = vec![(id, merge::span(&merged))];
            let mut ended = false;
            // The appends that came while the previous one was flushed go to the log with
            // this one: one fsync for all of them.
            while parts.len() < merge::MAX_MERGED && frame_buffered(&read) {
                match next_call(&mut read, &mut frame, counters, peer, from).await {
                    Some((id, Rpc::AppendEntries(next))) if merge::continues(&merged, &next) => {
                        parts.push((id, merge::span(&next)));
                        merge::append(&mut merged, next);
                    }
                    Some(call) => {
                        carried = Some(call);
                        break;
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            match handler.handle(from, Rpc::AppendEntries(merged)).await {
                Reply::AppendEntries(merged_answer) => {
                    for (id, span) in parts {
                        let reply = Reply::AppendEntries(merge::answer_for(span, &merged_answer));
                        answer(&frames, id, reply);
                    }
                }
                other => {
                    tracing::warn!(node = from, "an append was answered with {other:?}");
                    break;
                }
            }
            timing::record(Hop::FollowerAppend, since);
            if ended {
                break;
            }
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let handler = handler.clone();
        let frames = frames.clone();
        tokio::spawn(async move {
            answer(&frames, id, handler.handle(from, rpc).await);
            drop(slot);
        });
    }
    drop(frames);
    let _ = writer.await;
}

/// The next request on an incoming connection, or None when the connection is to end (it
/// closed, or the peer sent something it should not: logged and counted here).
async fn next_call(
    read: &mut BufReader<OwnedReadHalf>,
    frame: &mut Vec<u8>,
    counters: &TcpCounters,
    peer: SocketAddr,
    from: NodeId,
) -> Option<(u64, Rpc)> {
    match read_frame(read, frame).await {
        Ok(Envelope::Call { id, rpc }) => Some((id, rpc)),
        Ok(Envelope::Answer { .. }) => {
            counters.garbage_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, node = from, "cluster peer sent a reply unasked; disconnected");
            None
        }
        Err(ReadError::Wire(e)) => {
            counters.garbage_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, node = from, error = %e, "cluster peer sent garbage; disconnected");
            None
        }
        Err(ReadError::Io(_)) => None,
    }
}

/// Whether a whole frame is already in the read buffer (reading it does not wait).
fn frame_buffered(read: &BufReader<OwnedReadHalf>) -> bool {
    let buf = read.buffer();
    matches!(wire::body_len(buf), Ok(Some(len)) if buf.len() >= 4 + len)
}

fn answer(frames: &FrameSender, id: u64, reply: Reply) {
    if let Err(SendError::TooLarge(e)) = frames.send_envelope(&Envelope::Answer { id, reply }) {
        tracing::warn!(error = %e, "cluster reply not sent");
    }
}
