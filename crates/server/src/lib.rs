//! The polykv daemon: configuration, listeners, sessions, protocol services, admin HTTP,
//! metrics, logging and shutdown.
//!
//! Layout: `config` and `cli` (settings: the daemon's own, the listener settings every protocol
//! shares, the reference generated from the settings' doc comments), `session` (the TCP/UDP
//! frameworks every protocol uses), `runtime` (what the protocols start on: binding, the engine,
//! the task set, the start-up error), `services/` (one wing per protocol: its service, its
//! configuration section and its start-up, and the one list of protocols), `admin` and `metrics`
//! (the control plane), `server` (start-up and shutdown).

use std::sync::atomic::{AtomicBool, Ordering};

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod format;
pub mod logging;
pub mod metrics;
mod raw_socket;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod services;
pub mod session;
pub mod submit;
pub mod topology;
pub mod upgrade;

pub use runtime::ServerError;
pub use server::run;

/// A switch the protocols, SIGUSR1 and the admin API share (nmdb's read-only mode).
#[derive(Debug, Default)]
pub struct ReadOnly(AtomicBool);

impl ReadOnly {
    pub fn new(on: bool) -> Self {
        ReadOnly(AtomicBool::new(on))
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
}
