//! smalld's configuration section, `[smalld]`.

use serde::{Deserialize, Serialize};

use crate::config::Listener;

crate::settings! {
    /// smalld over TCP (smalld.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct SmalldConfig {
        /// The TCP listener.
        #[serde(flatten)]
        pub listener: Listener = Listener::new(4121, "smalld"),
        /// Secret key, 0 to 4294967295 (empty = generated into DATA_DIR/smalld.key)
        ///
        /// An unsigned 32-bit number; generated at first start and kept when empty.
        pub secret_key: String = String::new(),
        /// Close a connection whose request is not complete after this long
        pub request_timeout_secs: u64 = 5,
        /// Allow the run request (inet, hosts, service)
        pub run_enabled: bool = true,
        /// Time limit of a run request's program
        pub run_timeout_ms: u64 = 2000,
        /// Read and discard input this long after the reply before closing
        pub drain_ms: u64 = 1000,
        /// Most names that can be stored (0 = unlimited)
        pub max_names: u64 = 0,
        /// Where the request log goes: stdout, stderr or off
        pub request_log: RequestLog = RequestLog::Stdout,
    }
}

crate::choice! {
    /// Where smalld's request log goes.
    pub enum RequestLog ("smalld.request_log") {
        Stdout = "stdout",
        Stderr = "stderr",
        Off = "off",
    }
}

impl SmalldConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.secret_key.is_empty() && self.secret_key.trim().parse::<u32>().is_err() {
            return Err(format!(
                "smalld.secret_key {:?}: expected a number from 0 to 4294967295",
                self.secret_key
            ));
        }
        Ok(())
    }
}
