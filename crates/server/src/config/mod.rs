//! Configuration: one TOML file, every field also settable by a CLI flag and an environment
//! variable. Precedence: flag > environment > file > default.
//!
//! Flags and variables are derived from the field paths, so no field can be forgotten:
//! `nmdb.port` is `--nmdb-port` and `POLYKV_NMDB_PORT`; `data_dir` is `--data-dir` and
//! `POLYKV_DATA_DIR`.

use std::path::{Path, PathBuf};

pub mod listener;
pub mod settings;

use serde::{Deserialize, Serialize};

pub use listener::{Listener, SessionSettings};
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
        pub log: LogConfig = LogConfig::default(),
        pub engine: EngineSection = EngineSection::default(),
        pub admin: AdminConfig = AdminConfig::default(),
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
        /// Store memtable per keyspace, at least 1 MiB; up to two per busy keyspace in memory;
        /// fixed when a keyspace is created
        pub memtable_bytes: u64 = polykv_engine::EngineConfig::default().memtable_bytes,
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

/// Every setting's path and documentation, from the doc comments of the settings' fields.
pub fn docs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    Config::document("", "", &[], &mut out);
    out
}

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
    pub doc: String,
}

/// Every leaf field of the configuration, in declaration order.
pub fn fields() -> Vec<Field> {
    let defaults =
        toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Table(Default::default()));
    let docs = docs();
    let mut out = Vec::new();
    collect_leaves(&defaults, "", &docs, &mut out);
    out
}

fn collect_leaves(
    value: &toml::Value,
    prefix: &str,
    docs: &[(String, String)],
    out: &mut Vec<Field>,
) {
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
            collect_leaves(value, &path, docs, out);
            continue;
        }
        let flag = path.replace(['.', '_'], "-");
        let env = format!("POLYKV_{}", path.replace('.', "_").to_uppercase());
        let doc = docs
            .iter()
            .find(|(p, _)| *p == path)
            .map_or_else(String::new, |(_, d)| d.clone());
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
            merge(&mut tree, from_file);
            // Deserializing the defaults with the file over them rejects unknown fields with
            // their names and malformed values, as errors of the file.
            decode(&tree).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
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
        let config = decode(&tree).map_err(ConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.protocols.validate().map_err(ConfigError::Invalid)?;
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

/// Deserializes the configuration tree, with errors that say where, as toml says them.
///
/// serde's `flatten` (each protocol's section holds its listener settings flattened) loses
/// which fields a table expects and where a bad value is; this finds an unknown field itself,
/// naming the fields its table has, and names the setting whose value is refused.
fn decode(tree: &toml::Value) -> Result<Config, String> {
    let paths: Vec<String> = docs().into_iter().map(|(path, _)| path).collect();
    if let Some(message) = unknown_field(tree, "", &paths) {
        return Err(message);
    }
    Config::deserialize(tree.clone()).map_err(|e| {
        let message = e.to_string();
        if message.contains("\nin `") {
            return message;
        }
        // The first setting that alone, over the defaults, is refused.
        let culprit = paths.iter().find(|path| {
            let Some(value) = get_path(tree, path) else {
                return false;
            };
            let Ok(mut alone) = toml::Value::try_from(Config::default()) else {
                return false;
            };
            set_path(&mut alone, path, value.clone());
            Config::deserialize(alone).is_err()
        });
        match culprit {
            Some(path) => format!("{}\nin `{path}`\n", message.trim_end()),
            None => message,
        }
    })
}

/// The first key of `tree` (at `prefix`) that is no setting, in toml's words.
fn unknown_field(tree: &toml::Value, prefix: &str, paths: &[String]) -> Option<String> {
    let toml::Value::Table(table) = tree else {
        return None;
    };
    // The names this table holds, in declaration order.
    let mut names: Vec<&str> = Vec::new();
    for path in paths {
        let rest = if prefix.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(name) = rest.and_then(|r| r.split('.').next()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for (key, value) in table {
        if !names.contains(&key.as_str()) {
            let expected = match names.as_slice() {
                [] => "there are no fields".to_string(),
                [one] => format!("expected `{one}`"),
                [one, two] => format!("expected `{one}` or `{two}`"),
                all => format!(
                    "expected one of {}",
                    all.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let place = if prefix.is_empty() {
                String::new()
            } else {
                format!("in `{prefix}`\n")
            };
            return Some(format!("unknown field `{key}`, {expected}\n{place}"));
        }
        let child = settings::join(prefix, key);
        let section = format!("{child}.");
        if value.is_table() && paths.iter().any(|p| p.starts_with(&section)) {
            if let Some(message) = unknown_field(value, &child, paths) {
                return Some(message);
            }
        }
    }
    None
}

fn get_path<'a>(tree: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(tree, |node, part| node.get(part))
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
                "unknown field `nope`, expected one of `data_dir`, `bind`, `max_connections`, `shutdown_timeout_secs`, `log`, `engine`, `admin`, `nmdb`, `minority`, `smalld`, `opencluster`, `jsonkv`\n",
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
