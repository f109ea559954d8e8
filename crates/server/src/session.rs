//! The shared session framework: every protocol is a codec plus a [`Service`].
//!
//! A TCP session reads into a buffer, decodes every complete frame, executes them in order,
//! composes all replies into one buffer and writes once. Writes that must be durable before
//! they are acknowledged are applied at once and awaited together at the end of the batch, so
//! pipelined Sync writes share one group commit. Limits: frame sizes are the codec's (checked
//! before allocating), an idle timeout, a partial-frame timeout, and an output cap: once a
//! batch's replies pass it, they are written out before more frames are decoded, so a client
//! that does not read stops being read (back-pressure).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use polykv_engine::{FlushDue, Pending};
use polykv_protocols::{Decoded, Reject, ServerCodec};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::ProtocolMetrics;
use crate::upgrade::carry::{Accepting, Alive, ExportState, Hub, Park, Resumable, Slot, Stopped};

/// A reply that may have to wait for durability.
pub enum Deferred<R> {
    Ready(R),
    /// Send `ok` once the write is durable, `err` if it cannot be made durable.
    AfterSync {
        pending: Pending,
        ok: R,
        err: R,
    },
}

/// What a service answers to one request.
pub struct Reply<R> {
    pub response: Option<Deferred<R>>,
    /// Messages sent right after the response, before the reply to any later request
    /// (OpenCluster's hello pushes). TCP only.
    pub then: Vec<R>,
    /// Close the connection after sending the response.
    pub close: bool,
    /// The flush an Async write owes before the response goes out ([`FlushDue`]): a copy into
    /// the mapped log, made once for a batch of requests.
    pub flush: Option<FlushDue>,
}

impl<R> Reply<R> {
    pub fn send(response: R) -> Self {
        Reply {
            response: Some(Deferred::Ready(response)),
            then: Vec::new(),
            close: false,
            flush: None,
        }
    }

    /// Sends `response`, then `then`, before anything else.
    pub fn send_with(response: R, then: Vec<R>) -> Self {
        Reply {
            response: Some(Deferred::Ready(response)),
            then,
            close: false,
            flush: None,
        }
    }

    pub fn send_then_close(response: R) -> Self {
        Reply {
            response: Some(Deferred::Ready(response)),
            then: Vec::new(),
            close: true,
            flush: None,
        }
    }

    /// Sends `ok` once the write is as durable as it asked (in the OS buffers for Async, on
    /// disk for Sync), `err` if it cannot be made so.
    pub fn after_sync(pending: Pending, ok: R, err: R) -> Self {
        let (response, flush) = match pending.flush_due() {
            Ok((_, flush)) => (Deferred::Ready(ok), flush),
            Err(pending) => (Deferred::AfterSync { pending, ok, err }, None),
        };
        Reply {
            response: Some(response),
            then: Vec::new(),
            close: false,
            flush,
        }
    }

    /// [`Reply::after_sync`] for a write made through the [`Submitter`](crate::submit::Submitter):
    /// in cluster mode it is already committed, so `ok` goes at once.
    pub fn after(submitted: crate::submit::Submitted, ok: R, err: R) -> Self {
        match submitted {
            crate::submit::Submitted::Local(pending) => Reply::after_sync(pending, ok, err),
            crate::submit::Submitted::Done(_) => Reply::send(ok),
        }
    }

    pub fn nothing() -> Self {
        Reply {
            response: None,
            then: Vec::new(),
            close: false,
            flush: None,
        }
    }
}

/// One protocol's behaviour, per connection (TCP) or per socket (UDP).
pub trait Service: Send + 'static {
    type Request: Send;
    type Response: Send;

    /// Operation name for metrics (a fixed, small set per protocol).
    fn op_name(request: &Self::Request) -> &'static str;

    /// Whether a response reports an error (for the error counter).
    fn is_error(_response: &Self::Response) -> bool {
        false
    }

    fn call(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Reply<Self::Response>> + Send;

    /// Called with the decoded requests (one or more) before they are executed one by one: a
    /// service starts loading what they will read (see `Engine::prefetch`), so that the cache
    /// misses of a pipelined batch overlap. A lone read is looked up at once, so there is
    /// nothing to overlap: services prefetch a lone request only when it writes, whose lookups
    /// come after the record's encoding and the log append. Default: nothing.
    fn prefetch(&self, _requests: &[Self::Request]) {}

    /// A message the server sends unasked (watch pushes). Never resolves by default.
    fn push(&mut self) -> impl Future<Output = Option<Self::Response>> + Send {
        std::future::pending()
    }

    /// The session is about to wait with everything written to `stream`: until
    /// [`Service::woken`], another task may write to it (minority's fan-out writer, given the
    /// connection's write right). Default: nothing.
    fn parked(&mut self, _stream: &Arc<TcpStream>) {}

    /// The session woke: returns once nothing but the session writes to its socket (a push
    /// another task began is finished). Default: at once.
    fn woken(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A message to send when the server shuts down, and how long to wait for the client's
    /// answer (a request for which [`Service::answers_farewell`] holds) or its close. Other
    /// requests received meanwhile are discarded. `None` (the default): close at once.
    fn farewell(&mut self) -> Option<(Self::Response, Duration)> {
        None
    }

    /// Whether `request` answers the farewell message.
    fn answers_farewell(_request: &Self::Request) -> bool {
        true
    }

    /// The reply to a request received after the farewell was sent (OpenCluster's hello: go
    /// elsewhere). `None` (the default): discarded without a reply.
    fn after_farewell(&mut self, _request: &Self::Request) -> Option<Self::Response> {
        None
    }

    /// The codec rejected the input (the connection closes, or the datagram is dropped).
    fn rejected(&mut self, _reject: &Reject) {}

    /// The connection is closing: release what it held.
    fn closed(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The connection's state for a hot upgrade, taken once every session has stopped; the
    /// connection then moves to the new process, which calls [`Service::resume`] on a fresh
    /// service with it. Nothing is released: `closed` is not called. Default: no state.
    fn export(&mut self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    /// Takes over a connection's exported state.
    fn resume(&mut self, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// Whether the service has no state of its own to carry across a hot upgrade (its
    /// `export` is empty) and never pushes: a session of it waiting with no unread input can
    /// then be handed over without waking it. Default: false (it is woken and stops itself).
    const STATELESS: bool = false;
}

/// A stopped session's service, exported later through its `Service::export`.
struct Exporter<S>(S);

impl<S: Service> ExportState for Exporter<S> {
    fn export(&mut self) -> Result<Vec<u8>, String> {
        self.0.export()
    }
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub idle_timeout: Option<Duration>,
    pub partial_frame_timeout: Option<Duration>,
    pub max_output_bytes: usize,
}

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

impl SessionLimits {
    pub fn from_secs(idle: u64, partial: u64, max_output_bytes: u64) -> Self {
        SessionLimits {
            idle_timeout: secs(idle),
            partial_frame_timeout: secs(partial),
            max_output_bytes: max_output_bytes.max(1024) as usize,
        }
    }
}

/// Things every listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    pub connections: Arc<Semaphore>,
    /// Stops the listeners (at a shutdown or a hot upgrade). Sessions of the shared loop are
    /// stopped through the `handover` hub instead, so a hot upgrade need not wake them all.
    pub shutdown: watch::Receiver<bool>,
    /// True once this process serves: a process taking over from a running server prepares
    /// its carried sessions before the commit and lets them run only after it.
    pub serving: watch::Receiver<bool>,
    /// Carried listeners and sessions to resume; where sessions stop for a hot upgrade.
    pub handover: Arc<Hub>,
}

/// Waits until the process serves (at once unless it is taking over and not committed yet);
/// false if the generation ended meanwhile.
pub async fn wait_serving(serving: &mut watch::Receiver<bool>) -> bool {
    serving.wait_for(|s| *s).await.is_ok()
}

/// Accepts one connection under the connection limit. Accept errors (out of file descriptors and
/// the like) back off instead of spinning; a connection over the limit is closed at once.
pub async fn accept_limited(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
    metrics: &ProtocolMetrics,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(protocol = metrics.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.rejected.increment(1);
            tracing::warn!(protocol = metrics.name, %peer, "connection limit reached; closing new connection");
            continue;
        };
        return (stream, peer, permit);
    }
}

/// Accepts connections until shutdown and runs `handle` on each in a task of its own, holding
/// its place under the connection limit; after shutdown, waits for every connection to finish
/// (the caller bounds the wait). `resumed` are connections carried over by a hot upgrade:
/// they are spawned at once (before the commit; they wait for it themselves) and count under
/// the limit too; accepting starts once the process serves. `accepting` counts this accept
/// loop for the handover until it stops.
pub async fn serve_connections<H, Fut>(
    listener: TcpListener,
    metrics: &ProtocolMetrics,
    context: ListenerContext,
    accepting: Accepting,
    resumed: Vec<Fut>,
    later: impl futures_util::Stream<Item = Vec<Fut>>,
    mut handle: H,
) where
    H: FnMut(TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    use futures_util::StreamExt;
    let mut connections = JoinSet::new();
    // Carried connections are kept even past the limit (they were admitted once).
    let resume = |connections: &mut JoinSet<()>, carried: Vec<Fut>| {
        for connection in carried {
            let permit = context.connections.clone().try_acquire_owned().ok();
            connections.spawn(async move {
                connection.await;
                drop(permit);
            });
        }
    };
    resume(&mut connections, resumed);
    let mut later = std::pin::pin!(later.fuse());
    let mut serving = context.serving.clone();
    let mut shutdown = context.shutdown.clone();
    let go = tokio::select! {
        go = wait_serving(&mut serving) => go,
        _ = shutdown.changed() => false,
    };
    if go {
        loop {
            tokio::select! {
                Some(carried) = later.next() => resume(&mut connections, carried),
                (stream, _peer, permit) = accept_limited(&listener, &context.connections, metrics) => {
                    let connection = handle(stream, context.shutdown.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(permit);
                    });
                    while connections.try_join_next().is_some() {}
                }
                _ = shutdown.changed() => break,
            }
        }
    }
    drop(listener);
    // Carried connections not prepared yet are prepared now, so the stop sees them.
    while let Some(carried) = later.next().await {
        resume(&mut connections, carried);
    }
    drop(accepting);
    while connections.join_next().await.is_some() {}
}

/// Accepts connections until shutdown; each gets a session with its own service. `name` is
/// the listener's ("nmdb tcp"): the sessions a hot upgrade carried to it are taken at once
/// (before the future runs) and resumed first.
pub fn serve_tcp<C, S, F>(
    name: &'static str,
    listener: TcpListener,
    codec: Arc<C>,
    new_service: F,
    limits: SessionLimits,
    metrics: Arc<ProtocolMetrics>,
    context: ListenerContext,
) -> impl Future<Output = ()> + Send + 'static
where
    C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
    S: Service,
    F: Fn() -> S + Send + Sync + 'static,
{
    // Sessions finish the batch they are executing and close at shutdown.
    let listener_metrics = metrics.clone();
    let handover = context.handover.clone();
    let serving = context.serving.clone();
    // Each session is registered with the hub as it is built, before its task runs.
    let session = move |stream: TcpStream, service, start| {
        let stream = Arc::new(stream);
        let slot = handover.register(name, stream.clone());
        Session {
            stream,
            _alive: handover.alive(),
            codec: codec.clone(),
            service,
            limits,
            metrics: metrics.clone(),
            slot,
            serving: serving.clone(),
            served: false,
            handover: handover.clone(),
            start,
            stopped: None,
            ahead: VecDeque::new(),
            deferred: Vec::new(),
            refused: None,
        }
    };
    let accepting = context.handover.accepting();
    let preparing = Instant::now();
    let (now, later) = sort_carried::<S>(context.handover.take_sessions(name));
    let resumed: Vec<_> = prepare_sessions(name, now, &new_service, &session)
        .into_iter()
        .map(Session::run)
        .collect();
    if !resumed.is_empty() || !later.is_empty() {
        let (count, idle, us) = (
            resumed.len(),
            later.len(),
            preparing.elapsed().as_micros() as u64,
        );
        tracing::info!(
            listener = name,
            count,
            idle,
            us,
            "upgrade: carried sessions prepared"
        );
    }
    let new_service = Arc::new(new_service);
    let session = Arc::new(session);
    let handle = {
        let (new_service, session) = (new_service.clone(), session.clone());
        move |stream: TcpStream, _shutdown| {
            let _ = stream.set_nodelay(true);
            session(stream, new_service(), None).run()
        }
    };
    // The idle carried connections are prepared once this process serves, in rounds: each
    // round first takes those whose client has written meanwhile.
    let later = futures_util::stream::unfold(later, move |mut left| {
        let (new_service, session) = (new_service.clone(), session.clone());
        async move {
            if left.is_empty() {
                return None;
            }
            tokio::task::yield_now().await;
            let round = next_round(&mut left);
            let prepared = prepare_sessions(name, round, &*new_service, &*session)
                .into_iter()
                .map(Session::run)
                .collect::<Vec<_>>();
            Some((prepared, left))
        }
    });
    async move {
        serve_connections(
            listener,
            &listener_metrics,
            context,
            accepting,
            resumed,
            later,
            handle,
        )
        .await;
    }
}

/// Idle carried connections prepared per round after the commit.
const ROUND: usize = 512;

/// Splits carried connections into those to prepare before the commit (unread input, state
/// of their own, or a request already waiting in the socket) and the idle rest, prepared
/// after it: so the commit waits for neither the thousands of idle connections nor their
/// preparation, and a client that writes meanwhile is served in the next round.
fn sort_carried<S: Service>(carried: Vec<Resumable>) -> (Vec<Resumable>, Vec<Resumable>) {
    let (mut now, idle): (Vec<_>, Vec<_>) = carried.into_iter().partition(|c| {
        !S::STATELESS
            || !c.state.input.is_empty()
            || !c.state.service.is_empty()
            || c.waiting == Some(true)
    });
    // Those not looked at yet (after a rollback) are polled here.
    let (unknown, mut idle): (Vec<_>, Vec<_>) = idle.into_iter().partition(|c| c.waiting.is_none());
    let mut unknown = unknown;
    for index in readable_now(&unknown).into_iter().rev() {
        now.push(unknown.swap_remove(index));
    }
    idle.append(&mut unknown);
    (now, idle)
}

/// Records, for each carried connection, whether a request is waiting in its socket now (one
/// poll(2) over them all), so the listeners need not look again before the commit.
pub(crate) fn mark_waiting(carried: &mut [Resumable]) {
    for c in carried.iter_mut() {
        c.waiting = Some(false);
    }
    for index in readable_now(carried) {
        carried[index].waiting = Some(true);
    }
}

/// The next round of idle connections: every one readable now, then up to [`ROUND`] more.
fn next_round(left: &mut Vec<Resumable>) -> Vec<Resumable> {
    let mut round = Vec::new();
    for index in readable_now(left).into_iter().rev() {
        round.push(left.swap_remove(index));
    }
    let more = ROUND.min(left.len());
    round.extend(left.drain(left.len() - more..));
    round
}

/// Indices (ascending) of the connections with input waiting, by one poll(2) over them all;
/// none if the call fails (they are all prepared in time anyway).
fn readable_now(carried: &[Resumable]) -> Vec<usize> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = carried
        .iter()
        .map(|c| libc::pollfd {
            fd: c.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        return Vec::new();
    }
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the call; timeout 0.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if ready <= 0 {
        return Vec::new();
    }
    fds.iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect()
}

/// Carried sessions of listener `name`, ready to run. A connection whose state its service
/// refuses is closed (and logged).
fn prepare_sessions<C, S, F, M>(
    name: &'static str,
    carried: Vec<Resumable>,
    new_service: &F,
    session: &M,
) -> Vec<Session<C, S>>
where
    C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
    S: Service,
    F: Fn() -> S,
    M: Fn(TcpStream, S, Option<Paused>) -> Session<C, S>,
{
    let mut sessions = Vec::new();
    for carried in carried {
        let Resumable { fd, state, .. } = carried;
        let mut service = new_service();
        let stream = std::net::TcpStream::from(fd);
        let resumed = service
            .resume(&state.service)
            .and_then(|()| stream.set_nonblocking(true).map_err(|e| e.to_string()))
            .and_then(|()| TcpStream::from_std(stream).map_err(|e| e.to_string()));
        match resumed {
            Ok(stream) => {
                let now = Instant::now();
                let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                let paused = Paused {
                    input: BytesMut::from(&state.input[..]),
                    last_frame: ago(state.idle_ms),
                    partial_since: state.partial_ms.map(ago),
                };
                sessions.push(session(stream, service, Some(paused)));
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "carried connection refused; closed")
            }
        }
    }
    sessions
}

struct Session<C, S: Service> {
    /// Shared with its hub slot (see [`Slot`]).
    stream: Arc<TcpStream>,
    _alive: Alive,
    codec: Arc<C>,
    service: S,
    limits: SessionLimits,
    metrics: Arc<ProtocolMetrics>,
    /// Its place in the hub: how it is told to stop, and how a handover takes it.
    slot: Arc<Slot>,
    serving: watch::Receiver<bool>,
    /// `serving` was seen true (it never turns false again): no need to look again.
    served: bool,
    handover: Arc<Hub>,
    /// Where a carried session picks up (its unread input and timers).
    start: Option<Paused>,
    /// Set when the session stopped for a hot upgrade.
    stopped: Option<Paused>,
    /// Requests decoded ahead of execution (at most [`LOOKAHEAD`]), so the service can
    /// prefetch for all of them; always empty when the session waits for input.
    ahead: VecDeque<S::Request>,
    /// Replies waiting for their writes' durability, in order; empty between batches, kept so
    /// that a batch does not allocate it again.
    deferred: Vec<Waiting<S::Response>>,
    /// Why the input after the decoded-ahead requests was refused: reported once they are
    /// executed.
    refused: Option<Reject>,
}

/// Most requests decoded ahead of execution.
const LOOKAHEAD: usize = 16;

/// A session's position at a frame boundary: what it has read of the next frame, and its
/// timers.
struct Paused {
    input: BytesMut,
    last_frame: Instant,
    partial_since: Option<Instant>,
}

enum Wake {
    Readable(std::io::Result<()>),
    Push(Option<()>),
    Timer,
    Woken,
}

impl<C, S> Session<C, S>
where
    C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
    S: Service,
{
    async fn run(mut self) {
        self.metrics.connection_opened();
        let reason = self.serve().await;
        if let Some(paused) = self.stopped.take() {
            self.metrics.connection_closed();
            self.hand_over(paused);
            return;
        }
        self.service.closed().await;
        self.handover.unregister(&self.slot);
        self.metrics.connection_closed();
        tracing::debug!(protocol = self.metrics.name, reason, "connection closed");
    }

    async fn serve(&mut self) -> &'static str {
        let (
            Paused {
                mut input,
                mut last_frame,
                mut partial_since,
            },
            mut output,
        ) = self.starting_buffers();
        // One timer for the connection, moved only when its deadline comes earlier (a partial
        // frame's): a frame that moves the idle deadline later leaves it, and it wakes early once
        // and is moved then. So a busy connection does not re-register a timer per request.
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<(Instant, &'static str)> = None;
        // Registered once and kept across the loop (a wake-up while the session works is kept
        // as the Notify's permit), rather than registered and removed around every request.
        let slot = self.slot.clone();
        let mut woken = std::pin::pin!(slot.woken());
        loop {
            // A frame boundary: everything composed is written.
            let takeable = S::STATELESS && input.is_empty();
            match self.slot.park(&self.handover, takeable, last_frame) {
                Park::Wait => {}
                Park::ShutDown => return self.farewell(input).await,
                Park::Stop => return self.stop_for_handover(input, last_frame, partial_since),
                Park::Taken => return self.taken().await,
            }
            // A carried session with something to do (unread input, queued pushes) starts at
            // the commit; an idle one waits for its client first (below), so the commit does
            // not have to wake it.
            if !takeable && !self.wait_serving().await {
                return "shutting down";
            }
            match (self.deadline(last_frame, partial_since), armed) {
                (Some((at, _)), Some((armed_at, _))) if at >= armed_at => {}
                (Some(deadline), _) => {
                    timer.as_mut().reset(deadline.0.into());
                    armed = Some(deadline);
                }
                (None, _) => armed = None,
            }
            self.service.parked(&self.stream);
            // Waits for readiness, not data: a session taken meanwhile must not consume input.
            let wake = {
                let readable = self.stream.readable();
                let push = self.service.push();
                tokio::select! {
                    ready = readable => Wake::Readable(ready),
                    pushed = push => Wake::Push(pushed.map(|response| {
                        self.codec.encode_response(&response, &mut output);
                    })),
                    _ = timer.as_mut(), if armed.is_some() => Wake::Timer,
                    _ = woken.as_mut() => Wake::Woken,
                }
            };
            if !self.slot.unpark() {
                return self.taken().await;
            }
            if takeable && !self.wait_serving().await {
                return "shutting down";
            }
            self.service.woken().await;
            match wake {
                Wake::Readable(Ok(())) => match read_available(&self.stream, &mut input) {
                    Ok(0) if input.is_empty() => return "client closed",
                    Ok(0) => return "client closed mid-frame",
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return "read error",
                },
                Wake::Readable(Err(_)) => return "read error",
                Wake::Push(Some(())) => {
                    // Every push already waiting goes out in the same write: a burst of changes
                    // costs a subscriber one wake-up and one system call.
                    while output.len() < self.limits.max_output_bytes {
                        match self.service.push().now_or_never() {
                            Some(Some(response)) => {
                                self.codec.encode_response(&response, &mut output)
                            }
                            _ => break,
                        }
                    }
                    if write_all(&self.stream, &output).await.is_err() {
                        return "write error";
                    }
                    output.clear();
                    continue;
                }
                Wake::Push(None) => return "subscription ended",
                Wake::Timer => {
                    match self.deadline(last_frame, partial_since) {
                        Some((at, why)) if at <= Instant::now() => return why,
                        // Woken early: the deadline moved since the timer was set.
                        Some(later) => {
                            timer.as_mut().reset(later.0.into());
                            armed = Some(later);
                        }
                        None => armed = None,
                    }
                    continue;
                }
                // The next frame boundary (the loop's top) says why.
                Wake::Woken => {
                    woken.set(slot.woken());
                    continue;
                }
            }
            // Decode and execute every complete frame; write whenever the output cap is passed.
            let mut progressed = false;
            loop {
                let (frames, close, answered) =
                    match self.execute_batch(&mut input, &mut output).await {
                        Ok(result) => result,
                        Err(reject) => {
                            self.service.rejected(&reject);
                            self.metrics.rejected_frames.increment(1);
                            let _ = write_all(&self.stream, &output).await;
                            return reject.reason;
                        }
                    };
                if frames > 0 {
                    // The clock read of the batch's last answer, when there is one.
                    last_frame = answered.unwrap_or_else(Instant::now);
                    progressed = true;
                }
                if !output.is_empty() {
                    if write_all(&self.stream, &output).await.is_err() {
                        return "write error";
                    }
                    output.clear();
                }
                if close {
                    return "closed by protocol";
                }
                if frames == 0 {
                    break;
                }
            }
            // The partial frame's clock starts when it does: after the last complete frame, so
            // a client pipelining large frames without pause is never timed out mid-stream.
            partial_since = match (input.is_empty(), partial_since) {
                (true, _) => None,
                (false, _) if progressed => Some(last_frame),
                (false, Some(since)) => Some(since),
                (false, None) => Some(Instant::now()),
            };
            if input.capacity() - input.len() < 4096 {
                input.reserve(16 * 1024);
            }
        }
    }

    /// The input (with its timers) and output buffers a session starts with. A session carried
    /// by a hot upgrade starts with what it had read and an empty output buffer that grows on
    /// first use: thousands of carried connections resume at once, and allocating (and
    /// faulting in) 16 KiB for each of them would lengthen the pause every client sees.
    fn starting_buffers(&mut self) -> (Paused, BytesMut) {
        match self.start.take() {
            Some(carried) => (carried, BytesMut::new()),
            None => (
                Paused {
                    input: BytesMut::with_capacity(16 * 1024),
                    last_frame: Instant::now(),
                    partial_since: None,
                },
                BytesMut::with_capacity(16 * 1024),
            ),
        }
    }

    /// Waits for the commit of a takeover (at once otherwise); false if the generation ended.
    async fn wait_serving(&mut self) -> bool {
        if !self.served {
            self.served = *self.serving.borrow() || wait_serving(&mut self.serving).await;
        }
        self.served
    }

    /// The handover took this session's socket while it waited: the session never touches
    /// it again and waits for the handover to drop its task.
    async fn taken(&mut self) -> &'static str {
        std::future::pending().await
    }

    /// Stops at this frame boundary for a hot upgrade: everything composed has been written,
    /// `input` holds at most part of the next frame.
    fn stop_for_handover(
        &mut self,
        input: BytesMut,
        last_frame: Instant,
        partial_since: Option<Instant>,
    ) -> &'static str {
        self.stopped = Some(Paused {
            input,
            last_frame,
            partial_since,
        });
        "handed over"
    }

    /// Leaves the connection and its service with the handover (its state is exported once
    /// every session has stopped).
    fn hand_over(self, paused: Paused) {
        let (slot, handover) = (self.slot.clone(), self.handover.clone());
        slot.release_stream();
        let stream = Arc::try_unwrap(self.stream)
            .map_err(|_| std::io::Error::other("the socket is shared"))
            .and_then(TcpStream::into_std);
        match stream {
            Ok(stream) => handover.deposit(Stopped {
                id: Some(slot.id()),
                listener: slot.listener,
                stream,
                input: paused.input.to_vec(),
                idle: paused.last_frame.elapsed(),
                partial: paused.partial_since.map(|since| since.elapsed()),
                service: Box::new(Exporter(self.service)),
            }),
            Err(e) => {
                tracing::warn!(protocol = self.metrics.name, error = %e, "cannot carry a connection")
            }
        }
        // Deposited first: the handover counts a session stopped once it left the hub.
        handover.unregister(&slot);
    }

    /// Sends the service's farewell, if it has one, and waits (bounded) for its answer.
    async fn farewell(&mut self, mut input: BytesMut) -> &'static str {
        let Some((message, wait)) = self.service.farewell() else {
            return "shutting down";
        };
        let mut output = BytesMut::new();
        self.codec.encode_response(&message, &mut output);
        // The write is inside the bounded wait too: a client that does not read cannot hold
        // the shutdown.
        let answered = async {
            if write_all(&self.stream, &output).await.is_err() {
                return;
            }
            loop {
                loop {
                    match self.codec.decode_request(&input) {
                        Ok(Decoded::Frame(request, used)) => {
                            input.advance(used);
                            if S::answers_farewell(&request) {
                                return;
                            }
                            if let Some(reply) = self.service.after_farewell(&request) {
                                let mut out = BytesMut::new();
                                self.codec.encode_response(&reply, &mut out);
                                if write_all(&self.stream, &out).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(Decoded::Incomplete) => break,
                        Err(_) => return,
                    }
                }
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read_buf(&mut input) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(wait, answered).await;
        "shutting down"
    }

    fn deadline(
        &self,
        last_frame: Instant,
        partial_since: Option<Instant>,
    ) -> Option<(Instant, &'static str)> {
        let idle = self
            .limits
            .idle_timeout
            .map(|t| (last_frame + t, "idle timeout"));
        let partial = partial_since
            .zip(self.limits.partial_frame_timeout)
            .map(|(since, t)| (since + t, "partial frame timeout"));
        match (idle, partial) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Executes complete frames until the input runs out or the output passes its cap. Returns
    /// how many frames were executed, whether the connection must close, and when the last
    /// reply answered at once was composed.
    async fn execute_batch(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<(usize, bool, Option<Instant>), Reject> {
        let mut frames = 0;
        let mut answered: Option<Instant> = None;
        let mut deferred = std::mem::take(&mut self.deferred);
        // Allocated only when a reply must wait behind a write (see `Waiting::Ready`).
        let mut held = BytesMut::new();
        let mut close = false;
        // The flush the batch's Async writes owe before any reply goes out (the last covers
        // them all).
        let mut flush_due: Option<FlushDue> = None;
        while output.len() + held.len() < self.limits.max_output_bytes && !close {
            if self.ahead.is_empty() {
                if let Err(reject) = self.decode_ahead(input) {
                    // The replies before the refused input go out: their writes' flush first.
                    if let Some(due) = flush_due.take() {
                        flush_before_replies(due, output, self.metrics.name);
                    }
                    return Err(reject);
                }
                if self.ahead.is_empty() {
                    break;
                }
                self.service.prefetch(self.ahead.make_contiguous());
            }
            let Some(request) = self.ahead.pop_front() else {
                break;
            };
            frames += 1;
            let op = S::op_name(&request);
            // A request's time starts where the one before it in the batch was answered: one
            // clock read per request.
            let started = answered.unwrap_or_else(Instant::now);
            let reply = self.service.call(request).await;
            close = reply.close;
            // An Async write whose flush is a copy is answered as a read is: the batch makes
            // its one flush before anything goes out.
            if let Some(due) = reply.flush {
                flush_due = Some(match flush_due.take() {
                    Some(earlier) => earlier.later(due),
                    None => due,
                });
            }
            // Whether the writes held back must be waited for before the next request.
            let wait_now = match reply.response {
                Some(Deferred::Ready(response)) => {
                    let now = Instant::now();
                    answered = Some(now);
                    self.metrics
                        .record(op, S::is_error(&response), now - started);
                    // Replies stay in order: behind writes still waiting, this one is encoded
                    // aside and goes out after them. Waiting for them here instead would cost a
                    // wait (and a second poll of this task) for every write followed by a read
                    // in a pipelined batch, where the batch's end needs only one.
                    let behind = !deferred.is_empty();
                    let out = if behind { &mut held } else { &mut *output };
                    self.codec.encode_response(&response, out);
                    for message in &reply.then {
                        self.codec.encode_response(message, out);
                    }
                    if behind {
                        deferred.push(Waiting::Ready { end: held.len() });
                    }
                    false
                }
                Some(Deferred::AfterSync { pending, ok, err }) => {
                    deferred.push(Waiting::Durable {
                        op,
                        started,
                        pending: Some(pending),
                        ok,
                        err,
                        then: reply.then,
                        failed: false,
                    });
                    deferred.len() >= MAX_DEFERRED
                }
                None => !deferred.is_empty(),
            };
            if wait_now {
                resolve(
                    &mut deferred,
                    &mut held,
                    &*self.codec,
                    output,
                    &self.metrics,
                )
                .await;
            }
        }
        // Most batches (every read-only one) have nothing deferred: no future to build then.
        if !deferred.is_empty() {
            resolve(
                &mut deferred,
                &mut held,
                &*self.codec,
                output,
                &self.metrics,
            )
            .await;
        }
        self.deferred = deferred;
        if let Some(due) = flush_due {
            close |= !flush_before_replies(due, output, self.metrics.name);
        }
        if close {
            self.ahead.clear();
        }
        Ok((frames, close, answered))
    }

    /// Decodes up to [`LOOKAHEAD`] complete frames into `ahead`. Input the codec refuses is
    /// reported at once when nothing was decoded before it, else once those are executed.
    fn decode_ahead(&mut self, input: &mut BytesMut) -> Result<(), Reject> {
        if let Some(reject) = self.refused.take() {
            return Err(reject);
        }
        while self.ahead.len() < LOOKAHEAD {
            match self.codec.decode_request(input) {
                Ok(Decoded::Frame(request, used)) => {
                    input.advance(used);
                    self.ahead.push_back(request);
                }
                Ok(Decoded::Incomplete) => break,
                Err(reject) if self.ahead.is_empty() => return Err(reject),
                Err(reject) => {
                    self.refused = Some(reject);
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Reads what the socket holds into `input`'s spare room. A read that leaves room unused took
/// everything there was, so the socket's readiness is cleared then, as tokio's own `poll_read`
/// does on Linux: the session's next wait sleeps at once, instead of first paying a read that
/// would block. Data arriving meanwhile is not missed: tokio clears only the readiness it saw
/// before the read, and a new arrival is a new edge.
fn read_available(stream: &TcpStream, input: &mut BytesMut) -> std::io::Result<usize> {
    let mut short = None;
    if input.capacity() == input.len() {
        // A zero-length read would look like the end of the stream.
        input.reserve(4096);
    }
    let fd = stream.as_raw_fd();
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        let room = input.capacity() - input.len();
        let n = crate::raw_socket::recv(fd, input.spare_capacity_mut())?;
        // SAFETY: the kernel initialized the first `n` bytes of the spare room.
        unsafe { input.set_len(input.len() + n) };
        match n {
            n if n > 0 && n < room => {
                short = Some(n);
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            n => Ok(n),
        }
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

/// Writes all of `buf` (the session's socket is shared with its hub slot, so it is written
/// through `&TcpStream`).
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // Write first, wait only when the socket is full: most writes go out at once, and
        // `try_io` itself returns WouldBlock without a system call while tokio knows the
        // socket is not writable.
        let fd = stream.as_raw_fd();
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            crate::raw_socket::send(fd, buf)
        }) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A reply held back until the writes before it in its batch are durable.
enum Waiting<R> {
    /// A write's reply: `ok` once the write is as durable as it asked, else `err`.
    Durable {
        op: &'static str,
        started: Instant,
        /// Taken when waited for.
        pending: Option<Pending>,
        ok: R,
        err: R,
        then: Vec<R>,
        failed: bool,
    },
    /// A reply that was ready at once but follows a write still waiting: encoded into the
    /// held-back bytes, up to `end`.
    Ready { end: usize },
}

/// Makes the flush a batch's Async writes owe before its replies go out. If it fails, nothing
/// of the batch is acknowledged (its writes may not survive a crash): the replies are dropped
/// and false returned, for the caller to close the connection.
fn flush_before_replies(due: FlushDue, output: &mut BytesMut, protocol: &str) -> bool {
    match due.flush() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(protocol, error = %e,
                "journal flush failed: closing the connection without its replies");
            output.clear();
            false
        }
    }
}

/// Writes a batch holds back at most before it waits for them (each keeps its reply's parts).
const MAX_DEFERRED: usize = 256;

/// Waits for the deferred writes (the first wait usually covers them all: one group commit),
/// then encodes every held-back reply in order. The replies go out together, so each write's
/// time is counted up to then, with one clock read for the batch.
async fn resolve<C, R>(
    deferred: &mut Vec<Waiting<R>>,
    held: &mut BytesMut,
    codec: &C,
    output: &mut BytesMut,
    metrics: &ProtocolMetrics,
) where
    C: ServerCodec<Response = R>,
{
    for waiting in deferred.iter_mut() {
        if let Waiting::Durable {
            op,
            pending,
            failed,
            ..
        } = waiting
        {
            if let Some(pending) = pending.take() {
                if let Err(e) = pending.durable().await {
                    tracing::error!(protocol = metrics.name, op = *op, error = %e, "durable write failed");
                    *failed = true;
                }
            }
        }
    }
    let now = Instant::now();
    let mut held_from = 0;
    for waiting in deferred.drain(..) {
        match waiting {
            Waiting::Durable {
                op,
                started,
                ok,
                err,
                then,
                failed,
                ..
            } => {
                metrics.record(op, failed, now - started);
                codec.encode_response(if failed { &err } else { &ok }, output);
                for message in &then {
                    codec.encode_response(message, output);
                }
            }
            Waiting::Ready { end } => {
                output.extend_from_slice(&held[held_from..end]);
                held_from = end;
            }
        }
    }
    held.clear();
}

/// Serves one datagram socket: one datagram in, at most one out.
pub async fn serve_udp<C, S>(
    socket: UdpSocket,
    codec: Arc<C>,
    mut service: S,
    metrics: Arc<ProtocolMetrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
    S: Service,
{
    let mut buf = vec![0u8; 65_536];
    let mut output = BytesMut::with_capacity(65_536);
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            _ = shutdown.changed() => return,
        };
        let (len, peer) = match received {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(protocol = metrics.name, error = %e, "udp receive failed");
                continue;
            }
        };
        let datagram = &buf[..len];
        let request = match codec.decode_request(datagram) {
            Ok(Decoded::Frame(request, _)) => request,
            Ok(Decoded::Incomplete) | Err(_) => {
                let reject = Reject::new("malformed datagram");
                service.rejected(&reject);
                metrics.rejected_frames.increment(1);
                continue;
            }
        };
        let op = S::op_name(&request);
        let started = Instant::now();
        let reply = service.call(request).await;
        let response = match reply.response {
            None => continue,
            Some(Deferred::Ready(response)) => response,
            Some(Deferred::AfterSync { pending, ok, err }) => match pending.durable().await {
                Ok(_) => ok,
                Err(_) => err,
            },
        };
        if let Some(due) = reply.flush {
            if let Err(e) = due.flush() {
                tracing::error!(protocol = metrics.name, error = %e, "journal flush failed");
                continue;
            }
        }
        metrics.record(op, S::is_error(&response), started.elapsed());
        output.clear();
        codec.encode_response(&response, &mut output);
        if let Err(e) = socket.send_to(&output, peer).await {
            tracing::debug!(protocol = metrics.name, %peer, error = %e, "udp send failed");
        }
    }
}
