//! Client verbs: `polykv get|set|del|incr|cas|keys|watch|stats --proto P --addr A`.
//!
//! Human-readable output by default, `--json` for scripts. A verb a protocol does not have is
//! refused with a message that names the verbs it has. One module per protocol.

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};

mod jsonkv;
mod minority;
mod nmdb;
mod opencluster;
mod smalld;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Nmdb,
    Opencluster,
    Minority,
    Smalld,
    Jsonkv,
}

impl Proto {
    /// The server's default port for this protocol on 127.0.0.1, from the server's protocol list.
    fn default_addr(self) -> String {
        // The value names (`nmdb`, `opencluster`, ...) are the protocols' section names.
        let name = self.to_possible_value();
        let name = name.as_ref().map_or("", |v| v.get_name());
        let port = polykv_server::services::default_ports()
            .into_iter()
            .find_map(|(protocol, port)| (protocol == name).then_some(port))
            .unwrap_or_default();
        format!("127.0.0.1:{port}")
    }
}

/// An OpenCluster item type, for `set --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueKind {
    String,
    Int,
    Long,
}

#[derive(Args, Debug)]
pub struct Target {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "nmdb")]
    proto: Proto,
    /// Server address (default: the protocol's default port on 127.0.0.1).
    #[arg(long)]
    addr: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// smalld: the secret key (default: the one in ./polykv-data/smalld.key).
    #[arg(long, env = "POLYKV_SMALLD_SECRET_KEY")]
    secret_key: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Read a key.
    Get {
        key: String,
        /// nmdb: read the cache only (CACHE_ONLY).
        #[arg(long)]
        cache_only: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Write a key.
    Set {
        key: String,
        value: String,
        /// Acknowledge only once on disk (nmdb SYNC).
        #[arg(long)]
        sync: bool,
        /// nmdb: write the cache only (CACHE_ONLY).
        #[arg(long)]
        cache_only: bool,
        /// Append a NUL byte (nmdb's INCR works on NUL-terminated decimal strings).
        #[arg(long)]
        nul: bool,
        /// OpenCluster: the item's type (int and long parse VALUE as a number).
        #[arg(long = "type", value_enum, default_value = "string")]
        kind: ValueKind,
        /// OpenCluster: seconds until the item expires (0 = never).
        #[arg(long, default_value_t = 0)]
        expires: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Del {
        key: String,
        #[arg(long)]
        sync: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Add to a number (nmdb: a NUL-terminated decimal value).
    Incr {
        key: String,
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Compare and swap.
    Cas {
        key: String,
        old: String,
        new: String,
        #[command(flatten)]
        target: Target,
    },
    /// List keys in order.
    Keys {
        /// Most keys to list.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Follow changes of a key.
    Watch {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Server statistics.
    Stats {
        #[command(flatten)]
        target: Target,
    },
}

impl Verb {
    fn target(&self) -> &Target {
        match self {
            Verb::Get { target, .. }
            | Verb::Set { target, .. }
            | Verb::Del { target, .. }
            | Verb::Incr { target, .. }
            | Verb::Cas { target, .. }
            | Verb::Keys { target, .. }
            | Verb::Watch { target, .. }
            | Verb::Stats { target } => target,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Verb::Get { .. } => "get",
            Verb::Set { .. } => "set",
            Verb::Del { .. } => "del",
            Verb::Incr { .. } => "incr",
            Verb::Cas { .. } => "cas",
            Verb::Keys { .. } => "keys",
            Verb::Watch { .. } => "watch",
            Verb::Stats { .. } => "stats",
        }
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\0') => {
            text.trim_end_matches('\0').to_string()
        }
        _ => format!(
            "0x{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// Reports a missing key (`"value": null` in JSON) and exits with status 1, which scripts test.
fn not_found(json_mode: bool, key: &str, text: &str) -> ! {
    print(
        json_mode,
        serde_json::json!({ "key": key, "value": null }),
        text.into(),
    );
    std::process::exit(1);
}

fn print(json_mode: bool, value: serde_json::Value, text: String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

pub fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    if let Verb::Set { kind, expires, .. } = &verb {
        if target.proto != Proto::Opencluster && (*kind != ValueKind::String || *expires != 0) {
            bail!("--type and --expires are OpenCluster's (its items are typed and expire)");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match target.proto {
        Proto::Nmdb => runtime.block_on(nmdb::run(verb)),
        Proto::Smalld => runtime.block_on(smalld::run(verb)),
        Proto::Minority => runtime.block_on(minority::run(verb)),
        Proto::Opencluster => runtime.block_on(opencluster::run(verb)),
        Proto::Jsonkv => runtime.block_on(jsonkv::run(verb)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_are_the_servers_default_ports() {
        for (proto, addr) in [
            (Proto::Nmdb, "127.0.0.1:26010"),
            (Proto::Opencluster, "127.0.0.1:13600"),
            (Proto::Minority, "127.0.0.1:8000"),
            (Proto::Smalld, "127.0.0.1:4121"),
            (Proto::Jsonkv, "127.0.0.1:15001"),
        ] {
            assert_eq!(proto.default_addr(), addr);
        }
    }
}
