//! minority verbs: get, set, del, watch.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::{not_found, print, show_bytes, Proto, Verb};
use polykv_client::minority::MinorityClient;

/// minority keys are `DATAID` or `DATAID/DATANUMID` on the command line.
fn minority_key(key: &str) -> (&[u8], &[u8]) {
    match key.split_once('/') {
        Some((data_id, datanum_id)) => (data_id.as_bytes(), datanum_id.as_bytes()),
        None => (key.as_bytes(), b""),
    }
}

pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Minority.default_addr());
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
                None => not_found(json_mode, &key, "(not found)"),
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
