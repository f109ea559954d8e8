//! Configuration: one TOML file, every field also settable by a CLI flag and an environment
//! variable. Precedence: flag > environment > file > default.
//!
//! Flags and variables are derived from the field paths, so no field can be forgotten:
//! `nmdb.port` is `--nmdb-port` and `POLYKV_NMDB_PORT`; `data_dir` is `--data-dir` and
//! `POLYKV_DATA_DIR`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the store, the journal and the lock file.
    pub data_dir: PathBuf,
    /// Address every listener binds to unless it sets its own.
    pub bind: String,
    /// Most client connections open at once, over all protocols.
    pub max_connections: u32,
    /// Seconds to finish in-flight requests on SIGTERM/SIGINT before closing connections.
    pub shutdown_timeout_secs: u64,
    pub log: LogConfig,
    pub engine: EngineSection,
    pub admin: AdminConfig,
    pub nmdb: NmdbConfig,
    pub smalld: SmalldConfig,
    pub minority: MinorityConfig,
    pub opencluster: OpenClusterConfig,
    pub jsonkv: JsonkvConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./polykv-data"),
            bind: "127.0.0.1".into(),
            max_connections: 10_000,
            shutdown_timeout_secs: 10,
            log: LogConfig::default(),
            engine: EngineSection::default(),
            admin: AdminConfig::default(),
            nmdb: NmdbConfig::default(),
            smalld: SmalldConfig::default(),
            minority: MinorityConfig::default(),
            opencluster: OpenClusterConfig::default(),
            jsonkv: JsonkvConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing` syntax: `info`, `debug`, `polykv_server=debug,info`.
    pub level: String,
    /// `text` (human-readable) or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub cache_bytes: u64,
    pub sync_interval_ms: u64,
    pub reaper_interval_ms: u64,
    pub watch_queue: u64,
    pub memtable_bytes: u64,
    pub checkpoint_bytes: u64,
    pub checkpoint_interval_ms: u64,
    pub max_backlog_bytes: u64,
    pub log_segment_bytes: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = polykv_engine::EngineConfig::default();
        EngineSection {
            cache_bytes: d.cache_bytes as u64,
            sync_interval_ms: d.sync_interval.as_millis() as u64,
            reaper_interval_ms: d.reaper_interval.as_millis() as u64,
            watch_queue: d.watch_queue as u64,
            memtable_bytes: d.memtable_bytes,
            checkpoint_bytes: d.log.checkpoint_bytes as u64,
            checkpoint_interval_ms: d.log.checkpoint_interval.as_millis() as u64,
            max_backlog_bytes: d.log.max_backlog_bytes as u64,
            log_segment_bytes: d.log.segment_bytes,
        }
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
            },
            ..polykv_engine::EngineConfig::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Listen address; empty = `bind`.
    pub addr: String,
    pub port: u16,
    /// Bearer token for the admin API. Required when set, and always off loopback (then
    /// generated into `DATA_DIR/admin.token` if empty).
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            addr: String::new(),
            port: 26080,
            token: String::new(),
        }
    }
}

/// Settings every TCP protocol has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NmdbConfig {
    pub enabled: bool,
    /// Listen address; empty = `bind`.
    pub addr: String,
    pub port: u16,
    pub udp_enabled: bool,
    pub udp_port: u16,
    pub keyspace: String,
    /// Refuse SET, DEL, CAS and INCR (ERR_RO) from the start.
    pub read_only: bool,
    /// Close a connection that sends no complete frame for this long; 0 = never.
    pub idle_timeout_secs: u64,
    /// Close a connection that leaves a frame half-sent for this long; 0 = never.
    pub partial_frame_timeout_secs: u64,
    /// Unsent reply bytes per connection before the server stops reading its requests.
    pub max_output_bytes: u64,
}

impl Default for NmdbConfig {
    fn default() -> Self {
        NmdbConfig {
            enabled: true,
            addr: String::new(),
            port: 26010,
            udp_enabled: true,
            udp_port: 26010,
            keyspace: "nmdb".into(),
            read_only: false,
            idle_timeout_secs: 0,
            partial_frame_timeout_secs: 60,
            max_output_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmalldConfig {
    pub enabled: bool,
    /// Listen address; empty = `bind`.
    pub addr: String,
    pub port: u16,
    pub keyspace: String,
    /// The secret key (an unsigned 32-bit number); empty = generated at first start and kept in
    /// `DATA_DIR/smalld.key`.
    pub secret_key: String,
    pub request_timeout_secs: u64,
    pub run_enabled: bool,
    pub run_timeout_ms: u64,
    /// How long to read and discard input after the reply before closing.
    pub drain_ms: u64,
    /// Most names that can be stored (0 = unlimited).
    pub max_names: u64,
    /// Where the request log goes: `stdout`, `stderr` or `off`.
    pub request_log: String,
}

impl Default for SmalldConfig {
    fn default() -> Self {
        SmalldConfig {
            enabled: true,
            addr: String::new(),
            port: 4121,
            keyspace: "smalld".into(),
            secret_key: String::new(),
            request_timeout_secs: 5,
            run_enabled: true,
            run_timeout_ms: 2000,
            drain_ms: 1000,
            max_names: 0,
            request_log: "stdout".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinorityConfig {
    pub enabled: bool,
    /// Listen address; empty = `bind`.
    pub addr: String,
    pub port: u16,
    pub keyspace: String,
    pub max_body: u64,
    pub idle_timeout_secs: u64,
    pub partial_frame_timeout_secs: u64,
    pub max_subscriptions: u64,
    /// Pushes queued per subscription before they are coalesced to the latest per key.
    pub push_queue: u64,
    pub max_output_bytes: u64,
    /// Acknowledge set/delete once applied (Async) instead of once on disk (Sync).
    pub async_acks: bool,
}

impl Default for MinorityConfig {
    fn default() -> Self {
        MinorityConfig {
            enabled: true,
            addr: String::new(),
            port: 8000,
            keyspace: "minority".into(),
            max_body: 1 << 20,
            idle_timeout_secs: 90,
            partial_frame_timeout_secs: 60,
            max_subscriptions: 1024,
            push_queue: 4096,
            max_output_bytes: 4 << 20,
            async_acks: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenClusterConfig {
    pub enabled: bool,
    /// Listen address; empty = `bind`.
    pub addr: String,
    pub port: u16,
    pub keyspace: String,
    /// Largest payload `L` in bytes (bigger: failinfo 3, then close).
    pub max_payload: u64,
    /// Close connections that send no complete message for this long; 0 = never.
    pub idle_timeout_secs: u64,
    pub partial_frame_timeout_secs: u64,
    /// Locks one connection may hold at once.
    pub max_locks: u64,
    /// At shutdown, how long to wait for clients to ack the goodbye push.
    pub goodbye_wait_ms: u64,
    /// Bucket mask announced in hashmasks: 2^k - 1 with k <= 16.
    pub mask: u32,
    pub max_output_bytes: u64,
}

impl Default for OpenClusterConfig {
    fn default() -> Self {
        OpenClusterConfig {
            enabled: true,
            addr: String::new(),
            port: 13600,
            keyspace: "opencluster".into(),
            max_payload: 1 << 20,
            idle_timeout_secs: 60,
            partial_frame_timeout_secs: 60,
            max_locks: 1024,
            goodbye_wait_ms: 2000,
            mask: 0x0F,
            max_output_bytes: 4 << 20,
        }
    }
}

/// jsonkv over TCP, UDP and JSON-RPC, and the jsonagent discovery service (jsonkv.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonkvConfig {
    /// Serve jsonkv over TCP.
    pub enabled: bool,
    /// Listen address of all four endpoints; empty = `bind`.
    pub addr: String,
    pub port: u16,
    pub udp_enabled: bool,
    pub udp_port: u16,
    pub rpc_enabled: bool,
    pub rpc_port: u16,
    pub agent_enabled: bool,
    pub agent_port: u16,
    pub keyspace: String,
    /// Largest frame (header + JSON) over TCP and the agent, and largest HTTP body.
    pub max_frame: u64,
    pub max_key: u64,
    pub max_value: u64,
    pub max_depth: u64,
    /// Bytes of values one batch may return; later gets in the batch answer 1024.
    pub max_batch_response: u64,
    /// Close TCP and HTTP connections that complete no request this long; 0 = never.
    pub idle_timeout_secs: u64,
    pub max_output_bytes: u64,
    /// Acknowledge put/delete once applied (Async) instead of once on disk (Sync).
    pub async_acks: bool,
    /// Close agent connections (and drop their registration) after this long without a frame.
    pub agent_idle_timeout_secs: u64,
    pub agent_max_registrations: u64,
    /// Address the agent lists for this node; empty = the local IP of the agent connection.
    pub advertise_addr: String,
}

impl Default for JsonkvConfig {
    fn default() -> Self {
        JsonkvConfig {
            enabled: true,
            addr: String::new(),
            port: 15001,
            udp_enabled: true,
            udp_port: 15002,
            rpc_enabled: true,
            rpc_port: 15003,
            agent_enabled: true,
            agent_port: 15000,
            keyspace: "jsonkv".into(),
            max_frame: 1 << 20,
            max_key: 1024,
            max_value: 65_536,
            max_depth: 64,
            max_batch_response: 64 << 20,
            idle_timeout_secs: 60,
            max_output_bytes: 4 << 20,
            async_acks: false,
            agent_idle_timeout_secs: 20,
            agent_max_registrations: 1024,
            advertise_addr: String::new(),
        }
    }
}

impl JsonkvConfig {
    fn validate(&self) -> Result<(), String> {
        if !polykv_engine::valid_keyspace_name(&self.keyspace) {
            return Err(format!(
                "jsonkv.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.keyspace
            ));
        }
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

/// One line of documentation per field, used for `--help` and checked against the docs.
pub const FIELD_DOCS: &[(&str, &str)] = &[
    (
        "data_dir",
        "Directory of the store, the journal and the lock file",
    ),
    (
        "bind",
        "Address every listener binds to unless it sets its own",
    ),
    (
        "max_connections",
        "Most client connections open at once, over all protocols",
    ),
    (
        "shutdown_timeout_secs",
        "Seconds to finish in-flight requests on SIGTERM/SIGINT",
    ),
    (
        "log.level",
        "Log filter: error, warn, info, debug, trace, or tracing directives",
    ),
    ("log.format", "Log format: text or json"),
    (
        "engine.cache_bytes",
        "Byte budget of the in-memory cache (0 = no cache)",
    ),
    (
        "engine.sync_interval_ms",
        "Longest delay before an Async write is synced to disk",
    ),
    (
        "engine.reaper_interval_ms",
        "How often expired entries and locks are reclaimed",
    ),
    (
        "engine.watch_queue",
        "Events queued per watcher before coalescing to the latest per key",
    ),
    (
        "engine.memtable_bytes",
        "Store memtable per keyspace, at least 1 MiB (only metadata passes through it since the log took over); fixed when a keyspace is created",
    ),
    (
        "engine.checkpoint_bytes",
        "Written data held in memory before a checkpoint moves it into the store, at least 1 MiB",
    ),
    (
        "engine.checkpoint_interval_ms",
        "Longest time between checkpoints while anything is waiting for one",
    ),
    (
        "engine.max_backlog_bytes",
        "Written data not yet checkpointed above which writers wait; at least twice checkpoint_bytes",
    ),
    (
        "engine.log_segment_bytes",
        "Size at which a log segment file is sealed and a new one started, at least 1 MiB",
    ),
    (
        "admin.enabled",
        "Serve the admin HTTP API (health, metrics)",
    ),
    ("admin.addr", "Admin listen address (empty = bind)"),
    ("admin.port", "Admin HTTP port"),
    (
        "admin.token",
        "Bearer token for the admin API (required off loopback; generated if empty)",
    ),
    ("nmdb.enabled", "Serve nmdb over TCP"),
    (
        "nmdb.addr",
        "nmdb listen address, TCP and UDP (empty = bind)",
    ),
    ("nmdb.port", "nmdb TCP port"),
    ("nmdb.udp_enabled", "Serve nmdb over UDP"),
    ("nmdb.udp_port", "nmdb UDP port"),
    ("nmdb.keyspace", "Engine keyspace nmdb reads and writes"),
    (
        "nmdb.read_only",
        "Start in read-only mode (SET, DEL, CAS, INCR refused)",
    ),
    (
        "nmdb.idle_timeout_secs",
        "Close connections idle this long (0 = never)",
    ),
    (
        "nmdb.partial_frame_timeout_secs",
        "Close connections that leave a frame half-sent this long (0 = never)",
    ),
    (
        "nmdb.max_output_bytes",
        "Unsent reply bytes per connection before reading pauses",
    ),
    ("minority.enabled", "Serve minority over TCP"),
    ("minority.addr", "minority listen address (empty = bind)"),
    ("minority.port", "minority TCP port"),
    (
        "minority.keyspace",
        "Engine keyspace minority reads and writes",
    ),
    (
        "minority.max_body",
        "Largest frame body in bytes (bigger: error reply, then close)",
    ),
    (
        "minority.idle_timeout_secs",
        "Close connections that send no frame this long (0 = never)",
    ),
    (
        "minority.partial_frame_timeout_secs",
        "Close connections that leave a frame half-sent this long (0 = never)",
    ),
    (
        "minority.max_subscriptions",
        "Notify subscriptions per connection",
    ),
    (
        "minority.push_queue",
        "Pushes queued per subscription before coalescing to the latest per key",
    ),
    (
        "minority.max_output_bytes",
        "Unsent reply bytes per connection before reading pauses",
    ),
    (
        "minority.async_acks",
        "Acknowledge set/delete once applied instead of once on disk",
    ),
    ("opencluster.enabled", "Serve OpenCluster over TCP"),
    (
        "opencluster.addr",
        "OpenCluster listen address (empty = bind)",
    ),
    ("opencluster.port", "OpenCluster TCP port"),
    (
        "opencluster.keyspace",
        "Engine keyspace OpenCluster reads and writes",
    ),
    (
        "opencluster.max_payload",
        "Largest message payload in bytes (bigger: failinfo 3, then close)",
    ),
    (
        "opencluster.idle_timeout_secs",
        "Close connections that send no message this long; their locks are released (0 = never)",
    ),
    (
        "opencluster.partial_frame_timeout_secs",
        "Close connections that leave a message half-sent this long (0 = never)",
    ),
    (
        "opencluster.max_locks",
        "Locks one connection may hold at once (more: failinfo 6)",
    ),
    (
        "opencluster.goodbye_wait_ms",
        "At shutdown, how long to wait for clients to ack the goodbye push",
    ),
    (
        "opencluster.mask",
        "Bucket mask announced in hashmasks: 2^k - 1, k <= 16 (default 15 = 16 buckets)",
    ),
    (
        "opencluster.max_output_bytes",
        "Unsent reply bytes per connection before reading pauses",
    ),
    ("smalld.enabled", "Serve smalld over TCP"),
    ("smalld.addr", "smalld listen address (empty = bind)"),
    ("smalld.port", "smalld TCP port"),
    ("smalld.keyspace", "Engine keyspace smalld reads and writes"),
    (
        "smalld.secret_key",
        "Secret key, 0 to 4294967295 (empty = generated into DATA_DIR/smalld.key)",
    ),
    (
        "smalld.request_timeout_secs",
        "Close a connection whose request is not complete after this long",
    ),
    (
        "smalld.run_enabled",
        "Allow the run request (inet, hosts, service)",
    ),
    (
        "smalld.run_timeout_ms",
        "Time limit of a run request's program",
    ),
    (
        "smalld.drain_ms",
        "Read and discard input this long after the reply before closing",
    ),
    (
        "smalld.max_names",
        "Most names that can be stored (0 = unlimited)",
    ),
    (
        "smalld.request_log",
        "Where the request log goes: stdout, stderr or off",
    ),
    ("jsonkv.enabled", "Serve jsonkv over TCP"),
    (
        "jsonkv.addr",
        "Listen address of jsonkv TCP, UDP, JSON-RPC and the agent (empty = bind)",
    ),
    ("jsonkv.port", "jsonkv TCP port"),
    ("jsonkv.udp_enabled", "Serve jsonkv over UDP"),
    ("jsonkv.udp_port", "jsonkv UDP port"),
    ("jsonkv.rpc_enabled", "Serve JSON-RPC 2.0 over HTTP"),
    ("jsonkv.rpc_port", "JSON-RPC HTTP port"),
    (
        "jsonkv.agent_enabled",
        "Serve the jsonagent discovery service",
    ),
    ("jsonkv.agent_port", "jsonagent TCP port"),
    (
        "jsonkv.keyspace",
        "Engine keyspace jsonkv TCP, UDP and JSON-RPC read and write",
    ),
    (
        "jsonkv.max_frame",
        "Largest frame (16-byte header + JSON) and largest HTTP body, in bytes",
    ),
    (
        "jsonkv.max_key",
        "Longest key in UTF-8 bytes (longer: 1002)",
    ),
    (
        "jsonkv.max_value",
        "Longest value in UTF-8 bytes (longer: 1001)",
    ),
    (
        "jsonkv.max_depth",
        "Deepest JSON nesting accepted, 1 to 128",
    ),
    (
        "jsonkv.max_batch_response",
        "Value bytes one batch may return; later gets in it answer 1024",
    ),
    (
        "jsonkv.idle_timeout_secs",
        "Close TCP and HTTP connections that complete no request this long (0 = never)",
    ),
    (
        "jsonkv.max_output_bytes",
        "Unsent reply bytes per TCP connection before reading pauses",
    ),
    (
        "jsonkv.async_acks",
        "Acknowledge put/delete once applied instead of once on disk",
    ),
    (
        "jsonkv.agent_idle_timeout_secs",
        "Close agent connections silent this long, dropping their registration (0 = never)",
    ),
    (
        "jsonkv.agent_max_registrations",
        "Most servers registered with the agent at once (more: 901)",
    ),
    (
        "jsonkv.advertise_addr",
        "Address the agent lists for this node (empty = local IP of the agent connection)",
    ),
];

/// One configuration field, as a path into the TOML tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Dotted path, e.g. `nmdb.port`.
    pub path: String,
    /// CLI flag without dashes, e.g. `nmdb-port`.
    pub flag: String,
    /// Environment variable, e.g. `POLYKV_NMDB_PORT`.
    pub env: String,
    pub default: toml::Value,
    pub doc: &'static str,
}

/// Every leaf field of the configuration, in declaration order.
pub fn fields() -> Vec<Field> {
    let defaults =
        toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Table(Default::default()));
    let mut out = Vec::new();
    collect_leaves(&defaults, "", &mut out);
    out
}

fn collect_leaves(value: &toml::Value, prefix: &str, out: &mut Vec<Field>) {
    let toml::Value::Table(table) = value else {
        return;
    };
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if value.is_table() {
            collect_leaves(value, &path, out);
            continue;
        }
        let flag = path.replace(['.', '_'], "-");
        let env = format!("POLYKV_{}", path.replace('.', "_").to_uppercase());
        let doc = FIELD_DOCS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("", |(_, d)| d);
        out.push(Field {
            path,
            flag,
            env,
            default: value.clone(),
            doc,
        });
    }
}

/// The configuration reference as a Markdown table (kept in `docs/configuration.md`).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| Setting (TOML path) | Default | Flag | Environment | Meaning |\n|---|---|---|---|---|\n",
    );
    for f in fields() {
        let default = match &f.default {
            toml::Value::String(s) if s.is_empty() => "(empty)".to_string(),
            toml::Value::String(s) => format!("`{s}`"),
            other => format!("`{other}`"),
        };
        out.push_str(&format!(
            "| `{}` | {} | `--{}` | `{}` | {} |\n",
            f.path, default, f.flag, f.env, f.doc
        ));
    }
    out
}

/// Where an override came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
}

/// A value given by flag or environment for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub path: String,
    pub value: String,
    pub origin: Origin,
}

impl Config {
    /// Builds the effective configuration: defaults, then the file, then the overrides (which
    /// the caller has already resolved as flag-over-environment).
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let from_file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            // Deserializing the file alone rejects unknown fields with their names.
            Config::deserialize(from_file.clone()).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            merge(&mut tree, from_file);
        }
        let fields = fields();
        for o in overrides {
            let field = fields
                .iter()
                .find(|f| f.path == o.path)
                .ok_or_else(|| ConfigError::Invalid(format!("unknown field {}", o.path)))?;
            let value =
                parse_like(&field.default, &o.value).map_err(|expected| ConfigError::Value {
                    field: match o.origin {
                        Origin::Flag => format!("--{}", field.flag),
                        Origin::Env => field.env.clone(),
                    },
                    value: o.value.clone(),
                    origin: match o.origin {
                        Origin::Flag => "command line".into(),
                        Origin::Env => "environment".into(),
                    },
                    expected,
                })?;
            set_path(&mut tree, &o.path, value);
        }
        let config = Config::deserialize(tree).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be text or json, not {:?}",
                self.log.format
            )));
        }
        if !polykv_engine::valid_keyspace_name(&self.nmdb.keyspace) {
            return Err(ConfigError::Invalid(format!(
                "nmdb.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.nmdb.keyspace
            )));
        }
        if !polykv_engine::valid_keyspace_name(&self.minority.keyspace) {
            return Err(ConfigError::Invalid(format!(
                "minority.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.minority.keyspace
            )));
        }
        if !polykv_engine::valid_keyspace_name(&self.smalld.keyspace) {
            return Err(ConfigError::Invalid(format!(
                "smalld.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.smalld.keyspace
            )));
        }
        if !self.smalld.secret_key.is_empty()
            && self.smalld.secret_key.trim().parse::<u32>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "smalld.secret_key {:?}: expected a number from 0 to 4294967295",
                self.smalld.secret_key
            )));
        }
        if !matches!(
            self.smalld.request_log.as_str(),
            "stdout" | "stderr" | "off"
        ) {
            return Err(ConfigError::Invalid(format!(
                "smalld.request_log must be stdout, stderr or off, not {:?}",
                self.smalld.request_log
            )));
        }
        if !polykv_engine::valid_keyspace_name(&self.opencluster.keyspace) {
            return Err(ConfigError::Invalid(format!(
                "opencluster.keyspace {:?}: names are 1-64 characters of A-Z a-z 0-9 _ . -",
                self.opencluster.keyspace
            )));
        }
        if self.opencluster.mask > 0xFFFF
            || (self.opencluster.mask & (self.opencluster.mask + 1)) != 0
        {
            return Err(ConfigError::Invalid(format!(
                "opencluster.mask {}: expected 2^k - 1 with k from 0 to 16 (0, 1, 3, 7, 15, ..., 65535)",
                self.opencluster.mask
            )));
        }
        if self.opencluster.max_payload > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid(
                "opencluster.max_payload must fit in 32 bits".into(),
            ));
        }
        self.jsonkv.validate().map_err(ConfigError::Invalid)?;
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

fn parse_like(default: &toml::Value, raw: &str) -> Result<toml::Value, &'static str> {
    match default {
        toml::Value::Boolean(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err("true or false"),
        },
        toml::Value::Integer(_) => raw
            .trim()
            .replace('_', "")
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "an integer"),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_table() && value.is_table() => merge(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn set_path(tree: &mut toml::Value, path: &str, value: toml::Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let toml::Value::Table(table) = node else {
            return;
        };
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return;
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_a_doc_flag_and_env() {
        let fields = fields();
        assert!(fields.len() >= 20);
        for f in &fields {
            assert!(!f.doc.is_empty(), "{} has no entry in FIELD_DOCS", f.path);
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
        assert_eq!(FIELD_DOCS.len(), fields.len(), "no stale docs");
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
        assert_eq!(config.nmdb.port, 2);
        assert_eq!(config.nmdb.keyspace, "shared");
        assert_eq!(config.nmdb.udp_port, 26010, "defaults fill the rest");
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
