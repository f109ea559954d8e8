//! polykv: several AppendEntries requests in flight to one follower.
//!
//! 0.9's replication stream sends a request and waits for its answer before it sends the
//! next, so an entry appended meanwhile waits for the whole round before its own. Here, while
//! the follower's log is known to match (the core decides: see
//! `ProgressEntry::next_send_pipelined`), each new range of entries is sent at once after the
//! requests still in flight, each on a connection of its own from `spare_networks`; the
//! answers are taken in the order the requests were sent and reported to the core as before.
//! Heartbeats, snapshots and retries keep 0.9's one-at-a-time path, which first waits for the
//! pipelined requests to be answered.

use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;

use super::ReplicationCore;
use crate::error::decompose::DecomposeResult;
use crate::error::RPCError;
use crate::error::ReplicationClosed;
use crate::error::ReplicationError;
use crate::error::Timeout;
use crate::log_id_range::LogIdRange;
use crate::network::RPCOption;
use crate::network::RPCTypes;
use crate::network::RaftNetwork;
use crate::network::RaftNetworkFactory;
use crate::raft::AppendEntriesRequest;
use crate::raft::AppendEntriesResponse;
use crate::replication::request::Data;
use crate::replication::request::DataWithId;
use crate::replication::response::ReplicationResult;
use crate::replication::Response;
use crate::storage::RaftLogReader;
use crate::storage::RaftLogStorage;
use crate::type_config::alias::InstantOf;
use crate::type_config::TypeConfigExt;
use crate::LogId;
use crate::LogIdOptionExt;
use crate::RaftLogId;
use crate::RaftTypeConfig;

/// The answer to a pipelined request, with the connection that carried it.
pub(crate) struct PipelinedReply<C, Net>
where C: RaftTypeConfig
{
    network: Net,
    chain: Option<u64>,
    log_ids: DataWithId<LogIdRange<C::NodeId>>,
    sending_range: LogIdRange<C::NodeId>,
    leader_time: InstantOf<C>,
    result: Result<AppendEntriesResponse<C::NodeId>, ReplicationError<C::NodeId, C::Node>>,
}

impl<C, N, LS> ReplicationCore<C, N, LS>
where
    C: RaftTypeConfig,
    N: RaftNetworkFactory<C>,
    LS: RaftLogStorage<C>,
{
    /// Whether `log_ids` may go out before the requests in flight are answered: it starts
    /// where the last one ends (or nothing is in flight), and no retry, backoff or snapshot
    /// is going on.
    pub(super) fn can_pipeline(&self, log_ids: &DataWithId<LogIdRange<C::NodeId>>) -> bool {
        let chained = self.pipeline.is_empty() || log_ids.data().prev == self.pipeline_tail;
        let spare = !self.spare_networks.is_empty() || !self.pipeline.is_empty();
        spare
            && chained
            && self.backoff.is_none()
            && !self.entries_hint.is_active()
            && self.snapshot_state.is_none()
    }

    /// Reads the entries of `log_ids` and sends them without waiting for the answer.
    pub(super) async fn send_pipelined(
        &mut self,
        log_ids: DataWithId<LogIdRange<C::NodeId>>,
        chain: Option<u64>,
    ) -> Result<(), ReplicationClosed> {
        while self.spare_networks.is_empty() {
            self.take_one_reply().await?;
        }
        let Some(mut network) = self.spare_networks.pop() else {
            return Err(ReplicationClosed::new("no connection for a pipelined append"));
        };

        let rng = log_ids.data().clone();
        let start = rng.prev.next_index();
        let end = rng.last.next_index();
        let logs = match self.log_reader.limited_get_log_entries(start, end).await {
            Ok(logs) => logs,
            Err(error) => {
                tracing::error!(error=%error, "error replication to target={}", self.target);
                let _ = self.tx_raft_core.send(crate::core::notify::Notify::Network {
                    response: Response::StorageError { error },
                });
                return Err(ReplicationClosed::new("log store failed"));
            }
        };
        // An empty read answers as a heartbeat at `prev` (as 0.9 does), after a pause so that
        // a faulty store does not make this spin.
        let sending_range = match logs.last() {
            Some(last) => LogIdRange::new(rng.prev.clone(), Some(last.get_log_id().clone())),
            None => {
                C::sleep(Duration::from_millis(10)).await;
                LogIdRange::new(rng.prev.clone(), rng.prev.clone())
            }
        };
        self.pipeline_tail = sending_range.last.clone();

        let leader_time = C::now();
        let payload = AppendEntriesRequest {
            vote: self.session_id.vote_ref().clone(),
            prev_log_id: sending_range.prev.clone(),
            leader_commit: self.committed.clone(),
            entries: logs,
        };
        // The committed index goes with this request.
        self.commit_due = None;
        // polykv: not the heartbeat interval (see `Config::append_entries_timeout`).
        let the_timeout = self.config.append_entries_timeout();
        let timeout = Timeout {
            action: RPCTypes::AppendEntries,
            id: self.session_id.vote_ref().leader_id().voted_for().unwrap(),
            target: self.target.clone(),
            timeout: the_timeout,
        };
        // First polled in the order pushed (`FuturesOrdered`), so the requests go out in order.
        self.pipeline.push_back(Box::pin(async move {
            let answered = C::timeout(the_timeout, network.append_entries(payload, RPCOption::new(the_timeout))).await;
            let result = match answered {
                Err(_) => Err(ReplicationError::from(RPCError::Timeout(timeout))),
                Ok(answer) => DecomposeResult::<C, _, _>::decompose_infallible(answer).map_err(ReplicationError::from),
            };
            PipelinedReply {
                network,
                chain,
                log_ids,
                sending_range,
                leader_time,
                result,
            }
        }));
        // Polled once now, so that the request goes out now, not at the next wait.
        if let Some(Some(reply)) = self.pipeline.next().now_or_never() {
            self.on_pipelined_reply(reply)?;
        }
        Ok(())
    }

    /// Waits for every pipelined request to be answered.
    pub(super) async fn finish_pipeline(&mut self) -> Result<(), ReplicationClosed> {
        while !self.pipeline.is_empty() {
            self.take_one_reply().await?;
        }
        Ok(())
    }

    async fn take_one_reply(&mut self) -> Result<(), ReplicationClosed> {
        match self.pipeline.next().await {
            Some(reply) => self.on_pipelined_reply(reply),
            None => Ok(()),
        }
    }

    /// Reports the answer to a pipelined request to the core, as 0.9's one-at-a-time path
    /// does. A failure is reported too: the core then ends the pipeline and sends again.
    pub(super) fn on_pipelined_reply(&mut self, reply: PipelinedReply<C, N::Network>) -> Result<(), ReplicationClosed> {
        let PipelinedReply {
            network,
            chain,
            log_ids,
            sending_range,
            leader_time,
            result,
        } = reply;
        self.spare_networks.push(network);
        self.current_chain = chain;
        let request_id = log_ids.request_id();

        match result {
            Ok(AppendEntriesResponse::Success) => self.pipelined_success(sending_range.last, leader_time, log_ids),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                self.pipelined_success(matching, leader_time, log_ids)
            }
            Ok(AppendEntriesResponse::Conflict) => {
                if let Some(conflict) = sending_range.prev {
                    self.send_progress(request_id, ReplicationResult::new(leader_time, Err(conflict)));
                }
            }
            Ok(AppendEntriesResponse::HigherVote(vote)) => {
                let _ = self.tx_raft_core.send(crate::core::notify::Notify::Network {
                    response: Response::HigherVote {
                        target: self.target.clone(),
                        higher: vote,
                        sender_vote: self.session_id.vote_ref().clone(),
                    },
                });
                return Err(ReplicationClosed::new("a follower has a higher vote"));
            }
            Err(ReplicationError::RPCError(err)) => {
                tracing::warn!(error=%err, "error replication to target={}", self.target);
                match &err {
                    RPCError::Unreachable(_) if self.backoff.is_none() => {
                        self.backoff = Some(self.network.backoff());
                    }
                    RPCError::PayloadTooLarge(too_large) => self.update_hint(too_large),
                    _ => {}
                }
                self.send_progress_error(request_id, err);
            }
            Err(other) => return Err(ReplicationClosed::new(other.to_string())),
        }

        if self.pipeline.is_empty() && self.heartbeat_deferred {
            self.heartbeat_deferred = false;
            if self.next_action.is_none() && self.queued.is_empty() {
                self.next_action = Some(Data::new_heartbeat());
            }
        }
        Ok(())
    }

    fn pipelined_success(
        &mut self,
        matching: Option<LogId<C::NodeId>>,
        leader_time: InstantOf<C>,
        log_ids: DataWithId<LogIdRange<C::NodeId>>,
    ) {
        let rest = self.finish_success_append(matching, leader_time, log_ids);
        // The rest of a request only partly taken goes out next if nothing follows it;
        // otherwise the requests after it conflict, and the core sends again from the match.
        if self.pipeline.is_empty() && self.next_action.is_none() && self.queued.is_empty() {
            self.next_action = rest;
        }
    }
}
