//! jsonkv codec: see `shared/protocols/jsonkv.md`.
//!
//! Three things share this module:
//! - the 16-byte framing of §2 (`version, type, length, reserve`, then `length - 16` bytes of
//!   JSON), used by jsonkv over TCP and UDP and by the jsonagent discovery service;
//! - the jsonkv request and response objects of §3 and the JSON-RPC 2.0 mapping of §6;
//! - the jsonagent messages of §7.
//!
//! JSON is parsed with `serde_json`, but objects are walked member by member on the raw text
//! (see `json::members`) so that member order is known and the request `id` can be echoed in its
//! exact textual form (`1.0` stays `1.0`), which a parsed `serde_json::Value` cannot promise.

use bytes::{BufMut, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::{be_u32, ClientCodec, Decoded, Reject, ServerCodec};

/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// Default largest frame (header + JSON), TCP and HTTP body.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Largest UDP reply datagram (§2.2).
pub const MAX_UDP_DATAGRAM: usize = 65_507;
/// Default longest key, in UTF-8 bytes.
pub const DEFAULT_MAX_KEY: usize = 1024;
/// Default longest value, in UTF-8 bytes.
pub const DEFAULT_MAX_VALUE: usize = 65_536;
/// Default deepest JSON nesting.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Largest reply frame a client accepts by default: a batch of gets can exceed the request limit.
pub const DEFAULT_CLIENT_MAX_FRAME: usize = 64 << 20;
/// The only protocol version, in `"jsonkv"` and `"jsonagent"`.
pub const VERSION: &str = "1.0";
/// Longest agent `address` (§7.1).
pub const MAX_AGENT_ADDRESS: usize = 255;

/// The configurable limits of §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included (TCP) or HTTP body.
    pub max_frame: usize,
    pub max_key: usize,
    pub max_value: usize,
    /// Deepest nesting of arrays and objects; the top-level value is depth 1.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

mod agent;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;
mod json;
mod kv;
mod reply;
mod request;
mod rpc;

pub use agent::*;
pub use frame::*;
#[cfg(any(test, feature = "fuzzing"))]
pub use fuzz::*;
use json::*;
pub use json::{escapes, needs_escape, Id};
pub use kv::*;
pub use reply::*;
pub use request::*;
pub use rpc::*;

#[cfg(test)]
mod tests;
