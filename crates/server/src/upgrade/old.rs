//! The running process's side: start the new binary, greet it while still serving, then stop
//! every session at a frame boundary, close the engine, pass everything over, and exit once the
//! new process is ready, or roll back and serve on from the same state.

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
use super::wire::{HeldLock, Message, SessionState, MAX_FDS};
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
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        match greet(listener, &mut child, timeout).await {
            Ok(stream) => Ok((child, stream)),
            Err(reason) => {
                stop_child(&mut child).await;
                Err(reason)
            }
        }
    }
    .await;
    let _ = std::fs::remove_file(&path);
    let (mut child, stream) = match greeted {
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
    let Stopped { carried, taken } = stop_and_export(runtime, shutdown).await;
    let lock = match dir_lock.try_clone() {
        Ok(lock) => lock,
        Err(e) => {
            stop_child(&mut child).await;
            let reason = format!("cannot pass the data directory lock: {e}");
            let carried = take_back(carried, taken);
            return Outcome::RolledBack { reason, carried };
        }
    };
    // The taken sessions' sockets (`taken`) stay open until the end of this function.
    let outgoing = outgoing_sessions(&carried, &taken);
    let count = outgoing.len();
    let conversed = tokio::task::spawn_blocking(move || {
        let result = converse(&stream, &carried, &outgoing, &lock);
        (result, carried)
    })
    .await;
    let (result, carried) = match conversed {
        Ok(pair) => pair,
        Err(e) => {
            // The conversation task panicked: the state it held is gone with it.
            stop_child(&mut child).await;
            let reason = format!("handover task failed: {e}");
            let carried = take_back(Carried::default(), taken);
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
            let carried = take_back(carried, taken);
            Outcome::RolledBack { reason, carried }
        }
    }
}

/// A taken session's state: idle at a frame boundary, nothing else.
fn taken_state(session: &TakenSession) -> SessionState {
    SessionState {
        listener: session.listener.to_string(),
        input: Vec::new(),
        idle_ms: session.idle_since.elapsed().as_millis() as u64,
        partial_ms: None,
        service: Vec::new(),
    }
}

/// Every session to pass: its state and its socket (owned by `carried` or `taken`).
fn outgoing_sessions(carried: &Carried, taken: &[TakenSession]) -> Vec<(SessionState, RawFd)> {
    let stopped = carried
        .sessions
        .iter()
        .map(|s| (s.state.clone(), s.fd.as_raw_fd()));
    let idle = taken
        .iter()
        .map(|session| (taken_state(session), session.stream.as_raw_fd()));
    stopped.chain(idle).collect()
}

/// After a failure: the taken sessions are carried back with the others (their tasks are
/// gone; the sockets were kept).
fn take_back(mut carried: Carried, taken: Vec<TakenSession>) -> Carried {
    for session in taken {
        let state = taken_state(&session);
        match session.into_std() {
            Ok(stream) => carried.sessions.push(Resumable {
                fd: stream.into(),
                state,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: a taken connection cannot be resumed; closed")
            }
        }
    }
    carried
}

/// Waits for the new binary to connect and greet; refuses a stranger.
async fn greet(
    listener: std::os::unix::net::UnixListener,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<UnixStream, String> {
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
    tokio::task::spawn_blocking(
        move || match socket::recv(&stream).map_err(|e| e.to_string())? {
            (
                Message::Hello {
                    version,
                    pid,
                    data_format,
                },
                fds,
            ) if fds.is_empty() => {
                tracing::info!(version, pid, data_format, "upgrade: the new binary greeted");
                socket::send(&stream, &Message::Proceed, &[]).map_err(|e| e.to_string())?;
                Ok(stream)
            }
            (Message::Failed { reason }, _) => Err(format!("the new binary failed: {reason}")),
            (other, _) => Err(format!("expected a greeting, got {other:?}")),
        },
    )
    .await
    .map_err(|e| format!("handover task failed: {e}"))?
}

async fn stop_child(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// What the stop leaves: the state of the sessions that stopped themselves, and the sessions
/// taken while idle.
struct Stopped {
    carried: Carried,
    taken: Vec<TakenSession>,
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
    let (taken, ()) = tokio::join!(
        hub.take_sessions_for_handover(limit),
        runtime.stop_tasks_but_sessions(
            "upgrade: connections still busy at the deadline (a client not reading?); closing them",
        )
    );
    let stopped_in = started.elapsed();
    // The taken sessions' tasks go (their sockets stay with `taken`), and with them their hold
    // on the engine, which must be released before the new process can open it.
    let mut parked = runtime.tasks.take_sessions();
    parked.abort_all();
    while parked.join_next().await.is_some() {}
    hub.wait_dropped(limit).await;
    let mut carried = Carried {
        listeners: std::mem::take(&mut *runtime.bound.lock()),
        sessions: export_stopped(&hub),
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
    // Closing syncs everything written (and marks the log's end, so the next open is quick).
    engine.close();
    tracing::info!(
        stopped = carried.sessions.len(),
        taken = taken.len(),
        stop_ms = stopped_in.as_millis() as u64,
        stop_and_export_ms = exported.as_millis() as u64,
        with_store_closed_ms = started.elapsed().as_millis() as u64,
        "upgrade: sessions stopped, store closed"
    );
    Stopped { carried, taken }
}

/// The state of every session that stopped itself (exported now that none runs).
fn export_stopped(hub: &Hub) -> Vec<Resumable> {
    let mut sessions = Vec::new();
    for mut stopped in hub.take_stopped() {
        let service = match stopped.service.export() {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(listener = stopped.listener, error = %e, "upgrade: a connection's state cannot be carried; closed");
                continue;
            }
        };
        sessions.push(Resumable {
            fd: stopped.stream.into(),
            state: SessionState {
                listener: stopped.listener.to_string(),
                input: stopped.input,
                idle_ms: stopped.idle.as_millis() as u64,
                partial_ms: stopped.partial.map(|d| d.as_millis() as u64),
                service,
            },
        });
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
    stream: &UnixStream,
    carried: &Carried,
    sessions: &[(SessionState, RawFd)],
    lock: &File,
) -> Result<(), String> {
    let send = |message: &Message, fds: &[BorrowedFd<'_>]| {
        socket::send(stream, message, fds).map_err(|e| e.to_string())
    };
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
    for batch in batches(sessions) {
        let states = batch.iter().map(|(state, _)| state.clone()).collect();
        // SAFETY: every descriptor stays open for the whole conversation (see
        // `outgoing_sessions`).
        let fds: Vec<_> = batch
            .iter()
            .map(|(_, fd)| unsafe { BorrowedFd::borrow_raw(*fd) })
            .collect();
        send(&Message::Sessions(states), &fds)?;
    }
    let sent = Message::Sent {
        listeners: carried.listeners.len() as u32,
        sessions: sessions.len() as u32,
    };
    send(&sent, &[])?;
    match socket::recv(stream).map_err(|e| format!("waiting for the new process: {e}"))? {
        (Message::Ready, fds) if fds.is_empty() => send(&Message::Commit, &[]),
        (Message::Failed { reason }, _) => Err(format!("the new process failed: {reason}")),
        (other, _) => Err(format!("expected ready, got {other:?}")),
    }
}

/// Sessions in frames of at most MAX_FDS connections and about 16 MiB of state.
fn batches<F>(sessions: &[(SessionState, F)]) -> Vec<&[(SessionState, F)]> {
    const BUDGET: usize = 16 << 20;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (state, _)) in sessions.iter().enumerate() {
        let size = state.input.len() + state.service.len() + state.listener.len() + 32;
        if i > start && (i - start == MAX_FDS || bytes + size > BUDGET) {
            out.push(&sessions[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sessions.len() {
        out.push(&sessions[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_max_fds_and_keep_the_order() {
        let sessions: Vec<(SessionState, i32)> = (0..MAX_FDS * 2 + 3)
            .map(|i| {
                let state = SessionState {
                    listener: format!("l{i}"),
                    input: Vec::new(),
                    idle_ms: 0,
                    partial_ms: None,
                    service: Vec::new(),
                };
                (state, 0)
            })
            .collect();
        let batched = batches(&sessions);
        let sizes: Vec<usize> = batched.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [MAX_FDS, MAX_FDS, 3]);
        assert_eq!(batched[1][0].0.listener, format!("l{MAX_FDS}"));
        assert!(batches::<i32>(&[]).is_empty());
    }
}
