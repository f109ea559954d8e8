//! The new process's side: connect to the running server, greet it, take the data directory
//! lock, the listeners, the lock table and the sessions, open the store; then (the caller)
//! prepare every listener and session, report ready and wait for the commit. Nothing is
//! served and nothing in the data directory is written before the commit, so a failure leaves
//! the old process free to resume.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use polykv_engine::Engine;

use super::carry::{Carried, CarriedListener, Resumable};
use super::socket;
use super::wire::{self, Message};
use crate::config::Config;

/// What the new process starts from, before the commit.
pub struct Received {
    pub dir_lock: File,
    pub carried: Carried,
    pub engine: Engine,
    pub commit: Commit,
}

/// The last step: tell the old process this one is ready, and wait for its go.
pub struct Commit {
    stream: UnixStream,
    /// The handover version spoken with the old process.
    version: u16,
}

impl Commit {
    /// Sends Ready (everything is prepared, nothing served) and waits for the commit.
    pub async fn commit(self) -> Result<(), String> {
        let (stream, version) = (self.stream, self.version);
        blocking(move || {
            socket::send_as(&stream, version, &Message::Ready, &[]).map_err(|e| e.to_string())?;
            match socket::recv(&stream).map_err(|e| e.to_string())? {
                (Message::Commit, fds) if fds.is_empty() => Ok(()),
                (other, _) => Err(format!("expected the commit, got {other:?}")),
            }
        })
        .await
    }

    /// Tells the old process that preparing failed (it rolls back).
    pub fn fail(self, reason: &str) {
        let _ = socket::send_as(&self.stream, self.version, &failed(reason), &[]);
    }
}

/// Takes over from the old process at `path`, which announced handover version
/// `peer_version` (none: 1); the conversation is in the newest version both speak.
pub async fn take_over(
    config: &Config,
    path: &Path,
    peer_version: Option<u16>,
) -> Result<Received, String> {
    let version = peer_version
        .unwrap_or(wire::OLDEST_VERSION)
        .clamp(wire::OLDEST_VERSION, wire::VERSION);
    let timeout = Duration::from_secs(config.upgrade_timeout_secs.max(1));
    // Room for every connection and listener the old process may pass, made while it serves.
    reserve_descriptors(config.max_connections as usize + 1024);
    // The old process stops its sessions between our greeting and its first descriptor.
    let stop_wait = timeout + Duration::from_secs(config.shutdown_timeout_secs);
    let (path, data_dir) = (path.to_path_buf(), config.data_dir.clone());
    let (stream, dir_lock, mut carried, incoming) =
        blocking(move || receive_first(&path, &data_dir, version, timeout, stop_wait)).await?;
    // The lock table comes after the old process closed the store: open it while the
    // sessions arrive.
    let receiving = tokio::task::spawn_blocking(move || {
        let sessions = receive_sessions(&stream, incoming);
        (stream, sessions)
    });
    let opening = std::time::Instant::now();
    let opened = crate::server::open_engine_waiting(config).await;
    let opened_ms = opening.elapsed().as_millis() as u64;
    let (stream, sessions) = receiving
        .await
        .map_err(|e| format!("handover task failed: {e}"))?;
    tracing::info!(
        opened_ms,
        received_ms = opening.elapsed().as_millis() as u64,
        "upgrade: store opened, sessions received"
    );
    let received = match (opened, sessions) {
        (Ok(engine), Ok(sessions)) => Ok((engine, sessions)),
        (Ok(engine), Err(reason)) => {
            engine.close();
            Err(reason)
        }
        (Err(e), _) => Err(e.to_string()),
    };
    let (engine, sessions) = match received {
        Ok(pair) => pair,
        Err(reason) => {
            let _ = socket::send_as(&stream, version, &failed(&reason), &[]);
            return Err(reason);
        }
    };
    carried.sessions = sessions;
    Ok(Received {
        dir_lock,
        carried,
        engine,
        commit: Commit { stream, version },
    })
}

/// Grows this process's descriptor table once, now, to hold `wanted` descriptors (capped by
/// RLIMIT_NOFILE). Left to itself the kernel doubles the table as the passed connections
/// arrive, and in a process with several threads every doubling waits for an RCU grace
/// period (`expand_fdtable`): about ten of them for 10 000 connections, each taking
/// milliseconds to tens of milliseconds on a busy machine, inside the clients' pause. Best
/// effort: a failure leaves the table to grow as before.
fn reserve_descriptors(wanted: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass; fcntl(F_DUPFD_CLOEXEC) duplicates stderr
    // onto the lowest free descriptor at or above `top`, which is closed at once (only the
    // table's growth is wanted).
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let top = (wanted as u64).min(limit.rlim_cur).saturating_sub(1);
        let Ok(top) = libc::c_int::try_from(top) else {
            return;
        };
        if top < 1024 {
            return;
        }
        let fd = libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, top);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("handover task failed: {e}"))?
}

fn failed(reason: &str) -> Message {
    Message::Failed {
        reason: reason.to_string(),
    }
}

/// The one descriptor a message must carry.
fn one(fds: Vec<OwnedFd>, what: &str) -> Result<OwnedFd, String> {
    let count = fds.len();
    let mut fds = fds.into_iter();
    match (fds.next(), count) {
        (Some(fd), 1) => Ok(fd),
        _ => Err(format!("{what} came with {count} descriptors, not 1")),
    }
}

/// Sessions as they arrive: sockets passed ahead (version 2), by id, until their state comes
/// ([`Message::Kept`]), and sessions complete with state and socket.
#[derive(Default)]
struct Incoming {
    ahead: HashMap<u64, OwnedFd>,
    sessions: Vec<Resumable>,
}

impl Incoming {
    /// Takes a message about sessions; any other is given back.
    fn take(
        &mut self,
        message: Message,
        fds: Vec<OwnedFd>,
    ) -> Result<Option<(Message, Vec<OwnedFd>)>, String> {
        match message {
            Message::Ahead(ahead) if ahead.len() == fds.len() => {
                self.ahead.reserve(ahead.len());
                for (session, fd) in ahead.into_iter().zip(fds) {
                    if self.ahead.insert(session.id, fd).is_some() {
                        return Err(format!("session {} passed ahead twice", session.id));
                    }
                }
            }
            Message::Kept(kept) if fds.is_empty() => {
                self.sessions.reserve(kept.len());
                for session in kept {
                    let fd = self.ahead.remove(&session.id).ok_or_else(|| {
                        format!("session {} kept but not passed ahead", session.id)
                    })?;
                    self.sessions.push(Resumable {
                        fd,
                        state: session.state,
                        waiting: None,
                    });
                }
            }
            Message::Sessions(states) if states.len() == fds.len() => {
                self.sessions
                    .extend(states.into_iter().zip(fds).map(|(state, fd)| Resumable {
                        fd,
                        state,
                        waiting: None,
                    }))
            }
            other => return Ok(Some((other, fds))),
        }
        Ok(None)
    }

    /// Every session, once the old process said how many it sent. Sockets passed ahead and
    /// not kept belong to connections closed meanwhile: dropped (closed) here.
    fn finish(self, count: u32) -> Result<Vec<Resumable>, String> {
        if self.sessions.len() != count as usize {
            return Err(format!(
                "sent {count} sessions, received {}",
                self.sessions.len()
            ));
        }
        if !self.ahead.is_empty() {
            tracing::info!(
                closed = self.ahead.len(),
                "upgrade: connections passed ahead and closed before the stop"
            );
        }
        Ok(self.sessions)
    }
}

type First = (UnixStream, File, Carried, Incoming);

/// Greets the old process and receives up to the lock table: the sockets passed ahead, the
/// directory lock and the listeners.
fn receive_first(
    path: &Path,
    data_dir: &Path,
    version: u16,
    timeout: Duration,
    stop_wait: Duration,
) -> Result<First, String> {
    let stream =
        UnixStream::connect(path).map_err(|e| format!("cannot reach {}: {e}", path.display()))?;
    let pid = socket::check_peer(&stream).map_err(|e| e.to_string())?;
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    if pid != parent {
        return Err(format!(
            "handover peer is pid {pid}, not our parent {parent}"
        ));
    }
    socket::set_timeout(&stream, timeout).map_err(|e| e.to_string())?;
    let fail = |reason: String| {
        let _ = socket::send_as(&stream, version, &failed(&reason), &[]);
        reason
    };
    // A data directory this binary cannot read: refused before anything is stopped.
    crate::format::check(data_dir).map_err(|e| fail(e.to_string()))?;
    let hello = Message::Hello {
        data_format: crate::format::DATA_FORMAT,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    socket::send_as(&stream, version, &hello, &[]).map_err(|e| e.to_string())?;
    match socket::recv(&stream).map_err(|e| e.to_string())? {
        (Message::Proceed, fds) if fds.is_empty() => {}
        (Message::Refused { reason }, _) => return Err(format!("refused: {reason}")),
        (other, _) => return Err(fail(format!("expected to proceed, got {other:?}"))),
    }
    stream
        .set_read_timeout(Some(stop_wait))
        .map_err(|e| e.to_string())?;
    let mut dir_lock = None;
    let mut carried = Carried::default();
    let mut incoming = Incoming::default();
    loop {
        let (message, fds) = socket::recv(&stream).map_err(|e| e.to_string())?;
        let Some(other) = incoming.take(message, fds).map_err(fail)? else {
            continue;
        };
        match other {
            (Message::DirLock, fds) => {
                dir_lock = Some(File::from(one(fds, "the lock").map_err(fail)?))
            }
            (Message::Listener { name, udp }, fds) => {
                let fd = one(fds, "a listener").map_err(fail)?;
                carried.listeners.push(CarriedListener { name, udp, fd })
            }
            (Message::Locks { locks }, fds) if fds.is_empty() => {
                carried.locks = locks;
                break;
            }
            (other, _) => return Err(fail(format!("unexpected {other:?}"))),
        }
    }
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let dir_lock = dir_lock.ok_or_else(|| fail("no data directory lock".into()))?;
    Ok((stream, dir_lock, carried, incoming))
}

/// Receives the sessions, batch by batch, until the count that closes them.
fn receive_sessions(stream: &UnixStream, mut incoming: Incoming) -> Result<Vec<Resumable>, String> {
    loop {
        let (message, fds) = socket::recv(stream).map_err(|e| e.to_string())?;
        match incoming.take(message, fds)? {
            None => {}
            Some((Message::Sent { sessions, .. }, fds)) if fds.is_empty() => {
                let mut sessions = incoming.finish(sessions)?;
                crate::session::mark_waiting(&mut sessions);
                return Ok(sessions);
            }
            Some((other, fds)) => {
                return Err(format!(
                    "unexpected {other:?} with {} descriptors",
                    fds.len()
                ))
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::wire::{AheadSession, KeptSession, SessionState};

    fn state(listener: &str) -> SessionState {
        SessionState {
            listener: listener.into(),
            input: Vec::new(),
            idle_ms: 0,
            partial_ms: None,
            service: Vec::new(),
        }
    }

    fn fds(count: usize) -> Vec<OwnedFd> {
        (0..count)
            .map(|_| OwnedFd::from(std::io::pipe().unwrap().0))
            .collect()
    }

    fn ahead(ids: &[u64]) -> Message {
        Message::Ahead(ids.iter().map(|&id| AheadSession { id }).collect())
    }

    fn kept(ids: &[u64]) -> Message {
        let kept = ids.iter().map(|&id| KeptSession {
            id,
            state: state(&format!("kept {id}")),
        });
        Message::Kept(kept.collect())
    }

    #[test]
    fn sockets_passed_ahead_are_resumed_when_kept_and_closed_otherwise() {
        let mut incoming = Incoming::default();
        assert!(incoming.take(ahead(&[1, 2, 3]), fds(3)).unwrap().is_none());
        // Accepted after the sockets went ahead: comes whole.
        let whole = Message::Sessions(vec![state("new")]);
        assert!(incoming.take(whole, fds(1)).unwrap().is_none());
        // 2 closed before the stop: not kept.
        assert!(incoming.take(kept(&[3, 1]), Vec::new()).unwrap().is_none());
        let other = incoming.take(Message::Ready, Vec::new()).unwrap();
        assert!(matches!(other, Some((Message::Ready, _))));
        let sessions = incoming.finish(3).unwrap();
        let listeners: Vec<_> = sessions.iter().map(|s| s.state.listener.as_str()).collect();
        assert_eq!(listeners, ["new", "kept 3", "kept 1"]);
    }

    #[test]
    fn inconsistent_sessions_are_refused() {
        let mut incoming = Incoming::default();
        assert!(
            incoming.take(kept(&[7]), Vec::new()).is_err(),
            "never ahead"
        );
        assert!(incoming.take(ahead(&[1]), fds(1)).unwrap().is_none());
        assert!(incoming.take(ahead(&[1]), fds(1)).is_err(), "twice");
        // Descriptors and sessions that do not pair up are not session messages.
        assert!(incoming.take(ahead(&[4, 5]), fds(1)).unwrap().is_some());
        let whole = Message::Sessions(vec![state("a")]);
        assert!(incoming.take(whole, Vec::new()).unwrap().is_some());
        let mut incoming = Incoming::default();
        assert!(incoming.take(ahead(&[1]), fds(1)).unwrap().is_none());
        assert!(incoming.take(kept(&[1]), Vec::new()).unwrap().is_none());
        assert!(incoming.finish(2).is_err(), "one fewer than announced");
    }
}
