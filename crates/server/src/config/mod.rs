//! Configuration: one TOML file, every field also settable by a CLI flag and an environment
//! variable. Precedence: flag > environment > file > default.
//!
//! Flags and variables are derived from the field paths, so no field can be forgotten:
//! `nmdb.port` is `--nmdb-port` and `POLYKV_NMDB_PORT`; `data_dir` is `--data-dir` and
//! `POLYKV_DATA_DIR`.
//!
//! Here: the daemon's own settings (`Config`, `[log]`, `[engine]`, `[admin]`) and their
//! checks; `listener` (the settings every protocol shares), `settings` (how a setting documents
//! itself), `reference` (the table of every setting), `load` (defaults, file, overrides). Each
//! protocol's section lives in its wing, `services/<protocol>/config.rs`.

use std::path::PathBuf;

mod cluster;
pub mod listener;
mod load;
mod reference;
pub mod settings;

use serde::{Deserialize, Serialize};

pub use cluster::{ClusterConfig, MAX_NODE_ID};
pub use listener::{Listener, SessionSettings};
pub use load::{Origin, Override};
pub use reference::{docs, fields, reference_markdown, Field};
pub use settings::Settings;

use crate::services::ProtocolsConfig;

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {field} (from {origin}): expected {expected}")]
    Value {
        field: String,
        value: String,
        origin: String,
        expected: &'static str,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

crate::settings! {
    /// The whole configuration: the daemon's own settings, then one section per protocol.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Config {
        /// Directory of the store, the journal and the lock file
        pub data_dir: PathBuf = PathBuf::from("./polykv-data"),
        /// Address every listener binds to unless it sets its own
        pub bind: String = "127.0.0.1".into(),
        /// Most client connections open at once, over all protocols
        pub max_connections: u32 = 10_000,
        /// Seconds to finish in-flight requests on SIGTERM/SIGINT
        ///
        /// Then the connections still open are closed.
        pub shutdown_timeout_secs: u64 = 10,
        /// Seconds a hot upgrade waits for the new binary at each step
        ///
        /// To connect and greet, then to open the store and report ready; past it the old
        /// process rolls back and keeps serving.
        pub upgrade_timeout_secs: u64 = 30,
        pub log: LogConfig = LogConfig::default(),
        pub engine: EngineSection = EngineSection::default(),
        pub admin: AdminConfig = AdminConfig::default(),
        pub cluster: ClusterConfig = ClusterConfig::default(),
        /// One section per protocol (`[nmdb]`, `[minority]`, ...), from the protocol list.
        #[serde(flatten)]
        pub protocols: ProtocolsConfig = ProtocolsConfig::default(),
    }
}

crate::settings! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct LogConfig {
        /// Log filter: error, warn, info, debug, trace, or tracing directives
        ///
        /// In `tracing` syntax: `info`, `debug`, `polykv_server=debug,info`.
        pub level: String = "info".into(),
        /// Log format: text or json
        ///
        /// `text` is human-readable.
        pub format: LogFormat = LogFormat::Text,
    }
}

crate::choice! {
    /// How log lines are written.
    pub enum LogFormat ("log.format") {
        /// Human-readable.
        Text = "text",
        /// One JSON object a line.
        Json = "json",
    }
}

crate::settings! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct EngineSection {
        /// Byte budget of the in-memory cache (0 = no cache)
        pub cache_bytes: u64 = polykv_engine::EngineConfig::default().cache_bytes as u64,
        /// Longest delay before an Async write is synced to disk
        pub sync_interval_ms: u64 =
            polykv_engine::EngineConfig::default().sync_interval.as_millis() as u64,
        /// How often expired entries and locks are reclaimed
        pub reaper_interval_ms: u64 =
            polykv_engine::EngineConfig::default().reaper_interval.as_millis() as u64,
        /// Events queued per watcher before coalescing to the latest per key
        pub watch_queue: u64 = polykv_engine::EngineConfig::default().watch_queue as u64,
        /// Store memtable per keyspace, at least 1 MiB (only metadata passes through it since the
        /// log took over); fixed when a keyspace is created
        pub memtable_bytes: u64 = polykv_engine::EngineConfig::default().memtable_bytes,
        /// Written data held in memory before a checkpoint moves it into the store (a checkpoint
        /// also starts once the log has taken four times as much since the last), at least 1 MiB
        pub checkpoint_bytes: u64 =
            polykv_engine::EngineConfig::default().log.checkpoint_bytes as u64,
        /// Longest time between checkpoints while anything is waiting for one
        pub checkpoint_interval_ms: u64 =
            polykv_engine::EngineConfig::default().log.checkpoint_interval.as_millis() as u64,
        /// Written data not yet checkpointed above which writers wait; at least twice
        /// checkpoint_bytes
        pub max_backlog_bytes: u64 =
            polykv_engine::EngineConfig::default().log.max_backlog_bytes as u64,
        /// Size at which a log segment file is sealed and a new one started, at least 1 MiB
        pub log_segment_bytes: u64 = polykv_engine::EngineConfig::default().log.segment_bytes,
        /// Make Sync writes durable with direct writes to the log's mirror file (io_uring,
        /// O_DIRECT) rather than an fdatasync of the log (in a cluster, the Raft log's too); falls
        /// back where unavailable
        pub direct_sync: bool = polykv_engine::EngineConfig::default().log.direct_sync,
        /// Write the log's active segment through a shared mapping (a flush is a copy) rather
        /// than with write(2) (one per batch of ready writers); see docs/performance.md
        pub log_mapped: bool = polykv_engine::EngineConfig::default().log.mapped_log,
    }
}

impl EngineSection {
    pub fn to_engine_config(&self) -> polykv_engine::EngineConfig {
        polykv_engine::EngineConfig {
            cache_bytes: self.cache_bytes as usize,
            sync_interval: std::time::Duration::from_millis(self.sync_interval_ms.max(1)),
            reaper_interval: std::time::Duration::from_millis(self.reaper_interval_ms.max(10)),
            watch_queue: self.watch_queue.max(1) as usize,
            memtable_bytes: self.memtable_bytes,
            log: polykv_engine::store::LogStoreConfig {
                checkpoint_bytes: self.checkpoint_bytes as usize,
                checkpoint_interval: std::time::Duration::from_millis(
                    self.checkpoint_interval_ms.max(10),
                ),
                max_backlog_bytes: self.max_backlog_bytes as usize,
                segment_bytes: self.log_segment_bytes,
                direct_sync: self.direct_sync,
                mapped_log: self.log_mapped,
            },
            ..polykv_engine::EngineConfig::default()
        }
    }
}

crate::settings! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AdminConfig {
        /// Serve the admin HTTP API (health, metrics)
        pub enabled: bool = true,
        /// Admin listen address (empty = bind)
        pub addr: String = String::new(),
        /// Admin HTTP port
        pub port: u16 = 26080,
        /// Bearer token for the admin API (required off loopback; generated if empty)
        ///
        /// Required when set; off loopback it is generated into `DATA_DIR/admin.token` if empty.
        pub token: String = String::new(),
    }
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.protocols.validate().map_err(ConfigError::Invalid)?;
        self.cluster.validate().map_err(ConfigError::Invalid)?;
        if self.engine.checkpoint_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "engine.checkpoint_bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.engine.max_backlog_bytes < 2 * self.engine.checkpoint_bytes {
            return Err(ConfigError::Invalid(
                "engine.max_backlog_bytes must be at least twice engine.checkpoint_bytes".into(),
            ));
        }
        if self.engine.log_segment_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "engine.log_segment_bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.engine.memtable_bytes < 1 << 20 {
            return Err(ConfigError::Invalid(
                "engine.memtable_bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `polykv config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The address a listener binds to: its own if set, else the global `bind`.
    pub fn listen_addr(&self, own: &str, port: u16) -> String {
        let host = if own.is_empty() { &self.bind } else { own };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_field_has_a_doc_flag_and_env() {
        let fields = fields();
        assert!(fields.len() >= 20);
        for f in &fields {
            assert!(!f.doc.is_empty(), "{} has no doc comment", f.path);
        }
        let port = fields.iter().find(|f| f.path == "nmdb.port").unwrap();
        assert_eq!(
            (port.flag.as_str(), port.env.as_str()),
            ("nmdb-port", "POLYKV_NMDB_PORT")
        );
        let dir = fields.iter().find(|f| f.path == "data_dir").unwrap();
        assert_eq!(
            (dir.flag.as_str(), dir.env.as_str()),
            ("data-dir", "POLYKV_DATA_DIR")
        );
        assert_eq!(docs().len(), fields.len(), "no stale docs");
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polykv.toml");
        std::fs::write(
            &path,
            "bind = \"0.0.0.0\"\n[nmdb]\nport = 1\nkeyspace = \"shared\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            &[Override {
                path: "nmdb.port".into(),
                value: "2".into(),
                origin: Origin::Env,
            }],
        )
        .unwrap();
        assert_eq!(config.bind, "0.0.0.0");
        assert_eq!(config.protocols.nmdb.listener.port, 2);
        assert_eq!(config.protocols.nmdb.listener.keyspace, "shared");
        assert_eq!(
            config.protocols.nmdb.udp_port, 26010,
            "defaults fill the rest"
        );
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[nmdb]\nprot = 1\n").unwrap();
        let err = Config::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        let err = Config::load(
            None,
            &[Override {
                path: "nmdb.port".into(),
                value: "x".into(),
                origin: Origin::Flag,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--nmdb-port") && err.contains("integer"),
            "{err}"
        );
        let err = Config::load(
            None,
            &[Override {
                path: "nmdb.port".into(),
                value: "70000".into(),
                origin: Origin::Flag,
            }],
        );
        assert!(err.is_err());
        let err = Config::load(Some(Path::new("/nonexistent/polykv.toml")), &[]).unwrap_err();
        assert!(err.to_string().contains("cannot read"));
        for (path, value, message) in [
            ("engine.memtable_bytes", "4096", "at least 1048576"),
            ("engine.checkpoint_bytes", "4096", "at least 1048576"),
            ("engine.max_backlog_bytes", "2097152", "at least twice"),
            ("engine.log_segment_bytes", "4096", "at least 1048576"),
            ("opencluster.mask", "10", "2^k - 1"),
            ("opencluster.mask", "131071", "2^k - 1"),
            ("opencluster.keyspace", "a b", "opencluster.keyspace"),
        ] {
            let err = Config::load(
                None,
                &[Override {
                    path: path.into(),
                    value: value.into(),
                    origin: Origin::Flag,
                }],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(message), "{path}={value}: {err}");
        }
    }

    #[test]
    fn errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        for (text, message) in [
            (
                "[nmdb]\nprot = 1\n",
                "unknown field `prot`, expected one of `enabled`, `addr`, `port`, `keyspace`, `udp_enabled`, `udp_port`, `read_only`, `idle_timeout_secs`, `partial_frame_timeout_secs`, `max_output_bytes`\nin `nmdb`\n",
            ),
            (
                "nope = 1\n",
                "unknown field `nope`, expected one of `data_dir`, `bind`, `max_connections`, `shutdown_timeout_secs`, `upgrade_timeout_secs`, `log`, `engine`, `admin`, `cluster`, `nmdb`, `minority`, `smalld`, `opencluster`, `jsonkv`
",
            ),
            (
                "[log]\nlevel = \"info\"\nfile = 1\n",
                "unknown field `file`, expected `level` or `format`\nin `log`\n",
            ),
            (
                "[nmdb]\nport = \"x\"\n",
                "invalid type: string \"x\", expected u16\nin `nmdb.port`\n",
            ),
            (
                "[nmdb]\nport = 70000\n",
                "invalid value: integer `70000`, expected u16\nin `nmdb.port`\n",
            ),
            (
                "[log]\nformat = \"xml\"\n",
                "log.format must be text or json, not \"xml\"\nin `log.format`\n",
            ),
            (
                "[smalld]\nrequest_log = \"file\"\n",
                "smalld.request_log must be stdout, stderr or off, not \"file\"\nin `smalld.request_log`\n",
            ),
            (
                "[engine]\ncache_bytes = \"x\"\n",
                "invalid type: string \"x\", expected u64\nin `engine.cache_bytes`\n",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path), &[]).unwrap_err().to_string();
            assert!(err.ends_with(message), "{text}: {err}");
        }
    }

    #[test]
    fn printed_config_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, Config::default().to_toml()).unwrap();
        assert_eq!(Config::load(Some(&path), &[]).unwrap(), Config::default());
    }

    #[test]
    fn docs_hold_the_current_reference() {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .expect("docs/configuration.md");
        assert!(
            docs.contains(&reference_markdown()),
            "docs/configuration.md is stale: paste the output of `polykv config --reference`"
        );
    }

    #[test]
    fn listen_addresses() {
        let c = Config::default();
        assert_eq!(c.listen_addr("", 1), "127.0.0.1:1");
        assert_eq!(c.listen_addr("::1", 1), "[::1]:1");
    }
}
