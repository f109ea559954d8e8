//! OpenCluster's configuration section, `[opencluster]`.

use serde::{Deserialize, Serialize};

use crate::config::{Listener, SessionSettings};

crate::settings! {
    /// OpenCluster over TCP (opencluster.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct OpenClusterConfig {
        /// The TCP listener.
        #[serde(flatten)]
        pub listener: Listener = Listener::new(13600, "opencluster"),
        /// Largest message payload in bytes (bigger: failinfo 3, then close)
        pub max_payload: u64 = 1 << 20,
        /// Locks one connection may hold at once (more: failinfo 6)
        pub max_locks: u64 = 1024,
        /// At shutdown, how long to wait for clients to ack the goodbye push
        pub goodbye_wait_ms: u64 = 2000,
        /// Bucket mask announced in hashmasks: 2^k - 1, k <= 16 (default 15 = 16 buckets)
        pub mask: u32 = 0x0F,
        /// The connections' limits.
        /// `idle_timeout_secs`: Close connections that send no message this long; their locks are released (0 = never)
        /// `partial_frame_timeout_secs`: Close connections that leave a message half-sent this long (0 = never)
        #[serde(flatten)]
        pub session: SessionSettings = SessionSettings::new(60, 60),
    }
}

impl OpenClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.mask > 0xFFFF || (self.mask & (self.mask + 1)) != 0 {
            return Err(format!(
                "opencluster.mask {}: expected 2^k - 1 with k from 0 to 16 (0, 1, 3, 7, 15, ..., 65535)",
                self.mask
            ));
        }
        if self.max_payload > u64::from(u32::MAX) {
            return Err("opencluster.max_payload must fit in 32 bits".into());
        }
        Ok(())
    }
}
