//! The running process's side: start the new binary, greet it while still serving, then stop
//! every session at a frame boundary, close the engine, pass everything over, and exit once the
//! new process is ready, or roll back and serve on from the same state.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use polykv_engine::Engine;
use tokio::sync::watch;

use super::carry::{Carried, Hub, Resumable, TakenSession};
use super::socket;
use super::wire::{
    self, AheadSession, HeldLock, IdleSession, KeptSession, Message, SessionState, MAX_FDS,
};
use crate::runtime::Runtime;

/// How a handover ended.
pub enum Outcome {
    /// Nothing was stopped: the new binary did not start, connect or greet in time, or was
    /// refused. The old process serves on as if nothing happened.
    NotStarted {
        reason: String,
        runtime: Box<Runtime>,
    },
    /// The new process serves now; this one exits.
    Committed { pid: u32 },
    /// The new process failed after the old one stopped: the old one resumes from `carried`.
    RolledBack { reason: String, carried: Carried },
}

/// What the handover needs of the running server.
pub struct Serving<'a> {
    pub runtime: Runtime,
    pub shutdown: &'a watch::Sender<bool>,
    pub dir_lock: &'a File,
    /// The running binary's arguments (the new one gets the same).
    pub args: &'a [OsString],
}

/// The binary to start: the requested one, else the running one's path (if it was replaced
/// on disk, the path now names the new file).
fn binary(requested: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = requested {
        return Ok(path);
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the running binary: {e}"))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

pub async fn hand_over(serving: Serving<'_>, requested: Option<PathBuf>) -> Outcome {
    let Serving {
        runtime,
        shutdown,
        dir_lock,
        args,
    } = serving;
    let config = runtime.config.clone();
    let timeout = Duration::from_secs(config.upgrade_timeout_secs.max(1));
    let path = config.data_dir.join(super::SOCKET_FILE);
    let started = std::time::Instant::now();

    let greeted = async {
        let binary = binary(requested)?;
        let listener = socket::listen(&path).map_err(|e| e.to_string())?;
        tracing::info!(binary = %binary.display(), "upgrade: starting the new binary");
        let mut child = tokio::process::Command::new(&binary)
            .args(args)
            .env(super::HANDOVER_ENV, &path)
            .env(super::HANDOVER_VERSION_ENV, wire::VERSION.to_string())
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let greeted = greet(listener, &mut child, timeout).await;
        // Still serving: the sessions' sockets go ahead while the store is checkpointed.
        let ahead = match greeted {
            Ok((stream, version)) => {
                let hub = &runtime.context.handover;
                let (ahead, ()) = tokio::join!(
                    pass_ahead(stream, version, hub),
                    checkpoint_ahead(&runtime.engine)
                );
                ahead
            }
            Err(reason) => Err(reason),
        };
        match ahead {
            Ok(peer) => Ok((child, peer)),
            Err(reason) => {
                stop_child(&mut child).await;
                Err(reason)
            }
        }
    }
    .await;
    let _ = std::fs::remove_file(&path);
    let (mut child, (peer, ahead)) = match greeted {
        Ok(pair) => pair,
        Err(reason) => {
            return Outcome::NotStarted {
                reason,
                runtime: Box::new(runtime),
            }
        }
    };
    let pid = child.id().unwrap_or(0);

    // From here until the new process resumes, clients wait: the pause they see.
    let stopping = std::time::Instant::now();
    let Stopped {
        carried,
        stopped_ids,
        taken,
        parked,
    } = stop_and_export(runtime, shutdown).await;
    let lock = match dir_lock.try_clone() {
        Ok(lock) => lock,
        Err(e) => {
            stop_child(&mut child).await;
            let reason = format!("cannot pass the data directory lock: {e}");
            let carried = take_back(carried, taken, parked).await;
            return Outcome::RolledBack { reason, carried };
        }
    };
    // The taken sessions' sockets (`taken`) stay open until the end of this function.
    let idle = idle_sessions(&taken);
    let count = carried.sessions.len() + idle.len();
    let conversed = tokio::task::spawn_blocking(move || {
        let outgoing = Outgoing {
            carried: &carried,
            stopped_ids: &stopped_ids,
            idle: &idle,
            ahead: &ahead,
        };
        let result = converse(&peer, outgoing, &lock, stopping);
        (result, carried)
    })
    .await;
    let (result, carried) = match conversed {
        Ok(pair) => pair,
        Err(e) => {
            // The conversation task panicked: the state it held is gone with it.
            stop_child(&mut child).await;
            let reason = format!("handover task failed: {e}");
            let carried = take_back(Carried::default(), taken, parked).await;
            return Outcome::RolledBack { reason, carried };
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(
                pid,
                stopped_ms = stopping.elapsed().as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                sessions = count,
                "upgrade: the new process serves; exiting"
            );
            Outcome::Committed { pid }
        }
        Err(reason) => {
            stop_child(&mut child).await;
            let carried = take_back(carried, taken, parked).await;
            Outcome::RolledBack { reason, carried }
        }
    }
}

/// Checkpoints the store while this process still serves, so the close after the stop has
/// only the last moment's writes to move and the new process little of the log to replay.
async fn checkpoint_ahead(engine: &Engine) {
    let engine = engine.clone();
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || engine.checkpoint()).await;
    match done {
        Ok(Ok(())) => tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "upgrade: store checkpointed ahead of the stop"
        ),
        // Not needed for correctness: the close checkpoints anyway.
        Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: checkpoint ahead of the stop failed"),
        Err(e) => tracing::warn!(error = %e, "upgrade: checkpoint ahead of the stop failed"),
    }
}

/// A taken session's state: idle at a frame boundary, nothing else.
fn taken_state(session: &TakenSession) -> SessionState {
    idle_state(session.listener, session.idle_since)
}

fn idle_state(listener: &str, idle_since: std::time::Instant) -> SessionState {
    SessionState {
        listener: listener.to_string(),
        input: Vec::new(),
        idle_ms: idle_since.elapsed().as_millis() as u64,
        partial_ms: None,
        service: Vec::new(),
    }
}

/// A taken session, as little as the conversation needs to describe it once the lock table
/// is sent (its state is built then, not in the pause before).
struct Idle {
    id: u64,
    listener: &'static str,
    since: std::time::Instant,
    fd: RawFd,
}

fn idle_sessions(taken: &[TakenSession]) -> Vec<Idle> {
    taken
        .iter()
        .map(|session| Idle {
            id: session.id,
            listener: session.listener,
            since: session.idle_since,
            fd: session.stream.as_raw_fd(),
        })
        .collect()
}

/// Every session to pass after the stop, as the conversation sends them.
struct Outgoing<'a> {
    carried: &'a Carried,
    /// The session id of each of `carried.sessions` (none outside the shared session loop).
    stopped_ids: &'a [Option<u64>],
    idle: &'a [Idle],
    /// The ids whose socket went ahead.
    ahead: &'a HashSet<u64>,
}

/// Sessions split by whether their socket went ahead: the stopped ones by id with their
/// state, the idle ones by id with their idle time, and the others with their state and
/// socket (owned by `carried` or `taken`).
struct Split {
    kept: Vec<KeptSession>,
    idle: Vec<IdleSession>,
    sent: Vec<(SessionState, RawFd)>,
}

impl Outgoing<'_> {
    fn split(&self) -> Split {
        let mut split = Split {
            kept: Vec::new(),
            idle: Vec::with_capacity(self.idle.len()),
            sent: Vec::new(),
        };
        let stopped = self.carried.sessions.iter().zip(self.stopped_ids);
        for (session, id) in stopped {
            let state = session.state.clone();
            match id.filter(|id| self.ahead.contains(id)) {
                Some(id) => split.kept.push(KeptSession { id, state }),
                None => split.sent.push((state, session.fd.as_raw_fd())),
            }
        }
        for i in self.idle {
            if self.ahead.contains(&i.id) {
                let idle_ms = i.since.elapsed().as_millis() as u64;
                split.idle.push(IdleSession { id: i.id, idle_ms });
            } else {
                split.sent.push((idle_state(i.listener, i.since), i.fd));
            }
        }
        split
    }
}

/// After a failure: the taken sessions are carried back with the others, once their tasks
/// are gone (the sockets were kept).
async fn take_back(mut carried: Carried, taken: Vec<TakenSession>, parked: Parked) -> Carried {
    parked.drop_all().await;
    for session in taken {
        let state = taken_state(&session);
        match session.into_std() {
            Ok(stream) => carried.sessions.push(Resumable {
                fd: stream.into(),
                state,
                waiting: None,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: a taken connection cannot be resumed; closed")
            }
        }
    }
    carried
}

/// Waits for the new binary to connect and greet; refuses a stranger. Returns the connection
/// and the handover version of the greeting (the one to speak).
async fn greet(
    listener: std::os::unix::net::UnixListener,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<(UnixStream, u16), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("handover socket: {e}"))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| format!("handover socket: {e}"))?;
    let expected = child.id().map(|pid| pid as i32);
    let stream = tokio::select! {
        accepted = listener.accept() => accepted.map_err(|e| format!("handover socket: {e}"))?.0,
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(format!("the new binary exited ({status}) before taking over"));
        }
        _ = tokio::time::sleep(timeout) => {
            return Err(format!("the new binary did not connect within {}s", timeout.as_secs()));
        }
    };
    let stream = stream
        .into_std()
        .map_err(|e| format!("handover socket: {e}"))?;
    let pid = socket::check_peer(&stream).map_err(|e| e.to_string())?;
    if Some(pid) != expected {
        return Err(format!(
            "handover peer is pid {pid}, not the new binary {expected:?}"
        ));
    }
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("handover socket: {e}"))?;
    socket::set_timeout(&stream, timeout).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        match socket::recv_versioned(&stream).map_err(|e| e.to_string())? {
            (
                handover,
                Message::Hello {
                    version,
                    pid,
                    data_format,
                },
                fds,
            ) if fds.is_empty() => {
                tracing::info!(
                    version,
                    handover,
                    pid,
                    data_format,
                    "upgrade: the new binary greeted"
                );
                socket::send_as(&stream, handover, &Message::Proceed, &[])
                    .map_err(|e| e.to_string())?;
                Ok((stream, handover))
            }
            (_, Message::Failed { reason }, _) => Err(format!("the new binary failed: {reason}")),
            (_, other, _) => Err(format!("expected a greeting, got {other:?}")),
        }
    })
    .await
    .map_err(|e| format!("handover task failed: {e}"))?
}

/// The connection to the new process and the handover version it speaks.
struct Peer {
    stream: UnixStream,
    version: u16,
}

/// Version 2: passes the socket of every open session while this process still serves, so
/// after the stop only their state (and the sockets of sessions accepted since) cross. Returns
/// the ids passed. A session that closes meanwhile stays open in the new process until it
/// learns so (its copy of the socket is dropped then).
async fn pass_ahead(
    stream: UnixStream,
    version: u16,
    hub: &std::sync::Arc<Hub>,
) -> Result<(Peer, HashSet<u64>), String> {
    let peer = Peer { stream, version };
    if version < 2 {
        return Ok((peer, HashSet::new()));
    }
    let started = std::time::Instant::now();
    // Shared sockets: they must be let go of before the stop (a stopping session takes its own
    // back), so the snapshot lives only in this task.
    let open = hub.open_sessions();
    tokio::task::spawn_blocking(move || {
        let mut ids = HashSet::with_capacity(open.len());
        for batch in open.chunks(MAX_FDS) {
            let sessions = batch.iter().map(|(id, listener, _)| AheadSession {
                id: *id,
                listener: listener.to_string(),
            });
            let fds: Vec<_> = batch.iter().map(|(_, _, s)| s.as_fd()).collect();
            let message = Message::Ahead(sessions.collect());
            socket::send_as(&peer.stream, peer.version, &message, &fds)
                .map_err(|e| e.to_string())?;
            ids.extend(batch.iter().map(|(id, _, _)| *id));
        }
        tracing::info!(
            sessions = ids.len(),
            ms = started.elapsed().as_millis() as u64,
            "upgrade: sessions' sockets passed ahead"
        );
        Ok((peer, ids))
    })
    .await
    .map_err(|e| format!("handover task failed: {e}"))?
}

async fn stop_child(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// What the stop leaves: the state of the sessions that stopped themselves, the sessions
/// taken while idle, and the tasks of those.
struct Stopped {
    carried: Carried,
    /// The session id of each of `carried.sessions` (none outside the shared session loop).
    stopped_ids: Vec<Option<u64>>,
    taken: Vec<TakenSession>,
    parked: Parked,
}

/// The tasks of the taken sessions (parked for good: they never touch their sockets again).
/// They still hold engine handles, which no longer matters: the store was released. Dropping
/// 10 000 of them takes tens of milliseconds, so it is left out of the pause: after the commit
/// they go with the process; only a rollback waits for them (it needs the sockets back).
struct Parked {
    tasks: tokio::task::JoinSet<()>,
    hub: std::sync::Arc<Hub>,
    limit: Duration,
}

impl Parked {
    async fn drop_all(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.hub.wait_dropped(self.limit).await;
    }
}

/// Stops every listener and session (sessions at a frame boundary: idle ones are taken
/// without waking them, the others stop themselves), then, with nothing running, exports the
/// sessions' state and the lock table and closes the engine.
async fn stop_and_export(mut runtime: Runtime, shutdown: &watch::Sender<bool>) -> Stopped {
    let started = std::time::Instant::now();
    let hub = runtime.context.handover.clone();
    hub.start_exporting();
    let _ = shutdown.send(true);
    let limit = Duration::from_secs(runtime.config.shutdown_timeout_secs);
    let (taken, others) = tokio::join!(hub.take_sessions_for_handover(limit), async {
        runtime
            .stop_tasks_but_sessions(
                "upgrade: connections still busy at the deadline (a client not reading?); closing them",
            )
            .await;
        started.elapsed()
    });
    let stopped_in = started.elapsed();
    let parked = Parked {
        tasks: runtime.tasks.take_sessions(),
        hub: hub.clone(),
        limit,
    };
    let (stopped_ids, sessions) = export_stopped(&hub).into_iter().unzip();
    let mut carried = Carried {
        listeners: std::mem::take(&mut *runtime.bound.lock()),
        sessions,
        ..Carried::default()
    };
    let engine = runtime.engine.clone();
    carried.locks = export_locks(&engine);
    let member = runtime.cluster.take();
    drop(runtime);
    let exported = started.elapsed();
    // In cluster mode the Raft node stops before the store closes (a leader hands over first;
    // the new process reopens the node from the same data directory after the commit).
    if let Some(member) = member {
        member.stop().await;
        tracing::info!(
            ms = (started.elapsed() - exported).as_millis() as u64,
            "upgrade: cluster node stopped"
        );
    }
    // Closing syncs everything written (and marks the log's end, so the next open is quick);
    // releasing lets the new process open the store although the parked sessions still hold
    // engine handles. A store that could not be released is still held: the new process
    // waits for it (bounded) and the handover fails or goes on from there.
    let closing = std::time::Instant::now();
    let released = engine.release();
    tracing::info!(
        stopped = carried.sessions.len(),
        taken = taken.len(),
        released,
        stop_ms = stopped_in.as_millis() as u64,
        other_tasks_ms = others.as_millis() as u64,
        stop_and_export_ms = exported.as_millis() as u64,
        close_ms = closing.elapsed().as_millis() as u64,
        with_store_closed_ms = started.elapsed().as_millis() as u64,
        "upgrade: sessions stopped, store closed"
    );
    Stopped {
        carried,
        stopped_ids,
        taken,
        parked,
    }
}

/// The state of every session that stopped itself (exported now that none runs), by id.
fn export_stopped(hub: &Hub) -> Vec<(Option<u64>, Resumable)> {
    let mut sessions = Vec::new();
    for mut stopped in hub.take_stopped() {
        let service = match stopped.service.export() {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(listener = stopped.listener, error = %e, "upgrade: a connection's state cannot be carried; closed");
                continue;
            }
        };
        let resumable = Resumable {
            waiting: None,
            fd: stopped.stream.into(),
            state: SessionState {
                listener: stopped.listener.to_string(),
                input: stopped.input,
                idle_ms: stopped.idle.as_millis() as u64,
                partial_ms: stopped.partial.map(|d| d.as_millis() as u64),
                service,
            },
        };
        sessions.push((stopped.id, resumable));
    }
    sessions
}

fn export_locks(engine: &Engine) -> Vec<HeldLock> {
    engine
        .live_locks()
        .into_iter()
        .map(|(name, holder, deadline)| HeldLock {
            name: name.to_vec(),
            holder,
            deadline,
        })
        .collect()
}

/// Sends the state, waits for the new process to be ready, and commits.
fn converse(
    peer: &Peer,
    outgoing: Outgoing<'_>,
    lock: &File,
    stopping: std::time::Instant,
) -> Result<(), String> {
    let since_stop = || stopping.elapsed().as_millis() as u64;
    let send = |message: &Message, fds: &[BorrowedFd<'_>]| {
        socket::send_as(&peer.stream, peer.version, message, fds).map_err(|e| e.to_string())
    };
    let carried = outgoing.carried;
    send(&Message::DirLock, &[lock.as_fd()])?;
    for l in &carried.listeners {
        let message = Message::Listener {
            name: l.name.clone(),
            udp: l.udp,
        };
        send(&message, &[l.fd.as_fd()])?;
    }
    // The store is closed by now: the new process opens it while the sessions follow.
    let locks = Message::Locks {
        locks: carried.locks.clone(),
    };
    send(&locks, &[])?;
    let locks_sent_ms = since_stop();
    let Split {
        kept,
        idle,
        sent: sessions,
    } = outgoing.split();
    let count = kept.len() + idle.len() + sessions.len();
    let mut kept = kept.into_iter();
    for size in batch_sizes(kept.as_slice().iter().map(|k| &k.state), MAX_KEPT) {
        send(&Message::Kept(kept.by_ref().take(size).collect()), &[])?;
    }
    for batch in idle.chunks(MAX_IDLE) {
        send(&Message::Idle(batch.to_vec()), &[])?;
    }
    let kept_sent_ms = since_stop();
    let mut sessions = sessions.into_iter();
    let states = sessions.as_slice().iter().map(|(state, _)| state);
    for size in batch_sizes(states, MAX_FDS) {
        let (states, fds): (Vec<_>, Vec<_>) = sessions.by_ref().take(size).unzip();
        // SAFETY: every descriptor stays open for the whole conversation (`carried` here,
        // `taken` in `hand_over`).
        let fds: Vec<_> = fds
            .into_iter()
            .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
            .collect();
        send(&Message::Sessions(states), &fds)?;
    }
    let sent = Message::Sent {
        listeners: carried.listeners.len() as u32,
        sessions: count as u32,
    };
    send(&sent, &[])?;
    let sessions_sent_ms = since_stop();
    match socket::recv(&peer.stream).map_err(|e| format!("waiting for the new process: {e}"))? {
        (Message::Ready, fds) if fds.is_empty() => {
            tracing::info!(
                locks_sent_ms,
                kept_sent_ms,
                sessions_sent_ms,
                ready_ms = since_stop(),
                "upgrade: the new process is ready; committing"
            );
            send(&Message::Commit, &[])
        }
        (Message::Failed { reason }, _) => Err(format!("the new process failed: {reason}")),
        (other, _) => Err(format!("expected ready, got {other:?}")),
    }
}

/// Most sessions in one [`Message::Kept`] (no descriptors: only the byte budget binds).
const MAX_KEPT: usize = 4096;
/// Most sessions in one [`Message::Idle`] (at most 20 bytes each).
const MAX_IDLE: usize = 16384;

/// The sizes of the frames the sessions go in, in order: at most `max` sessions and about
/// 16 MiB of state each.
fn batch_sizes<'a>(states: impl Iterator<Item = &'a SessionState>, max: usize) -> Vec<usize> {
    const BUDGET: usize = 16 << 20;
    let mut out = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    for state in states {
        let size = state.input.len() + state.service.len() + state.listener.len() + 32;
        if count > 0 && (count == max || bytes + size > BUDGET) {
            out.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        out.push(count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(i: usize, input: usize) -> SessionState {
        SessionState {
            listener: format!("l{i}"),
            input: vec![0; input],
            idle_ms: 0,
            partial_ms: None,
            service: Vec::new(),
        }
    }

    #[test]
    fn batches_hold_at_most_max_sessions_and_the_byte_budget() {
        let sessions: Vec<_> = (0..MAX_FDS * 2 + 3).map(|i| state(i, 0)).collect();
        assert_eq!(batch_sizes(sessions.iter(), MAX_FDS), [MAX_FDS, MAX_FDS, 3]);
        assert_eq!(batch_sizes(sessions.iter(), MAX_KEPT), [MAX_FDS * 2 + 3]);
        assert!(batch_sizes([].iter(), MAX_FDS).is_empty());
        let large: Vec<_> = (0..3).map(|i| state(i, 10 << 20)).collect();
        assert_eq!(batch_sizes(large.iter(), MAX_KEPT), [1, 1, 1]);
    }
}
