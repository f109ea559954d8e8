//! Hot upgrade: a new binary takes over the listening sockets and every client connection of
//! the running server, over a Unix socket in the data directory.
//!
//! `wire` is the versioned, size-bounded message format; `socket` the private socket and the
//! descriptor passing.

pub mod socket;
pub mod wire;
