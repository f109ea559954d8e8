//! A follower's appends, merged: the leader pipelines its AppendEntries requests (several in
//! flight), and those that wait on the follower's connection while it flushes the one before
//! go to its log together, as one append and one fsync. Each request still gets its own
//! answer, told from the merged one.

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::RaftLogId;

use crate::{LogId, NodeId, TypeConfig};

/// Most requests merged into one append (bounds the work one append holds back).
pub const MAX_MERGED: usize = 32;

/// Most entries in one merged append.
pub const MAX_MERGED_ENTRIES: usize = 4096;

/// The log ids one request covers: after `prev`, up to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub prev: Option<LogId>,
    pub last: Option<LogId>,
}

/// The span of `req`.
pub fn span(req: &AppendEntriesRequest<TypeConfig>) -> Span {
    let last = match req.entries.last() {
        Some(entry) => Some(*entry.get_log_id()),
        None => req.prev_log_id,
    };
    Span {
        prev: req.prev_log_id,
        last,
    }
}

/// Whether `next` starts where `merged` ends, from the same leader, and fits.
pub fn continues(
    merged: &AppendEntriesRequest<TypeConfig>,
    next: &AppendEntriesRequest<TypeConfig>,
) -> bool {
    next.vote == merged.vote
        && next.prev_log_id == span(merged).last
        && merged.entries.len() + next.entries.len() <= MAX_MERGED_ENTRIES
}

/// Appends `next` (which [`continues`] `merged`) to `merged`.
pub fn append(
    merged: &mut AppendEntriesRequest<TypeConfig>,
    next: AppendEntriesRequest<TypeConfig>,
) {
    merged.entries.extend(next.entries);
    merged.leader_commit = merged.leader_commit.max(next.leader_commit);
}

type Answer = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;

/// The answer to the request of `span`, from the answer to the merged append it was part of.
///
/// Success and a higher vote hold for every part. A conflict is at the first part's `prev`:
/// the follower appended nothing, so no later part's `prev` is there either. A partial success
/// up to `m` is a success for the parts that end at or before `m`, partial for the one `m`
/// falls in, and a conflict for those after it.
pub fn answer_for(span: Span, merged: &Answer) -> Answer {
    use AppendEntriesResponse::*;
    match merged {
        Ok(Success) => Ok(Success),
        Ok(Conflict) => Ok(Conflict),
        Ok(HigherVote(vote)) => Ok(HigherVote(*vote)),
        Ok(PartialSuccess(m)) if *m >= span.last => Ok(Success),
        Ok(PartialSuccess(m)) if *m >= span.prev => Ok(PartialSuccess(*m)),
        Ok(PartialSuccess(_)) => Ok(Conflict),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Vote};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn request(
        term: u64,
        prev: Option<u64>,
        entries: std::ops::Range<u64>,
        commit: Option<u64>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev.map(|i| log_id(term, i)),
            leader_commit: commit.map(|i| log_id(term, i)),
            entries: entries
                .map(|i| Entry::<TypeConfig> {
                    log_id: log_id(term, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    #[test]
    fn a_request_that_starts_where_the_merged_ends_is_merged() {
        let mut merged = request(2, Some(4), 5..8, Some(3));
        let next = request(2, Some(7), 8..10, Some(6));
        assert!(continues(&merged, &next));
        append(&mut merged, next);
        assert_eq!(
            span(&merged),
            Span {
                prev: Some(log_id(2, 4)),
                last: Some(log_id(2, 9))
            }
        );
        assert_eq!(merged.entries.len(), 5);
        assert_eq!(merged.leader_commit, Some(log_id(2, 6)));
        // A heartbeat at the end continues it too, and carries only its commit index.
        let heartbeat = request(2, Some(9), 9..9, Some(8));
        assert!(continues(&merged, &heartbeat));
    }

    #[test]
    fn a_gap_an_overlap_or_another_leader_is_not_merged() {
        let merged = request(2, Some(4), 5..8, None);
        assert!(
            !continues(&merged, &request(2, Some(8), 9..10, None)),
            "gap"
        );
        assert!(
            !continues(&merged, &request(2, Some(5), 6..9, None)),
            "overlap"
        );
        assert!(
            !continues(&merged, &request(3, Some(7), 8..9, None)),
            "other vote"
        );
        let huge = request(2, Some(7), 8..(8 + MAX_MERGED_ENTRIES as u64), None);
        assert!(!continues(&merged, &huge), "too many entries");
    }

    #[test]
    fn each_part_gets_the_answer_that_holds_for_it() {
        let first = Span {
            prev: Some(log_id(2, 4)),
            last: Some(log_id(2, 7)),
        };
        let second = Span {
            prev: Some(log_id(2, 7)),
            last: Some(log_id(2, 9)),
        };
        let third = Span {
            prev: Some(log_id(2, 9)),
            last: Some(log_id(2, 12)),
        };
        let success: Answer = Ok(AppendEntriesResponse::Success);
        let conflict: Answer = Ok(AppendEntriesResponse::Conflict);
        for span in [first, second, third] {
            assert_eq!(answer_for(span, &success), success);
            assert_eq!(answer_for(span, &conflict), conflict);
        }
        let higher: Answer = Ok(AppendEntriesResponse::HigherVote(Vote::new(3, 2)));
        assert_eq!(answer_for(second, &higher), higher);
        let partial: Answer = Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 8))));
        assert_eq!(answer_for(first, &partial), success);
        assert_eq!(answer_for(second, &partial), partial);
        assert_eq!(answer_for(third, &partial), conflict);
    }
}
