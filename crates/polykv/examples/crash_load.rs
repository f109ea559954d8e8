//! Load for scripts/crash-server.sh: writes through nmdb (SYNC and normal), minority, smalld,
//! OpenCluster (full wait and not) and jsonkv, printing every acknowledged write as
//! `PROTO KEY VALUE`, until the server dies; or verifies that every acknowledged write is still
//! there.
//!
//! `crash_load write NMDB MINORITY SMALLD SMALLD_KEY OPENCLUSTER JSONKV CYCLE`
//! `crash_load verify NMDB MINORITY SMALLD SMALLD_KEY OPENCLUSTER JSONKV < acknowledged.txt`

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use polykv_client::jsonkv::JsonkvClient;
use polykv_client::minority::MinorityClient;
use polykv_client::nmdb::{Mode, NmdbClient};
use polykv_client::opencluster::OpenClusterClient;
use polykv_client::smalld::SmalldClient;

const T: Duration = Duration::from_secs(5);

fn ack(proto: &str, key: &str, value: u64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{proto} {key} {value}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, nmdb, minority, smalld, key, opencluster, jsonkv, rest @ ..] = args.as_slice()
    else {
        eprintln!(
            "usage: crash_load write|verify NMDB MINORITY SMALLD SMALLD_KEY OPENCLUSTER JSONKV [CYCLE]"
        );
        std::process::exit(2);
    };
    let smalld_key: u32 = key.parse().expect("smalld key");
    if mode == "verify" {
        let addrs = [nmdb, minority, smalld, opencluster, jsonkv].map(String::as_str);
        std::process::exit(verify(addrs, smalld_key).await);
    }
    let base: u64 = rest.first().and_then(|c| c.parse().ok()).unwrap_or(0) * 1_000_000_000;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let addr = nmdb.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = NmdbClient::connect_tcp(&addr, T).await else {
                return;
            };
            let key = format!("n{t}");
            let mode = if t % 2 == 0 { Mode::Sync } else { Mode::Normal };
            for i in 1.. {
                let value = base + i;
                if c.set(key.as_bytes(), value.to_string().as_bytes(), mode)
                    .await
                    .is_err()
                {
                    return;
                }
                ack("nmdb", &key, value);
            }
        }));
    }
    for t in 0..2u64 {
        let addr = minority.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = MinorityClient::connect(&addr, T).await else {
                return;
            };
            let key = format!("m{t}");
            for i in 1.. {
                let value = base + i;
                if c.set(b"crash", key.as_bytes(), value.to_string().as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                ack("minority", &key, value);
            }
        }));
    }
    for t in 0..2i64 {
        let addr = opencluster.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = OpenClusterClient::connect(&addr, T).await else {
                return;
            };
            let key = format!("o{t}");
            for i in 1.. {
                let value = base + i;
                let full_wait = t == 0;
                let Ok(stored) = i64::try_from(value) else {
                    return;
                };
                if c.set_long(key.as_bytes(), stored, 0, full_wait)
                    .await
                    .is_err()
                {
                    return;
                }
                ack("opencluster", &key, value);
            }
        }));
    }
    for t in 0..2u64 {
        let addr = jsonkv.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = JsonkvClient::connect(&addr, T).await else {
                return;
            };
            let key = format!("j{t}");
            for i in 1.. {
                let value = base + i;
                if c.put(&key, &value.to_string()).await.is_err() {
                    return;
                }
                ack("jsonkv", &key, value);
            }
        }));
    }
    let addr = smalld.clone();
    tasks.push(tokio::spawn(async move {
        let c = SmalldClient::new(&addr, smalld_key, T);
        for i in 1.. {
            let value = base + i;
            match c.set(b"s0", value.to_string().as_bytes()).await {
                Ok(true) => ack("smalld", "s0", value),
                _ => return,
            }
        }
    }));
    for task in tasks {
        let _ = task.await;
    }
}

async fn verify(addrs: [&str; 5], smalld_key: u32) -> i32 {
    let [nmdb, minority, smalld, opencluster, jsonkv] = addrs;
    let mut newest: HashMap<(String, String), u64> = HashMap::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut parts = line.split_whitespace();
        let (Some(proto), Some(key), Some(value)) = (
            parts.next(),
            parts.next(),
            parts.next().and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let slot = newest
            .entry((proto.to_string(), key.to_string()))
            .or_insert(0);
        *slot = (*slot).max(value);
    }
    let mut n = NmdbClient::connect_tcp(nmdb, T).await.expect("nmdb");
    let mut m = MinorityClient::connect(minority, T)
        .await
        .expect("minority");
    let s = SmalldClient::new(smalld, smalld_key, T);
    let mut o = OpenClusterClient::connect(opencluster, T)
        .await
        .expect("opencluster");
    let mut j = JsonkvClient::connect(jsonkv, T).await.expect("jsonkv");
    let mut lost = 0;
    for ((proto, key), acked) in &newest {
        let stored = match proto.as_str() {
            "nmdb" => n
                .get(key.as_bytes(), Mode::Normal)
                .await
                .ok()
                .flatten()
                .map(|(v, _)| v),
            "minority" => m.get(b"crash", key.as_bytes()).await.ok().flatten(),
            "jsonkv" => j.get(key).await.ok().flatten().map(Into::into),
            "opencluster" => o
                .get_long(key.as_bytes())
                .await
                .ok()
                .flatten()
                .map(|v| v.to_string().into()),
            _ => s.get(key.as_bytes()).await.ok().flatten(),
        };
        let stored: Option<u64> = stored.and_then(|v| String::from_utf8_lossy(&v).parse().ok());
        if stored.is_none_or(|v| v < *acked) {
            eprintln!("LOST: {proto} {key}: acknowledged {acked}, found {stored:?}");
            lost += 1;
        }
    }
    println!(
        "verified {} keys, newest acknowledged values present: {}",
        newest.len(),
        newest.len() - lost
    );
    i32::from(lost > 0)
}
