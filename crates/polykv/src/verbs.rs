//! Client verbs: `polykv get|set|del|incr|cas|keys|watch|stats --proto P --addr A`.
//!
//! Human-readable output by default, `--json` for scripts. A verb a protocol does not have, or
//! a protocol polykv does not serve yet, is refused with a message that says so.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use polykv_client::minority::MinorityClient;
use polykv_client::nmdb::{CasOutcome, Mode, NmdbClient, Source, STATS_NAMES};
use polykv_client::smalld::SmalldClient;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Nmdb,
    Opencluster,
    Minority,
    Smalld,
    Jsonkv,
}

impl Proto {
    fn default_addr(self) -> &'static str {
        match self {
            Proto::Nmdb => "127.0.0.1:26010",
            Proto::Opencluster => "127.0.0.1:13600",
            Proto::Minority => "127.0.0.1:8000",
            Proto::Smalld => "127.0.0.1:4121",
            Proto::Jsonkv => "127.0.0.1:15001",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Nmdb => "nmdb",
            Proto::Opencluster => "opencluster",
            Proto::Minority => "minority",
            Proto::Smalld => "smalld",
            Proto::Jsonkv => "jsonkv",
        }
    }
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

fn print(json_mode: bool, value: serde_json::Value, text: String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

pub fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match target.proto {
        Proto::Nmdb => runtime.block_on(nmdb(verb)),
        Proto::Smalld => runtime.block_on(smalld(verb)),
        Proto::Minority => runtime.block_on(minority(verb)),
        other => bail!(
            "polykv does not serve the {} protocol yet, so its client verbs are not available",
            other.name()
        ),
    }
}

/// minority keys are `DATAID` or `DATAID/DATANUMID` on the command line.
fn minority_key(key: &str) -> (&[u8], &[u8]) {
    match key.split_once('/') {
        Some((data_id, datanum_id)) => (data_id.as_bytes(), datanum_id.as_bytes()),
        None => (key.as_bytes(), b""),
    }
}

async fn minority(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Minority.default_addr().to_string());
    let json_mode = target.json;
    let timeout = Duration::from_secs_f64(target.timeout.max(0.1));
    let mut client = MinorityClient::connect(&addr, timeout)
        .await
        .with_context(|| format!("cannot reach a minority server at {addr}"))?;
    let name = verb.name();
    let context = || format!("{name} failed");
    match verb {
        Verb::Get { key, .. } => {
            let (d, n) = minority_key(&key);
            match client.get(d, n).await.with_context(context)? {
                Some(value) => print(
                    json_mode,
                    json!({ "key": key, "value": show_bytes(&value) }),
                    show_bytes(&value),
                ),
                None => {
                    print(
                        json_mode,
                        json!({ "key": key, "value": null }),
                        "(not found)".into(),
                    );
                    std::process::exit(1);
                }
            }
        }
        Verb::Set { key, value, .. } => {
            let (d, n) = minority_key(&key);
            client
                .set(d, n, value.as_bytes())
                .await
                .with_context(context)?;
            print(json_mode, json!({ "key": key, "ok": true }), "OK".into());
        }
        Verb::Del { key, .. } => {
            let (d, n) = minority_key(&key);
            let existed = client.delete(d, n).await.with_context(context)?;
            print(
                json_mode,
                json!({ "key": key, "deleted": existed }),
                if existed { "deleted" } else { "(not found)" }.into(),
            );
        }
        Verb::Watch { key, .. } => {
            // DATAID alone follows every datanumId of it; heartbeats keep the connection open.
            let (d, n) = minority_key(&key);
            let (current, _) = client.notify(d, n).await.with_context(context)?;
            print(
                json_mode,
                json!({ "key": key, "value": show_bytes(&current), "initial": true }),
                format!("{key} = {}", show_bytes(&current)),
            );
            loop {
                match client
                    .next_push(Duration::from_secs(30))
                    .await
                    .with_context(context)?
                {
                    Some(push) => {
                        let shown = format!(
                            "{}/{}",
                            show_bytes(&push.data_id),
                            show_bytes(&push.datanum_id)
                        );
                        let deleted = push.status == polykv_client::minority::status::NOT_FOUND;
                        let text = if deleted {
                            format!("{shown} deleted")
                        } else {
                            format!("{shown} = {}", show_bytes(&push.value))
                        };
                        print(
                            json_mode,
                            json!({ "key": shown, "value": show_bytes(&push.value), "deleted": deleted }),
                            text,
                        );
                    }
                    None => client.heartbeat().await.with_context(context)?,
                }
            }
        }
        other => bail!(
            "minority has no {} verb (it has get, set, del and watch)",
            other.name()
        ),
    }
    Ok(())
}

async fn smalld(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Smalld.default_addr().to_string());
    let key = match target.secret_key {
        Some(key) => key,
        None => std::fs::read_to_string("polykv-data/smalld.key")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .context(
                "give the smalld secret key with --secret-key (or POLYKV_SMALLD_SECRET_KEY)",
            )?,
    };
    let json_mode = target.json;
    let timeout = Duration::from_secs_f64(target.timeout.max(0.1));
    let client = SmalldClient::new(&addr, key, timeout);
    let unreachable =
        || format!("cannot reach a smalld server at {addr} (or the secret key is wrong)");
    match verb {
        Verb::Get { key: name, .. } => match client
            .get(name.as_bytes())
            .await
            .with_context(unreachable)?
        {
            Some(value) => print(
                json_mode,
                json!({ "key": name, "value": show_bytes(&value) }),
                show_bytes(&value),
            ),
            None => {
                print(
                    json_mode,
                    json!({ "key": name, "value": null }),
                    "(failure: not found)".into(),
                );
                std::process::exit(1);
            }
        },
        Verb::Set {
            key: name,
            value,
            nul,
            ..
        } => {
            let mut bytes = value.into_bytes();
            if nul {
                bytes.push(0);
            }
            if !client
                .set(name.as_bytes(), &bytes)
                .await
                .with_context(unreachable)?
            {
                bail!("smalld refused the set (names are 1-15 bytes, values at most 100)");
            }
            print(json_mode, json!({ "key": name, "ok": true }), "OK".into());
        }
        other => bail!(
            "smalld has no {} verb (it has get and set; digest and run are its own requests)",
            other.name()
        ),
    }
    Ok(())
}

async fn nmdb(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Nmdb.default_addr().to_string());
    let json_mode = target.json;
    if matches!(verb, Verb::Watch { .. }) {
        bail!("nmdb has no watch verb (change notification is minority's); try the admin API's /api/keyspaces/nmdb/watch");
    }
    let timeout = Duration::from_secs_f64(target.timeout.max(0.1));
    let mut client = NmdbClient::connect_tcp(&addr, timeout)
        .await
        .with_context(|| format!("cannot reach an nmdb server at {addr}"))?;
    let name = verb.name();
    let mode = |sync: bool, cache_only: bool| {
        if cache_only {
            Mode::CacheOnly
        } else if sync {
            Mode::Sync
        } else {
            Mode::Normal
        }
    };
    let context = || format!("{name} failed");
    match verb {
        Verb::Get {
            key, cache_only, ..
        } => {
            match client
                .get(key.as_bytes(), mode(false, cache_only))
                .await
                .with_context(context)?
            {
                Some((value, source)) => {
                    let from = if source == Source::Cache {
                        "cache"
                    } else {
                        "store"
                    };
                    print(
                        json_mode,
                        json!({ "key": key, "value": show_bytes(&value), "source": from }),
                        show_bytes(&value),
                    );
                }
                None => {
                    print(
                        json_mode,
                        json!({ "key": key, "value": null }),
                        "(not found)".into(),
                    );
                    std::process::exit(1);
                }
            }
        }
        Verb::Set {
            key,
            value,
            sync,
            cache_only,
            nul,
            ..
        } => {
            let mut bytes = value.into_bytes();
            if nul {
                bytes.push(0);
            }
            client
                .set(key.as_bytes(), &bytes, mode(sync, cache_only))
                .await
                .with_context(context)?;
            print(json_mode, json!({ "key": key, "ok": true }), "OK".into());
        }
        Verb::Del { key, sync, .. } => {
            let existed = client
                .del(key.as_bytes(), mode(sync, false))
                .await
                .with_context(context)?;
            print(
                json_mode,
                json!({ "key": key, "deleted": existed }),
                if existed { "deleted" } else { "(not found)" }.into(),
            );
        }
        Verb::Incr { key, delta, .. } => match client
            .incr(key.as_bytes(), delta, Mode::Normal)
            .await
            .with_context(context)?
        {
            Some(value) => print(
                json_mode,
                json!({ "key": key, "value": value }),
                value.to_string(),
            ),
            None => {
                print(
                    json_mode,
                    json!({ "key": key, "value": null }),
                    "(not found)".into(),
                );
                std::process::exit(1);
            }
        },
        Verb::Cas { key, old, new, .. } => {
            let outcome = client
                .cas(key.as_bytes(), old.as_bytes(), new.as_bytes(), Mode::Normal)
                .await
                .with_context(context)?;
            let word = match outcome {
                CasOutcome::Swapped => "swapped",
                CasOutcome::Mismatch => "mismatch",
                CasOutcome::NotFound => "not found",
            };
            print(
                json_mode,
                json!({ "key": key, "result": word }),
                word.into(),
            );
        }
        Verb::Keys { limit, .. } => {
            let mut keys = Vec::new();
            let mut cursor = client.first_key().await.with_context(context)?;
            while let Some(key) = cursor {
                if keys.len() >= limit {
                    break;
                }
                cursor = client.next_key(&key).await.with_context(context)?;
                keys.push(show_bytes(&key));
            }
            print(json_mode, json!({ "keys": keys }), keys.join("\n"));
        }
        Verb::Stats { .. } => {
            let stats = client.stats().await.with_context(context)?;
            let map: serde_json::Map<String, serde_json::Value> = STATS_NAMES
                .iter()
                .zip(stats.iter())
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect();
            let text = STATS_NAMES
                .iter()
                .zip(stats.iter())
                .map(|(n, v)| format!("{n:<22}{v}"))
                .collect::<Vec<_>>()
                .join("\n");
            print(json_mode, serde_json::Value::Object(map), text);
        }
        Verb::Watch { .. } => bail!("nmdb has no watch verb"),
    }
    Ok(())
}
