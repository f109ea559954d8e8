//! Leader-side batching of proposals into Raft entries.
//!
//! One proposal per entry would cost an fsync on each node and a replication round trip per
//! write. Proposals are therefore queued here, and every proposal that arrives while earlier
//! entries are in flight goes into the next entry: concurrent writers share one entry, one
//! fsync and one replication round trip. A few entries are in flight at once, so the next batch
//! gathers while the previous one is committed.
//!
//! No task of its own stands between a writer and openraft: the writer that finds a free slot
//! proposes the queue itself, and the entry's [`BatchResponder`] — answered by the state
//! machine worker right after the apply (see `vendor/README.md`) — hands each writer its own
//! outcome and proposes whatever queued meanwhile. A write's answer thus takes no hop between
//! the apply and the writer's task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::error::ClientWriteError;
use openraft::raft::responder::{OneshotResponder, Responder};
use openraft::raft::ClientWriteResult;
use parking_lot::Mutex;
use polykv_engine::{Outcome, Proposal};
use tokio::sync::oneshot;

use crate::timing::{self, Hop};
use crate::wire::ForwardError;
use crate::{Raft, Request, TypeConfig};

/// Most proposals in one entry.
const MAX_BATCH: usize = 1024;
/// Entries proposed and not yet answered at once. `POLYKV_CLUSTER_ENTRY_SLOTS=N` overrides it
/// (for measurements).
const IN_FLIGHT: usize = 4;

/// Proposals waiting for an entry (bounded: over it, a write is refused as unavailable).
const QUEUE: usize = 16 * 1024;

type Answer = Result<Option<Outcome>, ForwardError>;

struct Queued {
    proposal: Proposal,
    sync: bool,
    reply: oneshot::Sender<Answer>,
    since: Instant,
}

/// An entry proposed and not answered yet. It stops holding its slot once answered, or once
/// its deadline passed (an entry openraft never answers does not block the batcher).
struct Flight {
    answered: AtomicBool,
    deadline: Instant,
}

struct State {
    queue: Vec<Queued>,
    flights: Vec<Arc<Flight>>,
}

struct Shared {
    raft: Raft,
    timeout: Duration,
    /// Entries proposed and not yet answered at once.
    in_flight: usize,
    state: Mutex<State>,
}

/// Proposes through this node's Raft, batching concurrent proposals into entries.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// A batcher over `raft`; each write waits at most `timeout` for its answer.
    pub fn start(raft: Raft, timeout: Duration) -> Batcher {
        Batcher {
            shared: Arc::new(Shared {
                raft,
                timeout,
                in_flight: crate::tuning::number("POLYKV_CLUSTER_ENTRY_SLOTS", 1..=64, IN_FLIGHT),
                state: Mutex::new(State {
                    queue: Vec::new(),
                    flights: Vec::new(),
                }),
            }),
        }
    }

    /// Proposes through this node (which believes it leads) and returns the outcome once the
    /// entry holding the proposal is committed and applied.
    pub async fn propose(&self, proposal: Proposal, sync: bool) -> Answer {
        let (reply, answer) = oneshot::channel();
        let since = Instant::now();
        {
            let mut state = self.shared.state.lock();
            if state.queue.len() >= QUEUE {
                return Err(ForwardError::Unknown("too many writes waiting".into()));
            }
            state.queue.push(Queued {
                proposal,
                sync,
                reply,
                since,
            });
        }
        self.shared.launch();
        let answer = match tokio::time::timeout(self.shared.timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ForwardError::Unknown("the node stopped".into())),
            Err(_) => {
                // Slots held by entries past their deadline are free again.
                self.shared.launch();
                Err(ForwardError::Unknown("not committed in time".into()))
            }
        };
        timing::record(Hop::Propose, since);
        answer
    }
}

impl Shared {
    /// Proposes the queued proposals as one entry if a slot is free.
    fn launch(self: &Arc<Self>) {
        let (batch, flight) = {
            let mut state = self.state.lock();
            if state.queue.is_empty() {
                return;
            }
            let now = Instant::now();
            state
                .flights
                .retain(|f| !f.answered.load(Ordering::Acquire) && f.deadline > now);
            if state.flights.len() >= self.in_flight {
                return;
            }
            let take = state.queue.len().min(MAX_BATCH);
            let batch: Vec<Queued> = state.queue.drain(..take).collect();
            let flight = Arc::new(Flight {
                answered: AtomicBool::new(false),
                deadline: now + self.timeout,
            });
            state.flights.push(flight.clone());
            (batch, flight)
        };
        let sync = batch.iter().any(|q| q.sync);
        let mut proposals = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for queued in batch {
            timing::record(Hop::Queue, queued.since);
            proposals.push(queued.proposal);
            replies.push(queued.reply);
        }
        let responder = BatchResponder::Batch(Box::new(Waiting {
            replies,
            flight,
            batcher: Arc::downgrade(self),
            proposed: Instant::now(),
        }));
        // Fails only when the Raft core stopped: the responder, dropped, fails its writers.
        let _ = self
            .raft
            .client_write_with(Request { proposals, sync }, responder);
    }
}

/// The writers of one entry, waiting for it to be applied.
pub struct Waiting {
    replies: Vec<oneshot::Sender<Answer>>,
    flight: Arc<Flight>,
    batcher: Weak<Shared>,
    proposed: Instant,
}

impl Waiting {
    fn answer(&mut self, result: ClientWriteResult<TypeConfig>) {
        timing::record(Hop::Commit, self.proposed);
        let replies = std::mem::take(&mut self.replies);
        match result {
            Ok(written) => {
                let mut outcomes = written.data.outcomes.into_iter();
                for reply in replies {
                    let _ = reply.send(Ok(outcomes.next().flatten()));
                }
            }
            Err(e) => {
                let error = match e {
                    // Not proposed: safe to send again to the leader.
                    ClientWriteError::ForwardToLeader(f) => ForwardError::NotLeader(f.leader_id),
                    e => ForwardError::Unknown(e.to_string()),
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Drop for Waiting {
    /// Frees the slot (the entry was answered, or will never be) and proposes what queued.
    fn drop(&mut self) {
        for reply in self.replies.drain(..) {
            let _ = reply.send(Err(ForwardError::Unknown(
                "the entry was not answered".into(),
            )));
        }
        self.flight.answered.store(true, Ordering::Release);
        if let Some(batcher) = self.batcher.upgrade() {
            batcher.launch();
        }
    }
}

/// How openraft answers a client write: a batch of writers (the batcher's entries), or one
/// caller of `Raft::client_write` or of a membership change.
pub enum BatchResponder {
    Batch(Box<Waiting>),
    Oneshot(OneshotResponder<TypeConfig>),
}

impl From<OneshotResponder<TypeConfig>> for BatchResponder {
    fn from(oneshot: OneshotResponder<TypeConfig>) -> BatchResponder {
        BatchResponder::Oneshot(oneshot)
    }
}

impl Responder<TypeConfig> for BatchResponder {
    type Receiver = <OneshotResponder<TypeConfig> as Responder<TypeConfig>>::Receiver;

    fn from_app_data(app_data: Request) -> (Request, Self, Self::Receiver) {
        let (app_data, oneshot, rx) = OneshotResponder::from_app_data(app_data);
        (app_data, BatchResponder::Oneshot(oneshot), rx)
    }

    fn send(self, result: ClientWriteResult<TypeConfig>) {
        match self {
            BatchResponder::Batch(mut waiting) => waiting.answer(result),
            BatchResponder::Oneshot(oneshot) => oneshot.send(result),
        }
    }
}
