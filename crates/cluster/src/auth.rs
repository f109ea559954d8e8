//! Peers prove they know the cluster secret before anything else crosses the cluster port:
//! a challenge–response with HMAC-SHA256 in both directions. The secret itself never travels.
//! In the same exchange they compare their cluster ids ([`crate::identity`]): a node whose data
//! belongs to another cluster is refused before any entry crosses.
//!
//! ```text
//! listener → dialer  "PKVC" 1 nonce_l[32]                                              (37 bytes)
//! dialer → listener  "PKVC" 2 id[u64 LE] nonce_d[32]
//!                    HMAC(k, "dial2" nonce_l nonce_d id cid_d) cid_d[16]                (93 bytes)
//! listener → dialer  cid_l[16] verdict[1] HMAC(k, "listen2" nonce_d nonce_l cid_l verdict)  (49 bytes)
//! ```
//!
//! `cid` is the sender's cluster id, zeros when it has none; verdict 0 admits the dialer, 1
//! refuses it as a member of another cluster (the listener then closes). A node without an id
//! takes the other side's, once proven.
//!
//! Version 1 (before cluster ids) answered `"PKVC" 1 id nonce_d HMAC(k, "dial" nonce_l nonce_d
//! id)` (77 bytes) and got `HMAC(k, "listen" nonce_d nonce_l)` (32 bytes) back. It is still
//! spoken, by nodes without an id only, so that a cluster founded before ids can be upgraded
//! node by node: such a listener accepts a version 1 dialer, and such a dialer whose version 2
//! answer is hung up on (an older listener) dials again with version 1. A node with an id
//! neither accepts nor falls back to version 1: every member of its cluster speaks version 2.
//!
//! Every message has a fixed size, so nothing is allocated from what a stranger sends; a wrong
//! answer closes the connection.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::identity::{self, ClusterId, Identity, IdentityError};
use crate::NodeId;

const MAGIC: &[u8; 4] = b"PKVC";
const CHALLENGE_VERSION: u8 = 1;
const V1: u8 = 1;
const V2: u8 = 2;
const NONCE: usize = 32;
const MAC: usize = 32;
pub const CHALLENGE_LEN: usize = 5 + NONCE;
/// A version 1 answer, and the part of a version 2 answer before the dialer's cluster id.
pub const ANSWER_LEN: usize = 5 + 8 + NONCE + MAC;
pub const ANSWER_V2_LEN: usize = ANSWER_LEN + identity::LEN;
const REPLY_V2_LEN: usize = identity::LEN + 1 + MAC;
const ADMITTED: u8 = 0;
const FOREIGN: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("peer did not authenticate: {0}")]
    Refused(&'static str),
    /// The two nodes' data belong to different clusters.
    #[error(transparent)]
    Foreign(IdentityError),
    /// The listener hung up on a version 2 answer: an older polykv, which speaks version 1.
    #[error("the listener hung up on the handshake (a polykv without cluster ids?)")]
    OlderListener,
    #[error("i/o during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac
}

fn nonce() -> [u8; NONCE] {
    let mut out = [0u8; NONCE];
    rand::rng().fill_bytes(&mut out);
    out
}

fn foreign(e: IdentityError) -> AuthError {
    AuthError::Foreign(e)
}

/// The listening side: returns the id the dialer proved it holds the secret for, once its
/// cluster id agrees with this node's (taking it when this node has none).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    identity: &Identity,
) -> Result<NodeId, AuthError> {
    let ours = nonce();
    let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
    challenge.extend_from_slice(MAGIC);
    challenge.push(CHALLENGE_VERSION);
    challenge.extend_from_slice(&ours);
    stream.write_all(&challenge).await?;
    let mut answer = [0u8; ANSWER_V2_LEN];
    stream.read_exact(&mut answer[..ANSWER_LEN]).await?;
    if &answer[..4] != MAGIC || !matches!(answer[4], V1 | V2) {
        return Err(AuthError::Refused("not a polykv cluster peer"));
    }
    let version = answer[4];
    if version == V2 {
        stream.read_exact(&mut answer[ANSWER_LEN..]).await?;
    }
    let id_bytes = &answer[5..13];
    let theirs = &answer[13..13 + NONCE];
    let proof = &answer[13 + NONCE..ANSWER_LEN];
    let mut id = [0u8; 8];
    id.copy_from_slice(id_bytes);
    let id = NodeId::from_le_bytes(id);
    if version == V1 {
        mac(secret, &[b"dial", &ours, theirs, id_bytes])
            .verify_slice(proof)
            .map_err(|_| AuthError::Refused("wrong cluster secret"))?;
        if identity.get().is_some() {
            return Err(AuthError::Refused(
                "a peer without cluster ids (handshake version 1) cannot join a cluster that has one",
            ));
        }
        let reply = mac(secret, &[b"listen", theirs, &ours])
            .finalize()
            .into_bytes();
        stream.write_all(&reply).await?;
        return Ok(id);
    }
    let their_cluster = &answer[ANSWER_LEN..];
    mac(secret, &[b"dial2", &ours, theirs, id_bytes, their_cluster])
        .verify_slice(proof)
        .map_err(|_| AuthError::Refused("wrong cluster secret"))?;
    let mut raw = [0u8; identity::LEN];
    raw.copy_from_slice(their_cluster);
    let admitted = identity.admit(ClusterId::from_wire(raw));
    let verdict = match &admitted {
        Ok(()) => ADMITTED,
        Err(IdentityError::Foreign { .. }) => FOREIGN,
        // The id taken could not be stored: no verdict, the connection just closes.
        Err(_) => return Err(AuthError::Refused("cannot store the cluster id")),
    };
    let cluster = ClusterId::to_wire(identity.get());
    let reply = mac(secret, &[b"listen2", theirs, &ours, &cluster, &[verdict]])
        .finalize()
        .into_bytes();
    let mut out = Vec::with_capacity(REPLY_V2_LEN);
    out.extend_from_slice(&cluster);
    out.push(verdict);
    out.extend_from_slice(&reply);
    stream.write_all(&out).await?;
    admitted.map_err(foreign)?;
    Ok(id)
}

/// The dialing side, as node `me`: fails unless the listener proves it holds the secret and
/// its cluster id agrees with this node's (taken when this node has none).
/// [`AuthError::OlderListener`]: dial again with [`dial_v1`] (only a node without an id may).
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: NodeId,
    identity: &Identity,
) -> Result<(), AuthError> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await?;
    if &challenge[..4] != MAGIC || challenge[4] != CHALLENGE_VERSION {
        return Err(AuthError::Refused("not a polykv cluster port"));
    }
    let theirs = &challenge[5..];
    let ours = nonce();
    let id = me.to_le_bytes();
    let cluster = ClusterId::to_wire(identity.get());
    let proof = mac(secret, &[b"dial2", theirs, &ours, &id, &cluster])
        .finalize()
        .into_bytes();
    let mut answer = Vec::with_capacity(ANSWER_V2_LEN);
    answer.extend_from_slice(MAGIC);
    answer.push(V2);
    answer.extend_from_slice(&id);
    answer.extend_from_slice(&ours);
    answer.extend_from_slice(&proof);
    answer.extend_from_slice(&cluster);
    stream.write_all(&answer).await?;
    let mut reply = [0u8; REPLY_V2_LEN];
    match stream.read_exact(&mut reply).await {
        Ok(_) => {}
        // An older listener reads 77 bytes, sees version 2 and hangs up without a word.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && identity.get().is_none() => {
            return Err(AuthError::OlderListener)
        }
        Err(e) => return Err(e.into()),
    }
    let (their_cluster, rest) = reply.split_at(identity::LEN);
    let (verdict, proof) = rest.split_at(1);
    mac(secret, &[b"listen2", &ours, theirs, their_cluster, verdict])
        .verify_slice(proof)
        .map_err(|_| AuthError::Refused("the listener does not know the cluster secret"))?;
    let mut raw = [0u8; identity::LEN];
    raw.copy_from_slice(their_cluster);
    let their_cluster = ClusterId::from_wire(raw);
    if verdict[0] != ADMITTED {
        return Err(match (identity.get(), their_cluster) {
            (Some(ours), Some(theirs)) => foreign(IdentityError::Foreign { ours, theirs }),
            _ => AuthError::Refused("the listener refused this node's cluster id"),
        });
    }
    identity.admit(their_cluster).map_err(foreign)
}

/// The version 1 dialing side, for a listener that predates cluster ids (see the module).
pub async fn dial_v1<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: NodeId,
) -> Result<(), AuthError> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await?;
    if &challenge[..4] != MAGIC || challenge[4] != CHALLENGE_VERSION {
        return Err(AuthError::Refused("not a polykv cluster port"));
    }
    let theirs = &challenge[5..];
    let ours = nonce();
    let id = me.to_le_bytes();
    let proof = mac(secret, &[b"dial", theirs, &ours, &id])
        .finalize()
        .into_bytes();
    let mut answer = Vec::with_capacity(ANSWER_LEN);
    answer.extend_from_slice(MAGIC);
    answer.push(V1);
    answer.extend_from_slice(&id);
    answer.extend_from_slice(&ours);
    answer.extend_from_slice(&proof);
    stream.write_all(&answer).await?;
    let mut reply = [0u8; MAC];
    stream.read_exact(&mut reply).await?;
    mac(secret, &[b"listen", &ours, theirs])
        .verify_slice(&reply)
        .map_err(|_| AuthError::Refused("the listener does not know the cluster secret"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Identity {
        Identity::in_memory(None)
    }

    #[tokio::test]
    async fn the_same_secret_passes_and_a_wrong_one_is_refused_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (l, d) = (none(), none());
        let (accepted, dialed) = tokio::join!(
            accept(&mut a, b"s3cret", &l),
            dial(&mut b, b"s3cret", 7, &d)
        );
        assert_eq!(accepted.unwrap(), 7);
        dialed.unwrap();

        let (mut a, mut b) = tokio::io::duplex(1024);
        // The listener hangs up on a wrong proof (dropping its end), so the dialer fails too.
        let listener = async move { accept(&mut a, b"s3cret", &none()).await };
        let (accepted, dialed) = tokio::join!(listener, dial(&mut b, b"guess", 7, &d));
        assert!(matches!(accepted, Err(AuthError::Refused(_))));
        assert!(dialed.is_err(), "no answer to a wrong proof");

        // Garbage instead of an answer is refused after the fixed-size read.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let garbage = async move {
            let mut challenge = [0u8; CHALLENGE_LEN];
            b.read_exact(&mut challenge).await.unwrap();
            b.write_all(&[0xAB; ANSWER_LEN]).await.unwrap();
            b
        };
        let (accepted, _) = tokio::join!(accept(&mut a, b"s3cret", &l), garbage);
        assert!(matches!(accepted, Err(AuthError::Refused(_))));
    }

    #[tokio::test]
    async fn cluster_ids_are_taken_when_missing_and_refused_when_different() {
        let founded = ClusterId::random();
        // A new node dialing a founded one takes its id; the other way round too.
        let (l, d) = (Identity::in_memory(Some(founded)), none());
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (accepted, dialed) = tokio::join!(accept(&mut a, b"k", &l), dial(&mut b, b"k", 2, &d));
        accepted.unwrap();
        dialed.unwrap();
        assert_eq!(d.get(), Some(founded));
        let (l, d) = (none(), Identity::in_memory(Some(founded)));
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (accepted, dialed) = tokio::join!(accept(&mut a, b"k", &l), dial(&mut b, b"k", 2, &d));
        accepted.unwrap();
        dialed.unwrap();
        assert_eq!(l.get(), Some(founded));

        // Two different ids: both sides refuse, and neither takes the other's.
        let other = ClusterId::random();
        let (l, d) = (
            Identity::in_memory(Some(founded)),
            Identity::in_memory(Some(other)),
        );
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (accepted, dialed) = tokio::join!(accept(&mut a, b"k", &l), dial(&mut b, b"k", 2, &d));
        assert!(matches!(accepted, Err(AuthError::Foreign(_))));
        assert!(matches!(dialed, Err(AuthError::Foreign(_))));
        assert_eq!(l.get(), Some(founded));
        assert_eq!(d.get(), Some(other));
    }

    #[tokio::test]
    async fn version_1_is_spoken_only_between_nodes_without_an_id() {
        // An older dialer reaches a listener without an id.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let l = none();
        let (accepted, dialed) = tokio::join!(accept(&mut a, b"k", &l), dial_v1(&mut b, b"k", 3));
        assert_eq!(accepted.unwrap(), 3);
        dialed.unwrap();
        // A listener with an id refuses it.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let l = Identity::in_memory(Some(ClusterId::random()));
        let listener = async move { accept(&mut a, b"k", &l).await };
        let (accepted, dialed) = tokio::join!(listener, dial_v1(&mut b, b"k", 3));
        assert!(matches!(accepted, Err(AuthError::Refused(_))));
        assert!(dialed.is_err());
        // An older listener hangs up on a version 2 answer: a dialer without an id is told to
        // fall back, one with an id is not.
        for (identity, falls_back) in [
            (none(), true),
            (Identity::in_memory(Some(ClusterId::random())), false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let older = async move {
                let mut challenge = Vec::from(&MAGIC[..]);
                challenge.push(1);
                challenge.extend_from_slice(&[9; NONCE]);
                a.write_all(&challenge).await.unwrap();
                let mut answer = [0u8; ANSWER_LEN];
                a.read_exact(&mut answer).await.unwrap();
                assert_eq!(answer[4], V2);
            };
            let (_, dialed) = tokio::join!(older, dial(&mut b, b"k", 3, &identity));
            assert_eq!(
                matches!(dialed, Err(AuthError::OlderListener)),
                falls_back,
                "{dialed:?}"
            );
        }
    }
}
