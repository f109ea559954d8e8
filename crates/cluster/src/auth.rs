//! Peers prove they know the cluster secret before anything else crosses the cluster port:
//! a challenge–response with HMAC-SHA256 in both directions. The secret itself never travels.
//!
//! ```text
//! listener → dialer  "PKVC" 1 nonce_l[32]                                      (37 bytes)
//! dialer → listener  "PKVC" 1 id[u64 LE] nonce_d[32] HMAC(k, "dial" nonce_l nonce_d id)   (77 bytes)
//! listener → dialer  HMAC(k, "listen" nonce_d nonce_l)                         (32 bytes)
//! ```
//!
//! Every message has a fixed size, so nothing is allocated from what a stranger sends; a wrong
//! answer closes the connection.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NodeId;

const MAGIC: &[u8; 4] = b"PKVC";
const VERSION: u8 = 1;
const NONCE: usize = 32;
const MAC: usize = 32;
pub const CHALLENGE_LEN: usize = 5 + NONCE;
pub const ANSWER_LEN: usize = 5 + 8 + NONCE + MAC;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("peer did not authenticate: {0}")]
    Refused(&'static str),
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

/// The listening side: returns the id the dialer proved it holds the secret for.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
) -> Result<NodeId, AuthError> {
    let ours = nonce();
    let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
    challenge.extend_from_slice(MAGIC);
    challenge.push(VERSION);
    challenge.extend_from_slice(&ours);
    stream.write_all(&challenge).await?;
    let mut answer = [0u8; ANSWER_LEN];
    stream.read_exact(&mut answer).await?;
    if &answer[..4] != MAGIC || answer[4] != VERSION {
        return Err(AuthError::Refused("not a polykv cluster peer"));
    }
    let id_bytes = &answer[5..13];
    let theirs = &answer[13..13 + NONCE];
    let proof = &answer[13 + NONCE..];
    mac(secret, &[b"dial", &ours, theirs, id_bytes])
        .verify_slice(proof)
        .map_err(|_| AuthError::Refused("wrong cluster secret"))?;
    let reply = mac(secret, &[b"listen", theirs, &ours])
        .finalize()
        .into_bytes();
    stream.write_all(&reply).await?;
    let mut id = [0u8; 8];
    id.copy_from_slice(id_bytes);
    Ok(NodeId::from_le_bytes(id))
}

/// The dialing side, as node `me`: fails unless the listener proves it holds the secret.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: NodeId,
) -> Result<(), AuthError> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await?;
    if &challenge[..4] != MAGIC || challenge[4] != VERSION {
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
    answer.push(VERSION);
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

    #[tokio::test]
    async fn the_same_secret_passes_and_a_wrong_one_is_refused_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (accepted, dialed) =
            tokio::join!(accept(&mut a, b"s3cret"), dial(&mut b, b"s3cret", 7));
        assert_eq!(accepted.unwrap(), 7);
        dialed.unwrap();

        let (mut a, mut b) = tokio::io::duplex(1024);
        // The listener hangs up on a wrong proof (dropping its end), so the dialer fails too.
        let listener = async move { accept(&mut a, b"s3cret").await };
        let (accepted, dialed) = tokio::join!(listener, dial(&mut b, b"guess", 7));
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
        let (accepted, _) = tokio::join!(accept(&mut a, b"s3cret"), garbage);
        assert!(matches!(accepted, Err(AuthError::Refused(_))));
    }
}
