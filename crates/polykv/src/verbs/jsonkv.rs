//! jsonkv verbs: get, set, del over the jsonkv TCP protocol (string keys and values).

use std::time::Duration;

use anyhow::{bail, Context};
use polykv_client::jsonkv::JsonkvClient;
use serde_json::json;

use super::{not_found, print, Proto, Verb};

pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Jsonkv.default_addr());
    let json_mode = target.json;
    let timeout = Duration::from_secs_f64(target.timeout.max(0.1));
    if !matches!(verb, Verb::Get { .. } | Verb::Set { .. } | Verb::Del { .. }) {
        bail!(
            "jsonkv has no {} verb (it has get, set and del)",
            verb.name()
        );
    }
    let mut client = JsonkvClient::connect(&addr, timeout)
        .await
        .with_context(|| format!("cannot reach a jsonkv server at {addr}"))?;
    let name = verb.name();
    let context = || format!("{name} failed");
    match verb {
        Verb::Get { key, .. } => match client.get(&key).await.with_context(context)? {
            Some(value) => print(
                json_mode,
                json!({ "key": key, "value": value }),
                value.clone(),
            ),
            None => not_found(json_mode, &key, "(not found)"),
        },
        Verb::Set { key, value, .. } => {
            client.put(&key, &value).await.with_context(context)?;
            print(json_mode, json!({ "key": key, "ok": true }), "OK".into());
        }
        Verb::Del { key, .. } => {
            let existed = client.delete(&key).await.with_context(context)?;
            print(
                json_mode,
                json!({ "key": key, "deleted": existed }),
                if existed { "deleted" } else { "(not found)" }.into(),
            );
        }
        other => bail!("jsonkv has no {} verb", other.name()),
    }
    Ok(())
}
