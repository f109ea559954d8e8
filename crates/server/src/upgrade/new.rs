//! The new process's side: connect to the running server, greet it, take the data directory
//! lock, the listeners, the lock table and the sessions, open the store; then (the caller)
//! prepare every listener and session, report ready and wait for the commit. Nothing is
//! served and nothing in the data directory is written before the commit, so a failure leaves
//! the old process free to resume.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use polykv_engine::Engine;

use super::carry::{Carried, CarriedListener, Resumable};
use super::socket;
use super::wire::Message;
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
}

impl Commit {
    /// Sends Ready (everything is prepared, nothing served) and waits for the commit.
    pub async fn commit(self) -> Result<(), String> {
        let stream = self.stream;
        blocking(move || {
            socket::send(&stream, &Message::Ready, &[]).map_err(|e| e.to_string())?;
            match socket::recv(&stream).map_err(|e| e.to_string())? {
                (Message::Commit, fds) if fds.is_empty() => Ok(()),
                (other, _) => Err(format!("expected the commit, got {other:?}")),
            }
        })
        .await
    }

    /// Tells the old process that preparing failed (it rolls back).
    pub fn fail(self, reason: &str) {
        let _ = socket::send(&self.stream, &failed(reason), &[]);
    }
}

pub async fn take_over(config: &Config, path: &Path) -> Result<Received, String> {
    let timeout = Duration::from_secs(config.upgrade_timeout_secs.max(1));
    // Room for every connection and listener the old process may pass, made while it serves.
    reserve_descriptors(config.max_connections as usize + 1024);
    // The old process stops its sessions between our greeting and its first descriptor.
    let stop_wait = timeout + Duration::from_secs(config.shutdown_timeout_secs);
    let (path, data_dir) = (path.to_path_buf(), config.data_dir.clone());
    let (stream, dir_lock, mut carried) =
        blocking(move || receive_first(&path, &data_dir, timeout, stop_wait)).await?;
    // The lock table comes after the old process closed the store: open it while the
    // sessions arrive.
    let receiving = tokio::task::spawn_blocking(move || {
        let sessions = receive_sessions(&stream);
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
            let _ = socket::send(&stream, &failed(&reason), &[]);
            return Err(reason);
        }
    };
    carried.sessions = sessions;
    Ok(Received {
        dir_lock,
        carried,
        engine,
        commit: Commit { stream },
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

type First = (UnixStream, File, Carried);

/// Greets the old process and receives up to the lock table: the directory lock and the
/// listeners.
fn receive_first(
    path: &Path,
    data_dir: &Path,
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
        let _ = socket::send(&stream, &failed(&reason), &[]);
        reason
    };
    // A data directory this binary cannot read: refused before anything is stopped.
    crate::format::check(data_dir).map_err(|e| fail(e.to_string()))?;
    let hello = Message::Hello {
        data_format: crate::format::DATA_FORMAT,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    socket::send(&stream, &hello, &[]).map_err(|e| e.to_string())?;
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
    loop {
        match socket::recv(&stream).map_err(|e| e.to_string())? {
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
    Ok((stream, dir_lock, carried))
}

/// Receives the sessions, batch by batch, until the count that closes them.
fn receive_sessions(stream: &UnixStream) -> Result<Vec<Resumable>, String> {
    let mut sessions = Vec::new();
    loop {
        match socket::recv(stream).map_err(|e| e.to_string())? {
            (Message::Sessions(states), fds) if states.len() == fds.len() => {
                sessions.extend(states.into_iter().zip(fds).map(|(state, fd)| Resumable {
                    fd,
                    state,
                    waiting: None,
                }))
            }
            (
                Message::Sent {
                    sessions: count, ..
                },
                fds,
            ) if fds.is_empty() => {
                if sessions.len() != count as usize {
                    return Err(format!(
                        "sent {count} sessions, received {}",
                        sessions.len()
                    ));
                }
                crate::session::mark_waiting(&mut sessions);
                return Ok(sessions);
            }
            (other, fds) => {
                return Err(format!(
                    "unexpected {other:?} with {} descriptors",
                    fds.len()
                ))
            }
        }
    }
}
