//! Group commit: one persister thread issues one fdatasync for every write that arrived while
//! the previous one ran, then releases all of their waiters together.
//!
//! Writes are numbered (`applied`) as they are applied. A Sync writer asks for "synced ≥ my
//! number" and waits. The persister reads the highest applied number, syncs, and publishes it as
//! the new synced mark. A failed sync poisons the engine: waiters that the failed sync should have
//! covered get an error, and so does every later write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::{PersistMode, Store};

/// The poisoned flag shared by everything that writes.
#[derive(Default)]
pub(crate) struct Poison {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    pub fn set(&self, reason: String) {
        let mut slot = self.reason.lock();
        if slot.is_none() {
            tracing::error!(%reason, "store poisoned: no further writes are accepted until restart");
            *slot = Some(reason);
        }
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn check(&self) -> Result<()> {
        if self.flag.load(Ordering::Relaxed) {
            return Err(Error::Poisoned(self.reason().unwrap_or_default()));
        }
        Ok(())
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }
}

#[derive(Debug, Clone, Default)]
struct Synced {
    upto: u64,
    failed: Option<String>,
    stopped: bool,
}

#[derive(Default)]
struct Request {
    wanted: u64,
    stop: bool,
}

/// Counters of the persister.
#[derive(Debug, Default)]
pub struct SyncCounters {
    pub syncs: AtomicU64,
    pub synced_writes: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub max_batch: AtomicU64,
}

pub(crate) struct Persister {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Arc<dyn Store>,
    poison: Arc<Poison>,
    applied: Arc<AtomicU64>,
    request: Mutex<Request>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    counters: SyncCounters,
    interval: Duration,
}

impl Persister {
    pub fn start(
        store: Arc<dyn Store>,
        poison: Arc<Poison>,
        applied: Arc<AtomicU64>,
        interval: Duration,
    ) -> Self {
        let start = applied.load(Ordering::SeqCst);
        let shared = Arc::new(Shared {
            store,
            poison,
            applied,
            request: Mutex::new(Request::default()),
            wake: Condvar::new(),
            synced: watch::channel(Synced {
                upto: start,
                failed: None,
                stopped: false,
            })
            .0,
            counters: SyncCounters::default(),
            interval,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("polykv-persister".into())
            .spawn(move || worker.run())
            .ok();
        if thread.is_none() {
            shared
                .poison
                .set("cannot start the persister thread".into());
        }
        Persister {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Waits until write number `seq` is on stable storage.
    pub async fn wait_synced(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.synced.subscribe();
        if rx.borrow().upto >= seq {
            return Ok(());
        }
        {
            let mut request = self.shared.request.lock();
            request.wanted = request.wanted.max(seq);
        }
        self.shared.wake.notify_one();
        let state = rx
            .wait_for(|s| s.upto >= seq || s.failed.is_some() || s.stopped)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        if state.upto >= seq {
            Ok(())
        } else if let Some(reason) = &state.failed {
            Err(Error::Poisoned(reason.clone()))
        } else {
            Err(Error::ShuttingDown)
        }
    }

    pub fn counters(&self) -> &SyncCounters {
        &self.shared.counters
    }

    /// Syncs what is left and stops the thread.
    pub fn stop(&self) {
        self.shared.request.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let stop = {
                let mut request = self.request.lock();
                let synced = self.synced.borrow().upto;
                if request.wanted <= synced && !request.stop {
                    // Nothing asked for: sync anyway every `interval`, so Async writes reach the
                    // disk shortly after they were acknowledged.
                    self.wake.wait_for(&mut request, self.interval);
                }
                request.stop
            };
            let target = self.applied.load(Ordering::SeqCst);
            let synced = self.synced.borrow().upto;
            if target > synced && !self.sync(synced, target) {
                return;
            }
            if stop {
                self.synced.send_modify(|s| s.stopped = true);
                return;
            }
        }
    }

    /// One group commit. Returns false when the store is poisoned.
    fn sync(&self, synced: u64, target: u64) -> bool {
        if let Err(e) = self.poison.check() {
            self.synced.send_modify(|s| s.failed = Some(e.to_string()));
            return false;
        }
        let started = Instant::now();
        match self.store.persist(PersistMode::SyncData) {
            Ok(()) => {
                let batch = target - synced;
                let c = &self.counters;
                c.syncs.fetch_add(1, Ordering::Relaxed);
                c.synced_writes.fetch_add(batch, Ordering::Relaxed);
                c.sync_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                c.max_batch.fetch_max(batch, Ordering::Relaxed);
                metrics::histogram!("polykv_journal_sync_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("polykv_journal_sync_batch_size").record(batch as f64);
                self.synced.send_modify(|s| s.upto = target);
                true
            }
            Err(e) => {
                let reason = format!("fdatasync failed: {e}");
                self.poison.set(reason.clone());
                self.synced.send_modify(|s| s.failed = Some(reason));
                false
            }
        }
    }
}
