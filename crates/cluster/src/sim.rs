//! An in-process transport for tests: every node's handler in one router, and messages that
//! are dropped, delayed, duplicated or cut by partitions, as the test says. Every message goes
//! through the wire codec on the way, as it would over TCP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::transport::{CallFuture, Handler, Transport, TransportError};
use crate::wire::{self, Envelope, Rpc};
use crate::NodeId;

/// The faults applied to every message.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that a request, or its reply, is lost.
    pub drop: f64,
    /// Probability that a request is delivered twice.
    pub duplicate: f64,
    /// Each message waits a random time up to this.
    pub max_delay: Duration,
    /// Every AppendEntries request carrying entries waits this long before it is delivered (a
    /// follower slow to append and flush).
    pub slow_appends: Duration,
}

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, Arc<dyn Handler>>,
    /// Directed links that are cut.
    cut: HashSet<(NodeId, NodeId)>,
    faults: Faults,
    /// AppendEntries requests carrying entries, in flight per directed link, and the most seen.
    appends_in_flight: HashMap<(NodeId, NodeId), u64>,
    most_appends_in_flight: u64,
}

/// The in-process network of a test cluster.
pub struct Router {
    state: Mutex<State>,
    rng: Mutex<StdRng>,
}

impl Router {
    pub fn new(seed: u64) -> Arc<Router> {
        Arc::new(Router {
            state: Mutex::new(State::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// The transport node `from` sends with.
    pub fn transport(self: &Arc<Self>, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            from,
            router: self.clone(),
        })
    }

    pub fn register(&self, id: NodeId, handler: Arc<dyn Handler>) {
        self.state.lock().nodes.insert(id, handler);
    }

    /// The node is gone (killed): nothing reaches it.
    pub fn unregister(&self, id: NodeId) {
        self.state.lock().nodes.remove(&id);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// Cuts every link between the groups (each node talks only within its group).
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut state = self.state.lock();
        state.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in a.iter() {
                        for y in b.iter() {
                            state.cut.insert((*x, *y));
                        }
                    }
                }
            }
        }
    }

    /// Cuts one direction of one link: whatever `from` sends `to` is lost, its requests and
    /// its replies to `to`'s requests (which still reach `from`, and `from` acts on them).
    pub fn cut_link(&self, from: NodeId, to: NodeId) {
        self.state.lock().cut.insert((from, to));
    }

    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    /// The most AppendEntries requests carrying entries that were in flight at once on one
    /// link (a leader that pipelines sends more than one).
    pub fn most_appends_in_flight(&self) -> u64 {
        self.state.lock().most_appends_in_flight
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().random::<f64>() < p
    }

    fn delay(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let micros = self.rng.lock().random_range(0..max.as_micros() as u64);
        Duration::from_micros(micros)
    }
}

struct SimTransport {
    from: NodeId,
    router: Arc<Router>,
}

/// Counts an AppendEntries request carrying entries as in flight on its link while it lives.
struct AppendInFlight<'a> {
    router: &'a Router,
    link: (NodeId, NodeId),
}

impl<'a> AppendInFlight<'a> {
    fn start(router: &'a Router, link: (NodeId, NodeId), rpc: &Rpc) -> Option<Self> {
        if !matches!(rpc, Rpc::AppendEntries(req) if !req.entries.is_empty()) {
            return None;
        }
        let mut state = router.state.lock();
        let now = state.appends_in_flight.entry(link).or_default();
        *now += 1;
        let now = *now;
        state.most_appends_in_flight = state.most_appends_in_flight.max(now);
        Some(AppendInFlight { router, link })
    }
}

impl Drop for AppendInFlight<'_> {
    fn drop(&mut self) {
        if let Some(now) = self
            .router
            .state
            .lock()
            .appends_in_flight
            .get_mut(&self.link)
        {
            *now = now.saturating_sub(1);
        }
    }
}

/// Sends the request through the codec, as TCP would.
fn through_codec(rpc: Rpc) -> Result<Rpc, TransportError> {
    let mut buf = Vec::new();
    wire::encode(&Envelope::Call { id: 0, rpc }, &mut buf)
        .map_err(|e| TransportError::TooLarge(e.to_string()))?;
    match wire::decode(&buf) {
        Ok(Some((Envelope::Call { rpc, .. }, _))) => Ok(rpc),
        other => panic!("the codec lost a message: {other:?}"),
    }
}

impl Transport for SimTransport {
    fn call<'a>(
        &'a self,
        target: NodeId,
        _addr: &'a str,
        rpc: Rpc,
        timeout: Duration,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let router = &self.router;
            let in_flight = AppendInFlight::start(router, (self.from, target), &rpc);
            let (handler, faults, cut) = {
                let state = router.state.lock();
                (
                    state.nodes.get(&target).cloned(),
                    state.faults.clone(),
                    state.cut.contains(&(self.from, target)),
                )
            };
            let Some(handler) = handler.filter(|_| !cut) else {
                return Err(TransportError::Unreachable(target, "partitioned".into()));
            };
            let lost = |router: &Router| async move {
                tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
                let _ = router;
                Err(TransportError::Timeout(target))
            };
            if router.roll(faults.drop) {
                return lost(router).await;
            }
            // Counted in flight: an AppendEntries carrying entries.
            if in_flight.is_some() {
                tokio::time::sleep(faults.slow_appends).await;
            }
            let rpc = through_codec(rpc)?;
            tokio::time::sleep(router.delay(faults.max_delay)).await;
            if router.roll(faults.duplicate) {
                let twin = handler.clone();
                let copy = rpc.clone();
                let from = self.from;
                tokio::spawn(async move {
                    twin.handle(from, copy).await;
                });
            }
            let reply = match tokio::time::timeout(timeout, handler.handle(self.from, rpc)).await {
                Ok(reply) => reply,
                Err(_) => return Err(TransportError::Timeout(target)),
            };
            let cut_back = router.state.lock().cut.contains(&(target, self.from));
            if cut_back || router.roll(faults.drop) {
                return lost(router).await;
            }
            tokio::time::sleep(router.delay(faults.max_delay)).await;
            Ok(reply)
        })
    }
}
