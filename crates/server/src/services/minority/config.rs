//! minority's configuration section, `[minority]`.

use serde::{Deserialize, Serialize};

use crate::config::{Listener, SessionSettings};

crate::settings! {
    /// minority over TCP (minority.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct MinorityConfig {
        /// The TCP listener.
        #[serde(flatten)]
        pub listener: Listener = Listener::new(8000, "minority"),
        /// Largest frame body in bytes (bigger: error reply, then close)
        pub max_body: u64 = 1 << 20,
        /// Notify subscriptions per connection
        pub max_subscriptions: u64 = 1024,
        /// Pushes queued per subscription before coalescing to the latest per key
        pub push_queue: u64 = 4096,
        /// Acknowledge set/delete once applied instead of once on disk
        ///
        /// Async instead of Sync durability.
        pub async_acks: bool = false,
        /// The connections' limits.
        #[serde(flatten)]
        pub session: SessionSettings = SessionSettings::new(90, 60),
    }
}
