//! The settings every protocol's listener shares, flattened into each protocol's section (so
//! their keys stay `nmdb.port`, `minority.keyspace`, ...). Their docs name the protocol as
//! `{name}`; a protocol overrides a line in the doc comment of its flattened field.

use serde::{Deserialize, Serialize};

use crate::session::SessionLimits;

crate::settings! {
    /// Where a protocol listens and which keyspace it serves.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub flattened struct Listener {
        /// Serve {name} over TCP
        pub enabled: bool,
        /// {name} listen address (empty = bind)
        pub addr: String,
        /// {name} TCP port
        pub port: u16,
        /// Engine keyspace {name} reads and writes
        pub keyspace: String,
    }
}

impl Listener {
    /// An enabled listener on `port` of every address (`bind`), serving `keyspace`.
    pub fn new(port: u16, keyspace: &str) -> Self {
        Listener {
            enabled: true,
            addr: String::new(),
            port,
            keyspace: keyspace.into(),
        }
    }

    /// Refuses a keyspace name the engine would refuse; `section` is the protocol's section.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if !polykv_engine::valid_keyspace_name(&self.keyspace) {
            return Err(format!(
                "{section}.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.keyspace
            ));
        }
        Ok(())
    }
}

crate::settings! {
    /// The limits of a connection served by the shared session loop.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub flattened struct SessionSettings {
        /// Close connections that send no frame this long (0 = never)
        pub idle_timeout_secs: u64,
        /// Close connections that leave a frame half-sent this long (0 = never)
        pub partial_frame_timeout_secs: u64,
        /// Unsent reply bytes per connection before reading pauses
        ///
        /// The server stops reading a connection's requests until its replies drain below this.
        pub max_output_bytes: u64,
    }
}

impl SessionSettings {
    /// `idle_timeout_secs` and `partial_frame_timeout_secs` as given, 4 MiB of unsent replies.
    pub fn new(idle_timeout_secs: u64, partial_frame_timeout_secs: u64) -> Self {
        SessionSettings {
            idle_timeout_secs,
            partial_frame_timeout_secs,
            max_output_bytes: 4 << 20,
        }
    }

    pub fn limits(&self) -> SessionLimits {
        SessionLimits::from_secs(
            self.idle_timeout_secs,
            self.partial_frame_timeout_secs,
            self.max_output_bytes,
        )
    }
}
