//! The new process's side: connect to the running server, greet it, take the data directory
//! lock, the listeners, the lock table and the sessions, open the store, report ready and wait
//! for the commit. Nothing is served and nothing in the data directory is written before the
//! commit, so a failure leaves the old process free to resume.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use polykv_engine::Engine;

use super::carry::{Carried, CarriedListener, Resumable};
use super::socket;
use super::wire::Message;
use crate::config::Config;

/// What the new process starts from.
pub struct Taken {
    pub dir_lock: File,
    pub carried: Carried,
    pub engine: Engine,
}

pub async fn take_over(config: &Config, path: &Path) -> Result<Taken, String> {
    let timeout = Duration::from_secs(config.upgrade_timeout_secs.max(1));
    // The old process stops its sessions between our greeting and its first descriptor.
    let stop_wait = timeout + Duration::from_secs(config.shutdown_timeout_secs);
    let path = path.to_path_buf();
    let data_dir = config.data_dir.clone();
    let received =
        tokio::task::spawn_blocking(move || receive(&path, &data_dir, timeout, stop_wait))
            .await
            .map_err(|e| format!("handover task failed: {e}"))??;
    let (stream, dir_lock, carried) = received;
    let opening = std::time::Instant::now();
    let engine = match crate::server::open_engine_waiting(config).await {
        Ok(engine) => engine,
        Err(e) => {
            let reason = e.to_string();
            let _ = socket::send(
                &stream,
                &Message::Failed {
                    reason: reason.clone(),
                },
                None,
            );
            return Err(reason);
        }
    };
    tracing::info!(
        ms = opening.elapsed().as_millis() as u64,
        "upgrade: store opened"
    );
    let committed = tokio::task::spawn_blocking(move || {
        socket::send(&stream, &Message::Ready, None).map_err(|e| e.to_string())?;
        match socket::recv(&stream).map_err(|e| e.to_string())? {
            (Message::Commit, None) => Ok(()),
            (other, _) => Err(format!("expected the commit, got {other:?}")),
        }
    })
    .await
    .map_err(|e| format!("handover task failed: {e}"))
    .and_then(|r| r);
    if let Err(reason) = committed {
        engine.close();
        return Err(reason);
    }
    Ok(Taken {
        dir_lock,
        carried,
        engine,
    })
}

type Received = (UnixStream, File, Carried);

fn receive(
    path: &Path,
    data_dir: &Path,
    timeout: Duration,
    stop_wait: Duration,
) -> Result<Received, String> {
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
        let _ = socket::send(
            &stream,
            &Message::Failed {
                reason: reason.clone(),
            },
            None,
        );
        reason
    };
    // A data directory this binary cannot read: refused before anything is stopped.
    crate::format::check(data_dir).map_err(|e| fail(e.to_string()))?;
    let hello = Message::Hello {
        data_format: crate::format::DATA_FORMAT,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    socket::send(&stream, &hello, None).map_err(|e| e.to_string())?;
    match socket::recv(&stream).map_err(|e| e.to_string())? {
        (Message::Proceed, None) => {}
        (Message::Refused { reason }, _) => return Err(format!("refused: {reason}")),
        (other, _) => return Err(fail(format!("expected to proceed, got {other:?}"))),
    }
    stream
        .set_read_timeout(Some(stop_wait))
        .map_err(|e| e.to_string())?;
    let mut dir_lock = None;
    let mut carried = Carried::default();
    loop {
        let (message, fd) = socket::recv(&stream).map_err(|e| e.to_string())?;
        match (message, fd) {
            (Message::DirLock, Some(fd)) => dir_lock = Some(File::from(fd)),
            (Message::Listener { name, udp }, Some(fd)) => {
                carried.listeners.push(CarriedListener { name, udp, fd })
            }
            (Message::Locks { locks }, None) => carried.locks = locks,
            (Message::Session(state), Some(fd)) => carried.sessions.push(Resumable { fd, state }),
            (
                Message::Sent {
                    listeners,
                    sessions,
                },
                None,
            ) => {
                let got = (carried.listeners.len(), carried.sessions.len());
                if got != (listeners as usize, sessions as usize) {
                    return Err(fail(format!(
                        "sent {listeners} listeners and {sessions} sessions, got {got:?}"
                    )));
                }
                break;
            }
            (other, fd) => {
                return Err(fail(format!(
                    "unexpected {other:?} ({} descriptor)",
                    if fd.is_some() { "with a" } else { "without" }
                )))
            }
        }
    }
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let dir_lock = dir_lock.ok_or_else(|| fail("no data directory lock".into()))?;
    Ok((stream, dir_lock, carried))
}
