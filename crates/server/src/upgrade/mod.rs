//! Hot upgrade: a new binary takes over the listening sockets and every client connection of
//! the running server, over a Unix socket in the data directory.
//!
//! The conversation (old = the running process, new = the binary it starts):
//!
//! ```text
//! old: listen on <data dir>/upgrade.sock (0600), start the new binary with POLYKV_HANDOVER set
//! new → Hello            (old still serving; a data format it cannot read: Failed instead)
//! old → Proceed
//! old → Ahead…           (handover version 2, old still serving, while it checkpoints the
//!                        store) every session's socket, by session id, up to 250 a frame
//! old:                   stops accepting, takes the idle sessions, stops the others at
//!                        a frame boundary, exports their state, the lock table; (cluster
//!                        mode: stops the Raft node); syncs and closes the engine
//! old → DirLock, Listener…, Locks, Kept…, Idle…, Sessions…, Sent  (descriptors over
//!                        SCM_RIGHTS, up to 250 a frame); Kept: the state of the stopped
//!                        sessions whose socket went ahead, Idle: the idle time of the taken
//!                        ones (an id in neither was closed meanwhile); Sessions: those
//!                        accepted since, with their sockets (version 1: every session). The
//!                        new process opens the store from Locks on
//! new: opens the engine, prepares every listener and the sessions with work waiting, gated
//!      (cluster mode: nothing: the Raft node must start after the commit) → Ready
//! old → Commit           and exits 0; the new process opens the gate (cluster mode: starts
//!                        the Raft node and the listeners) and prepares the idle sessions
//! ```
//!
//! Any failure or timeout before the commit: the old process kills the new one and resumes the
//! same state itself (rollback): the sessions it stopped go on, the listening sockets were never
//! closed. `wire` is the message format, `socket` the private socket and descriptor passing,
//! `carry` the state in a process, `old` and `new` the two sides, `control` the request and
//! status files of `polykv upgrade`.

pub mod carry;
pub mod control;
pub mod new;
pub mod old;
pub mod socket;
pub mod wire;

use polykv_engine::{Command, Durability, Engine};

/// The handover socket, in the data directory.
pub const SOCKET_FILE: &str = "upgrade.sock";
/// Set (to the socket's path) in the environment of the new binary: take over, do not start.
pub const HANDOVER_ENV: &str = "POLYKV_HANDOVER";
/// Set with [`HANDOVER_ENV`]: the newest handover format the old process speaks (absent: 1).
pub const HANDOVER_VERSION_ENV: &str = "POLYKV_HANDOVER_VERSION";

/// Takes the carried locks again, for the same holders (their connections were carried too).
pub fn restore_locks(engine: &Engine, locks: &[wire::HeldLock]) {
    for lock in locks {
        let command = Command::Lock {
            name: bytes::Bytes::copy_from_slice(&lock.name),
            holder: lock.holder,
            deadline: lock.deadline,
        };
        if let Err(e) = engine.submit(command, Durability::Memory) {
            tracing::error!(error = %e, "upgrade: a carried lock cannot be restored");
        }
    }
}
