//! nmdb's configuration section, `[nmdb]`.

use serde::{Deserialize, Serialize};

use crate::config::{Listener, SessionSettings};

crate::settings! {
    /// nmdb over TCP and UDP (nmdb.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct NmdbConfig {
        /// The TCP listener; the UDP socket binds to the same address.
        /// `addr`: nmdb listen address, TCP and UDP (empty = bind)
        #[serde(flatten)]
        pub listener: Listener = Listener::new(26010, "nmdb"),
        /// Serve nmdb over UDP
        pub udp_enabled: bool = true,
        /// nmdb UDP port
        pub udp_port: u16 = 26010,
        /// Start in read-only mode (SET, DEL, CAS, INCR refused)
        ///
        /// SIGUSR1 turns it on at run time and the admin API turns it off.
        pub read_only: bool = false,
        /// The TCP connections' limits.
        /// `idle_timeout_secs`: Close connections idle this long (0 = never)
        #[serde(flatten)]
        pub session: SessionSettings = SessionSettings::new(0, 60),
    }
}
