//! The messages between cluster peers and their framing.
//!
//! ```text
//! frame = [body length: u32 LE][body: postcard(Envelope)]
//! ```
//!
//! A connection carries many requests at once (multiplexed, pipelined): each request has an id
//! and its reply carries it back. The length is checked against [`MAX_FRAME`] before anything
//! is allocated; a frame that does not decode is garbage and ends the connection.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::{LogId, NodeId, Request, Response, TypeConfig};

/// Longest frame accepted: a log record's limit plus room for the envelope.
pub const MAX_FRAME: usize = polykv_engine::log::MAX_PAYLOAD + 64 * 1024;

/// Why a forwarded write or read index was not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader (the one it knows, if any, is given).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The write may or may not have been committed (the leader lost leadership meanwhile).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

/// A request from one peer to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write a follower took from a client, for the leader to propose.
    Forward(Request),
    /// A follower asks the leader for a read index (linearizable reads on followers).
    ReadIndex,
    /// Is the peer up, and which cluster does its data belong to (the founding node asks
    /// before it founds one).
    Ping,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Forward(Result<Response, ForwardError>),
    ReadIndex(Result<Option<LogId>, ForwardError>),
    /// The first log id of the cluster the peer's data belongs to, if any.
    Pong {
        cluster: Option<LogId>,
    },
}

/// What one frame carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum Envelope {
    Call { id: u64, rpc: Rpc },
    Answer { id: u64, reply: Reply },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Garbage(String),
}

/// Appends one frame to `out`; refuses a body over the limit (nothing is appended then).
pub fn encode(envelope: &Envelope, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    let body = postcard::to_extend(envelope, std::mem::take(out))
        .map_err(|e| WireError::Garbage(e.to_string()))?;
    *out = body;
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(WireError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// The length of the frame's body at the start of `buf`, once its 4-byte header is there;
/// checked against the limit before the caller allocates or waits for the body.
pub fn body_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Decodes one whole frame at the start of `buf`: the envelope and the bytes it took, or None
/// when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Envelope, usize)>, WireError> {
    let Some(len) = body_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let envelope = postcard::from_bytes(body).map_err(|e| WireError::Garbage(e.to_string()))?;
    Ok(Some((envelope, 4 + len)))
}

/// The fuzz body of the codec: decoding any bytes returns a frame, asks for more or refuses,
/// never panics; a decoded frame encodes again to a frame that decodes the same way.
pub fn fuzz_codec(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((envelope, used))) = decode(rest) {
        let mut again = Vec::new();
        if encode(&envelope, &mut again).is_ok() {
            let back = decode(&again);
            assert!(matches!(back, Ok(Some((_, n))) if n == again.len()));
        }
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polykv_engine::{Command, Proposal, Value};

    fn sample() -> Envelope {
        Envelope::Call {
            id: 7,
            rpc: Rpc::Forward(Request {
                proposals: vec![Proposal {
                    at_ms: 1,
                    command: Command::put(0, "k", Value::I32(1)),
                }],
                sync: true,
            }),
        }
    }

    #[test]
    fn frames_round_trip_and_every_cut_asks_for_more() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        encode(&sample(), &mut buf).unwrap();
        let (first, used) = decode(&buf).unwrap().unwrap();
        assert!(matches!(first, Envelope::Call { id: 7, .. }));
        assert!(decode(&buf[used..]).unwrap().is_some());
        for cut in 0..used {
            assert!(decode(&buf[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let header = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert_eq!(
            decode(&header).err(),
            Some(WireError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn garbage_is_refused_and_the_fuzz_body_replays_its_seeds() {
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(decode(&garbage), Err(WireError::Garbage(_))));
        let mut seeds = vec![garbage.to_vec(), Vec::new(), vec![0xff; 64]];
        let mut valid = Vec::new();
        encode(&sample(), &mut valid).unwrap();
        seeds.push(valid.clone());
        for flip in 0..valid.len() {
            let mut damaged = valid.clone();
            damaged[flip] ^= 0x55;
            seeds.push(damaged);
        }
        for seed in seeds {
            fuzz_codec(&seed);
        }
    }
}
