//! smalld verbs: get, set.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::{not_found, print, show_bytes, Proto, Verb};
use polykv_client::smalld::SmalldClient;

pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let target = verb.target();
    let addr = target
        .addr
        .clone()
        .unwrap_or_else(|| Proto::Smalld.default_addr());
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
            None => not_found(json_mode, &name, "(failure: not found)"),
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
