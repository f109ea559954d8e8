//! Child process for the crash test (`tests/crash.rs`): concurrent Sync writers that print each
//! acknowledged write, until killed. `crash_writer DIR write|write-async|write-checkpointing|verify`:
//! `write` uses Sync writes, `write-async` Async ones (acknowledged once in the OS buffers: they
//! must survive the process being killed too), `write-checkpointing` Async ones with a checkpoint
//! every few milliseconds and tiny log segments, so kills land inside checkpoints and purges.

use std::io::Write;
use std::path::PathBuf;

use polykv_engine::{Durability, Engine, EngineConfig, Outcome, Value};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: crash_writer DIR write|verify"));
    let mode = args.next().unwrap_or_default();
    let mut config = EngineConfig::default();
    if mode == "write-checkpointing" {
        config.log.checkpoint_interval = std::time::Duration::from_millis(5);
        config.log.segment_bytes = 16 << 10;
    }
    let engine = Engine::open_dir(&dir, config).expect("open engine");
    let ks = engine.keyspace("crash").expect("keyspace");
    if mode == "verify" {
        // Print the state of every writer's key: "key value version".
        for (key, entry) in engine
            .scan(
                ks,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                1000,
            )
            .expect("scan")
        {
            let Value::I64(v) = entry.value else {
                panic!("bad value type")
            };
            println!("{} {} {}", String::from_utf8_lossy(&key), v, entry.version);
        }
        engine.close();
        return;
    }
    let durability = if mode == "write-async" || mode == "write-checkpointing" {
        Durability::Async
    } else {
        Durability::Sync
    };
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let key = format!("w{w:02}");
                for i in 1.. {
                    match engine
                        .set(ks, key.clone().into_bytes(), Value::I64(i), durability)
                        .await
                    {
                        Ok(Outcome::Written { version }) => {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{key} {i} {version}");
                            let _ = out.flush();
                        }
                        other => panic!("write failed: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}
