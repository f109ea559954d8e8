//! nmdb verbs: all but watch.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::{not_found, print, show_bytes, Proto, Verb};
use polykv_client::nmdb::{CasOutcome, Mode, NmdbClient, Source, STATS_NAMES};

pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Nmdb.default_addr());
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
                None => not_found(json_mode, &key, "(not found)"),
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
            None => not_found(json_mode, &key, "(not found)"),
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
