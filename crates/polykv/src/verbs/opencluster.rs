//! OpenCluster verbs: get, set, stats. Names are hashed with FNV-1a-32 as the polykv client
//! does, outside any map.

use std::time::Duration;

use anyhow::{bail, Context};
use polykv_client::opencluster::{OpenClusterClient, Value, ValueType};
use serde_json::json;

use super::{not_found, print, show_bytes, Proto, ValueKind, Verb};

fn type_name(kind: ValueType) -> &'static str {
    match kind {
        ValueType::Int => "int",
        ValueType::Long => "long",
        ValueType::String => "string",
    }
}

pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Opencluster.default_addr());
    let json_mode = target.json;
    let timeout = Duration::from_secs_f64(target.timeout.max(0.1));
    let mut client = OpenClusterClient::connect(&addr, timeout)
        .await
        .with_context(|| format!("cannot reach an OpenCluster server at {addr}"))?;
    let name = verb.name();
    let context = || format!("{name} failed");
    match verb {
        Verb::Get { key, .. } => {
            // get_type first, then the get of that type: the type is part of the item.
            let found = match client.get_type(key.as_bytes()).await.with_context(context)? {
                Some(kind) => {
                    let item = polykv_client::opencluster::ItemId::named(None, key.as_bytes());
                    client
                        .get(item, kind)
                        .await
                        .with_context(context)?
                        .map(|value| (kind, value))
                }
                None => None,
            };
            let Some((kind, value)) = found else {
                not_found(json_mode, &key, "(not found)")
            };
            let (shown, json_value) = match value {
                Value::Int(v) => (v.to_string(), json!(v)),
                Value::Long(v) => (v.to_string(), json!(v)),
                Value::String(bytes) => (show_bytes(&bytes), json!(show_bytes(&bytes))),
            };
            print(
                json_mode,
                json!({ "key": key, "type": type_name(kind), "value": json_value }),
                format!("{shown} ({})", type_name(kind)),
            );
        }
        Verb::Set {
            key,
            value,
            sync,
            kind,
            expires,
            ..
        } => {
            let expires = i32::try_from(expires).context("--expires is at most 2147483647")?;
            let name = key.as_bytes();
            match kind {
                ValueKind::String => client.set_string(name, value.as_bytes(), expires, sync).await,
                ValueKind::Int => {
                    let number = value.parse().context("--type int needs a 32-bit integer")?;
                    client.set_int(name, number, expires, sync).await
                }
                ValueKind::Long => {
                    let number = value.parse().context("--type long needs a 64-bit integer")?;
                    client.set_long(name, number, expires, sync).await
                }
            }
            .with_context(context)?;
            print(json_mode, json!({ "key": key, "ok": true }), "OK".into());
        }
        Verb::Stats { .. } => {
            client.hello().await.with_context(context)?;
            let levels = client.loadlevel().await.with_context(context)?;
            let mask = client.mask().unwrap_or(0);
            let others: Vec<String> = client
                .servers()
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            print(
                json_mode,
                json!({
                    "primary_buckets": levels.primary,
                    "backup_buckets": levels.backup,
                    "transferring": levels.transferring,
                    "mask": mask,
                    "other_nodes": others,
                }),
                format!(
                    "primary buckets  {}\nbackup buckets   {}\ntransferring     {}\nmask             0x{mask:x}\nother nodes      {}",
                    levels.primary,
                    levels.backup,
                    if levels.transferring { "yes" } else { "no" },
                    if others.is_empty() { "none".to_string() } else { others.join(", ") }
                ),
            );
        }
        other => bail!(
            "OpenCluster has no {} verb (it has get, set and stats; its items cannot be deleted or listed)",
            other.name()
        ),
    }
    Ok(())
}
