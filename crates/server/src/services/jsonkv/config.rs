//! jsonkv's configuration section, `[jsonkv]`.

use serde::{Deserialize, Serialize};

use crate::config::Listener;

crate::settings! {
    /// jsonkv over TCP, UDP and JSON-RPC, and the jsonagent discovery service (jsonkv.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct JsonkvConfig {
        /// The TCP listener; UDP, JSON-RPC and the agent bind to the same address.
        /// `addr`: Listen address of jsonkv TCP, UDP, JSON-RPC and the agent (empty = bind)
        /// `keyspace`: Engine keyspace jsonkv TCP, UDP and JSON-RPC read and write
        #[serde(flatten)]
        pub listener: Listener = Listener::new(15001, "jsonkv"),
        /// Serve jsonkv over UDP
        pub udp_enabled: bool = true,
        /// jsonkv UDP port
        pub udp_port: u16 = 15002,
        /// Serve JSON-RPC 2.0 over HTTP
        pub rpc_enabled: bool = true,
        /// JSON-RPC HTTP port
        pub rpc_port: u16 = 15003,
        /// Serve the jsonagent discovery service
        pub agent_enabled: bool = true,
        /// jsonagent TCP port
        pub agent_port: u16 = 15000,
        /// Largest frame (16-byte header + JSON) and largest HTTP body, in bytes
        ///
        /// Over TCP and the agent.
        pub max_frame: u64 = 1 << 20,
        /// Longest key in UTF-8 bytes (longer: 1002)
        pub max_key: u64 = 1024,
        /// Longest value in UTF-8 bytes (longer: 1001)
        pub max_value: u64 = 65_536,
        /// Deepest JSON nesting accepted, 1 to 128
        pub max_depth: u64 = 64,
        /// Value bytes one batch may return; later gets in it answer 1024
        pub max_batch_response: u64 = 64 << 20,
        /// Close TCP and HTTP connections that complete no request this long (0 = never)
        ///
        /// A half-sent frame gets no longer (jsonkv has no separate partial-frame timeout).
        pub idle_timeout_secs: u64 = 60,
        /// Unsent reply bytes per TCP connection before reading pauses
        pub max_output_bytes: u64 = 4 << 20,
        /// Acknowledge put/delete once applied instead of once on disk
        ///
        /// Async instead of Sync durability.
        pub async_acks: bool = false,
        /// Close agent connections silent this long, dropping their registration (0 = never)
        pub agent_idle_timeout_secs: u64 = 20,
        /// Most servers registered with the agent at once (more: 901)
        pub agent_max_registrations: u64 = 1024,
        /// Address the agent lists for this node (empty = local IP of the agent connection)
        pub advertise_addr: String = String::new(),
    }
}

impl JsonkvConfig {
    pub fn validate(&self) -> Result<(), String> {
        // The header's length is a u32 and must hold at least the header itself.
        if self.max_frame < 16 || self.max_frame > u64::from(u32::MAX) {
            return Err("jsonkv.max_frame must be from 16 to 4294967295".into());
        }
        if self.max_key == 0 || self.max_key > polykv_engine::MAX_KEY_LEN as u64 {
            return Err(format!(
                "jsonkv.max_key must be from 1 to {}",
                polykv_engine::MAX_KEY_LEN
            ));
        }
        // serde_json refuses deeper input on its own (at 128), which would read as malformed.
        if !(1..=128).contains(&self.max_depth) {
            return Err("jsonkv.max_depth must be from 1 to 128".into());
        }
        Ok(())
    }
}
