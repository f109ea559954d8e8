//! What a handover carries inside a process: sessions stopped at a frame boundary on the way
//! out, and listeners and sessions to resume on the way in (in the new process, or in the old
//! one after a rollback: both start from the same [`Carried`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::wire::{HeldLock, SessionState};

/// A service's state, taken once every session has stopped (so nothing changes under it).
pub trait ExportState: Send {
    fn export(&mut self) -> Result<Vec<u8>, String>;
}

/// A session stopped for a handover, its service still alive: its state is exported only
/// after all sessions have stopped, so no write lands between a subscriber's export and the
/// handover (no push is lost).
pub struct Stopped {
    pub listener: &'static str,
    pub stream: std::net::TcpStream,
    pub input: Vec<u8>,
    pub idle: Duration,
    pub partial: Option<Duration>,
    pub service: Box<dyn ExportState>,
}

/// A connection to resume: its socket and its state.
pub struct Resumable {
    pub fd: OwnedFd,
    pub state: SessionState,
}

/// A listening socket carried over, by name.
pub struct CarriedListener {
    pub name: String,
    pub udp: bool,
    pub fd: OwnedFd,
}

/// Everything a process starts from when it resumes a handover.
#[derive(Default)]
pub struct Carried {
    pub listeners: Vec<CarriedListener>,
    pub sessions: Vec<Resumable>,
    pub locks: Vec<HeldLock>,
}

/// The handover's state shared by the listeners and sessions of one serving generation.
#[derive(Default)]
pub struct Hub {
    exporting: AtomicBool,
    stopped: Mutex<Vec<Stopped>>,
    listeners: Mutex<HashMap<String, (bool, OwnedFd)>>,
    sessions: Mutex<HashMap<String, Vec<Resumable>>>,
}

impl Hub {
    /// A hub that hands `carried`'s listeners and sessions to the listeners that claim them.
    pub fn resuming(carried: Carried) -> Hub {
        let hub = Hub::default();
        {
            let mut listeners = hub.listeners.lock();
            for l in carried.listeners {
                listeners.insert(l.name, (l.udp, l.fd));
            }
            let mut sessions = hub.sessions.lock();
            for s in carried.sessions {
                sessions
                    .entry(s.state.listener.clone())
                    .or_default()
                    .push(s);
            }
        }
        hub
    }

    /// The carried listening socket named `name`, if any.
    pub fn take_listener(&self, name: &str, udp: bool) -> Option<OwnedFd> {
        let mut listeners = self.listeners.lock();
        match listeners.remove(name) {
            Some((kind, fd)) if kind == udp => Some(fd),
            Some(other) => {
                listeners.insert(name.to_string(), other);
                None
            }
            None => None,
        }
    }

    /// The carried sessions of listener `name`.
    pub fn take_sessions(&self, name: &str) -> Vec<Resumable> {
        self.sessions.lock().remove(name).unwrap_or_default()
    }

    /// What no listener claimed (its configuration changed): closed, and logged.
    pub fn drop_unclaimed(&self) {
        for (name, _) in self.listeners.lock().drain() {
            tracing::warn!(listener = %name, "carried listener not in the configuration; closed");
        }
        for (name, sessions) in self.sessions.lock().drain() {
            tracing::warn!(listener = %name, count = sessions.len(), "carried sessions without their listener; closed");
        }
    }

    /// Sessions stop for a handover instead of saying goodbye when they see the shutdown.
    pub fn start_exporting(&self) {
        self.exporting.store(true, Ordering::SeqCst);
    }

    pub fn exporting(&self) -> bool {
        self.exporting.load(Ordering::SeqCst)
    }

    pub fn deposit(&self, stopped: Stopped) {
        self.stopped.lock().push(stopped);
    }

    pub fn take_stopped(&self) -> Vec<Stopped> {
        std::mem::take(&mut *self.stopped.lock())
    }
}
