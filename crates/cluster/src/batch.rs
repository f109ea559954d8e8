//! Leader-side batching of proposals into Raft entries.
//!
//! One proposal per entry would cost an fsync on each node and a replication round trip per
//! write. Proposals are therefore queued here, and every proposal that arrives while earlier
//! entries are in flight goes into the next entry: concurrent writers share one entry, one
//! fsync and one replication round trip. A few entries are in flight at once, so the next batch gathers while
//! the previous one is committed.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use polykv_engine::{Outcome, Proposal};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::wire::ForwardError;
use crate::{Raft, Request};

/// Most proposals in one entry.
const MAX_BATCH: usize = 1024;
/// Entries proposed and not yet committed at once.
const IN_FLIGHT: usize = 4;
/// Proposals waiting for an entry (bounded: writers wait when it is full).
const QUEUE: usize = 16 * 1024;

type Answer = Result<Option<Outcome>, ForwardError>;

struct Queued {
    proposal: Proposal,
    sync: bool,
    reply: oneshot::Sender<Answer>,
}

/// Hands proposals to the batching task.
pub(crate) struct Batcher {
    tx: mpsc::Sender<Queued>,
}

impl Batcher {
    /// Starts the batching task over `raft`; each entry waits at most `timeout` for its commit.
    pub fn start(raft: Raft, timeout: Duration) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx, timeout));
        Batcher { tx }
    }

    /// Proposes through this node (which believes it leads) and returns the outcome once the
    /// entry holding the proposal is committed and applied.
    pub async fn propose(&self, proposal: Proposal, sync: bool) -> Answer {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            proposal,
            sync,
            reply,
        };
        if self.tx.send(queued).await.is_err() {
            return Err(ForwardError::NotLeader(None));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ForwardError::Unknown("the node stopped".into())))
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Queued>, timeout: Duration) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot first lets more proposals gather into this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let sync = batch.iter().any(|q| q.sync);
            let (proposals, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|q| (q.proposal, q.reply)).unzip();
            let request = Request { proposals, sync };
            let fail = |replies: Vec<oneshot::Sender<Answer>>, error: ForwardError| {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            };
            match tokio::time::timeout(timeout, raft.client_write(request)).await {
                Ok(Ok(written)) => {
                    let mut outcomes = written.data.outcomes.into_iter();
                    for reply in replies {
                        let _ = reply.send(Ok(outcomes.next().flatten()));
                    }
                }
                // Not proposed: safe to send again to the leader.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    fail(replies, ForwardError::NotLeader(f.leader_id))
                }
                Ok(Err(e)) => fail(replies, ForwardError::Unknown(e.to_string())),
                Err(_) => fail(
                    replies,
                    ForwardError::Unknown("not committed in time".into()),
                ),
            }
            drop(slot);
        });
    }
}
