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
use super::wire::{self, Message, SessionState};
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

/// A socket passed ahead, until its state comes.
struct Ahead {
    fd: OwnedFd,
    listener: String,
}

/// Sessions as they arrive: sockets passed ahead (version 2), by id, until their state comes
/// ([`Message::Kept`], [`Message::Idle`]), and sessions complete with state and socket.
#[derive(Default)]
struct Incoming {
    ahead: HashMap<u64, Ahead>,
    /// Sessions whose socket went ahead, with their state now.
    kept: Vec<Resumable>,
    /// Sessions that came whole (accepted after the sockets went ahead, or version 1).
    whole: Vec<Resumable>,
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
                    let listener = session.listener;
                    if self
                        .ahead
                        .insert(session.id, Ahead { fd, listener })
                        .is_some()
                    {
                        return Err(format!("session {} passed ahead twice", session.id));
                    }
                }
            }
            Message::Kept(kept) if fds.is_empty() => {
                self.kept.reserve(kept.len());
                for session in kept {
                    let fd = self.claim(session.id)?.fd;
                    let state = session.state;
                    self.kept.push(Resumable {
                        fd,
                        state,
                        waiting: None,
                    });
                }
            }
            Message::Idle(idle) if fds.is_empty() => {
                self.kept.reserve(idle.len());
                for session in idle {
                    let Ahead { fd, listener } = self.claim(session.id)?;
                    let state = SessionState {
                        listener,
                        input: Vec::new(),
                        idle_ms: session.idle_ms,
                        partial_ms: None,
                        service: Vec::new(),
                    };
                    self.kept.push(Resumable {
                        fd,
                        state,
                        waiting: None,
                    });
                }
            }
            Message::Sessions(states) if states.len() == fds.len() => {
                self.whole
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

    fn claim(&mut self, id: u64) -> Result<Ahead, String> {
        self.ahead
            .remove(&id)
            .ok_or_else(|| format!("session {id} kept but not passed ahead"))
    }

    /// Every session, once the old process said how many it sent, each marked with whether a
    /// request waits in its socket (one poll(2) over them all). Sockets passed ahead and not
    /// kept belong to connections closed meanwhile: dropped (closed) here.
    fn finish(self, count: u32) -> Result<Vec<Resumable>, String> {
        let Incoming { ahead, kept, whole } = self;
        if kept.len() + whole.len() != count as usize {
            return Err(format!(
                "sent {count} sessions, received {}",
                kept.len() + whole.len()
            ));
        }
        if !ahead.is_empty() {
            tracing::info!(
                closed = ahead.len(),
                "upgrade: connections passed ahead and closed before the stop"
            );
        }
        let mut sessions = kept;
        sessions.extend(whole);
        crate::session::mark_waiting(&mut sessions);
        Ok(sessions)
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
    let started = std::time::Instant::now();
    let mut first_us = None;
    loop {
        let (message, fds) = socket::recv(stream).map_err(|e| e.to_string())?;
        first_us.get_or_insert_with(|| started.elapsed().as_micros() as u64);
        match incoming.take(message, fds)? {
            None => {}
            Some((Message::Sent { sessions, .. }, fds)) if fds.is_empty() => {
                let sent_us = started.elapsed().as_micros() as u64;
                let sessions = incoming.finish(sessions)?;
                tracing::info!(
                    first_us,
                    sent_us,
                    polled_us = started.elapsed().as_micros() as u64,
                    "upgrade: sessions received after the lock table"
                );
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
    use crate::upgrade::wire::{AheadSession, IdleSession, KeptSession};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

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
        let ahead = ids.iter().map(|&id| AheadSession {
            id,
            listener: format!("ahead {id}"),
        });
        Message::Ahead(ahead.collect())
    }

    fn kept(ids: &[u64]) -> Message {
        let kept = ids.iter().map(|&id| KeptSession {
            id,
            state: state(&format!("kept {id}")),
        });
        Message::Kept(kept.collect())
    }

    fn idle(ids: &[u64]) -> Message {
        let idle = ids.iter().map(|&id| IdleSession {
            id,
            idle_ms: id * 10,
        });
        Message::Idle(idle.collect())
    }

    #[test]
    fn sockets_passed_ahead_are_resumed_when_kept_and_closed_otherwise() {
        let mut incoming = Incoming::default();
        assert!(incoming
            .take(ahead(&[1, 2, 3, 4]), fds(4))
            .unwrap()
            .is_none());
        // Accepted after the sockets went ahead: comes whole.
        let whole = Message::Sessions(vec![state("new")]);
        assert!(incoming.take(whole, fds(1)).unwrap().is_none());
        // 2 closed before the stop: neither kept nor idle.
        assert!(incoming.take(kept(&[3, 1]), Vec::new()).unwrap().is_none());
        assert!(incoming.take(idle(&[4]), Vec::new()).unwrap().is_none());
        let other = incoming.take(Message::Ready, Vec::new()).unwrap();
        assert!(matches!(other, Some((Message::Ready, _))));
        let sessions = incoming.finish(4).unwrap();
        let states: Vec<_> = sessions
            .iter()
            .map(|s| (s.state.listener.as_str(), s.state.idle_ms))
            .collect();
        // An idle session resumes under the listener it went ahead with.
        assert_eq!(
            states,
            [("kept 3", 0), ("kept 1", 0), ("ahead 4", 40), ("new", 0)]
        );
    }

    #[test]
    fn a_request_waiting_in_a_socket_passed_ahead_is_seen() {
        let (ours, peers): (Vec<_>, Vec<_>) = (0..3).map(|_| UnixStream::pair().unwrap()).unzip();
        let mut incoming = Incoming::default();
        let fds = ours.into_iter().map(OwnedFd::from).collect();
        assert!(incoming.take(ahead(&[5, 6, 7]), fds).unwrap().is_none());
        (&peers[1]).write_all(b"request").unwrap();
        assert!(incoming
            .take(idle(&[5, 6, 7]), Vec::new())
            .unwrap()
            .is_none());
        let sessions = incoming.finish(3).unwrap();
        let waiting: Vec<_> = sessions
            .iter()
            .map(|s| (s.state.listener.as_str(), s.waiting))
            .collect();
        assert_eq!(
            waiting,
            [
                ("ahead 5", Some(false)),
                ("ahead 6", Some(true)),
                ("ahead 7", Some(false))
            ]
        );
    }

    #[test]
    fn inconsistent_sessions_are_refused() {
        let mut incoming = Incoming::default();
        assert!(
            incoming.take(kept(&[7]), Vec::new()).is_err(),
            "never ahead"
        );
        assert!(
            incoming.take(idle(&[8]), Vec::new()).is_err(),
            "never ahead"
        );
        assert!(incoming.take(ahead(&[1]), fds(1)).unwrap().is_none());
        assert!(incoming.take(ahead(&[1]), fds(1)).is_err(), "twice");
        // Descriptors and sessions that do not pair up are not session messages.
        assert!(incoming.take(ahead(&[4, 5]), fds(1)).unwrap().is_some());
        let whole = Message::Sessions(vec![state("a")]);
        assert!(incoming.take(whole, Vec::new()).unwrap().is_some());
        assert!(
            incoming.take(idle(&[1]), fds(1)).unwrap().is_some(),
            "no fds"
        );
        let mut incoming = Incoming::default();
        assert!(incoming.take(ahead(&[1]), fds(1)).unwrap().is_none());
        assert!(incoming.take(kept(&[1]), Vec::new()).unwrap().is_none());
        assert!(
            incoming.take(idle(&[1]), Vec::new()).is_err(),
            "kept already"
        );
        assert!(incoming.finish(2).is_err(), "one fewer than announced");
    }
}
