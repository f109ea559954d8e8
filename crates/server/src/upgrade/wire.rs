//! The handover messages and their framing: one header (magic, version, length) and a postcard
//! body. Pure: no I/O, so the same decoder serves the socket and the fuzz body.
//!
//! Compatibility: postcard encodes an enum by the index of its variant, so new messages are
//! appended at the end and a changed message bumps [`VERSION`]. A peer whose version is outside
//! [`OLDEST_VERSION`]..=[`VERSION`] is refused before its body is read.

use serde::{Deserialize, Serialize};

/// The handover format this binary speaks. Version 2 adds [`Message::Ahead`],
/// [`Message::Kept`] and [`Message::Idle`]: the old process passes its sessions' sockets while
/// it still serves, and after the stop only what changed. The new process greets in the newest version both speak
/// (the old one announces its own in [`super::HANDOVER_VERSION_ENV`]), and the old process
/// leads the conversation in the version of that greeting.
pub const VERSION: u16 = 2;
/// The oldest handover format this binary still reads.
pub const OLDEST_VERSION: u16 = 1;
/// The first bytes of every frame: a stray client is refused at once.
pub const MAGIC: [u8; 4] = *b"PKVH";
/// Magic (4), version (2), body length (4).
pub const HEADER_LEN: usize = 10;
/// Most descriptors one frame carries (the kernel's limit per message is 253).
pub const MAX_FDS: usize = 250;
/// Largest body: a session's unread input and queued pushes, or the lock table, fit well under
/// it (input is bounded by the codecs' frame limits); it is checked before allocating.
pub const MAX_BODY: usize = 64 << 20;

/// One message of the handover conversation (see `upgrade/mod.rs` for its order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// New → old, first: who is taking over.
    Hello {
        data_format: u32,
        pid: u32,
        version: String,
    },
    /// Old → new: the takeover is refused (the reason is logged by both).
    Refused { reason: String },
    /// Old → new: accepted; the old process is stopping its sessions now.
    Proceed,
    /// Old → new, with one fd: the data directory's lock file (its lock comes with it).
    DirLock,
    /// Old → new, with one fd: a listening socket, by its name ("nmdb tcp", "admin http").
    Listener { name: String, udp: bool },
    /// Old → new: the engine's lock table (locks live in memory, not in the store).
    Locks { locks: Vec<HeldLock> },
    /// Old → new, with one fd each: client connections stopped at a frame boundary (batched:
    /// at most [`MAX_FDS`] a frame, so 10 000 connections take 40 frames, not 10 000).
    Sessions(Vec<SessionState>),
    /// Old → new: everything is sent; the engine is closed and released.
    Sent { listeners: u32, sessions: u32 },
    /// New → old: the store is open and the state taken; nothing has been served yet.
    Ready,
    /// New → old: the takeover failed; the old process goes on serving.
    Failed { reason: String },
    /// Old → new: go; the old process exits.
    Commit,
    /// Old → new (version 2), with one fd each, while the old process still serves: the
    /// sockets of its sessions, by session id. Whether each is still open, and its state, come
    /// after the stop ([`Message::Kept`], [`Message::Idle`]); one in neither was closed
    /// meanwhile.
    Ahead(Vec<AheadSession>),
    /// Old → new (version 2), no fds: sessions whose socket went [`Message::Ahead`], with their
    /// state at the stop.
    Kept(Vec<KeptSession>),
    /// Old → new (version 2), no fds: sessions whose socket went [`Message::Ahead`] and that
    /// waited idle at the stop with nothing of their own (no input, a stateless service): only
    /// their idle time crosses, so 10 000 of them make one small frame.
    Idle(Vec<IdleSession>),
}

/// A session's socket passed ahead of the stop, with the listener it was accepted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AheadSession {
    pub id: u64,
    pub listener: String,
}

/// A session passed ahead and idle at the stop: its state is its listener's (from
/// [`AheadSession`]) and this idle time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleSession {
    pub id: u64,
    pub idle_ms: u64,
}

/// A session passed ahead and still open at the stop, with its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptSession {
    pub id: u64,
    pub state: SessionState,
}

/// One held lock of the engine's lock table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldLock {
    pub name: Vec<u8>,
    pub holder: u64,
    /// Absolute deadline in engine milliseconds, if any.
    pub deadline: Option<u64>,
}

/// A connection's state at a frame boundary. Its reply output is always empty there: a session
/// writes everything it composed before it waits for input again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The listener it was accepted on: the new process resumes it under the same service.
    pub listener: String,
    /// Bytes read but not yet a whole frame.
    pub input: Vec<u8>,
    /// Time since its last complete frame (the idle timer), in milliseconds.
    pub idle_ms: u64,
    /// Time since a partial frame started (the partial-frame timer), in milliseconds.
    pub partial_ms: Option<u64>,
    /// The protocol service's own state (its postcard; empty for stateless services).
    pub service: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("not a handover frame (bad magic)")]
    Magic,
    #[error(
        "handover format {0} is not spoken here (this binary speaks {OLDEST_VERSION}..={VERSION})"
    )]
    Version(u16),
    #[error("handover message of {0} bytes is over the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("malformed handover message: {0}")]
    Malformed(String),
}

/// A checked header: the body length that follows.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<usize, WireError> {
    decode_header_versioned(header).map(|(_, len)| len)
}

/// A checked header: its version and the body length that follows.
pub fn decode_header_versioned(header: &[u8; HEADER_LEN]) -> Result<(u16, usize), WireError> {
    if header[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(WireError::Version(version));
    }
    let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]) as usize;
    if len > MAX_BODY {
        return Err(WireError::TooLarge(len));
    }
    Ok((version, len))
}

/// A body decoded; trailing bytes are refused (a frame is exactly one message).
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    match postcard::take_from_bytes::<Message>(body) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(WireError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

/// One whole frame from the start of `buf`: the message and the bytes it used, or `None` while
/// incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = decode_header(header)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// The frame of `message`.
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    encode_as(message, VERSION)
}

/// The frame of `message` in handover format `version` (a peer's older one).
pub fn encode_as(message: &Message, version: u16) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(message).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_BODY {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Fuzz body: any bytes either decode into frames that encode back to messages that decode the
/// same, or are refused; never a panic, never an allocation past the limit.
pub fn fuzz_decode(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((message, used))) = decode(rest) {
        let frame = encode(&message).expect("a decoded message encodes");
        let again = decode(&frame).expect("re-decodes").expect("whole");
        assert_eq!(again, (message, frame.len()));
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                data_format: 1,
                pid: 42,
                version: "0.1.0".into(),
            },
            Message::Refused {
                reason: "no".into(),
            },
            Message::Proceed,
            Message::DirLock,
            Message::Listener {
                name: "nmdb tcp".into(),
                udp: false,
            },
            Message::Locks {
                locks: vec![HeldLock {
                    name: b"l".to_vec(),
                    holder: 1 << 63,
                    deadline: Some(5),
                }],
            },
            Message::Sessions(vec![SessionState {
                listener: "minority tcp".into(),
                input: vec![1, 2, 3],
                idle_ms: 7,
                partial_ms: Some(3),
                service: vec![9],
            }]),
            Message::Sent {
                listeners: 3,
                sessions: 1,
            },
            Message::Ready,
            Message::Failed { reason: "x".into() },
            Message::Commit,
            Message::Ahead(vec![
                AheadSession {
                    id: 3,
                    listener: "nmdb tcp".into(),
                },
                AheadSession {
                    id: 1 << 40,
                    listener: "jsonkv tcp".into(),
                },
            ]),
            Message::Kept(vec![KeptSession {
                id: 3,
                state: SessionState {
                    listener: "nmdb tcp".into(),
                    input: Vec::new(),
                    idle_ms: 12,
                    partial_ms: None,
                    service: Vec::new(),
                },
            }]),
            Message::Idle(vec![
                IdleSession { id: 3, idle_ms: 0 },
                IdleSession {
                    id: 1 << 40,
                    idle_ms: 1 << 33,
                },
            ]),
        ]
    }

    /// The frames of version 1 stay what they were: an older binary reads them.
    #[test]
    fn version_1_frames_are_unchanged() {
        let frame = encode_as(
            &Message::Sent {
                listeners: 2,
                sessions: 300,
            },
            1,
        )
        .unwrap();
        assert_eq!(frame, b"PKVH\x00\x01\x00\x00\x00\x04\x07\x02\xac\x02");
        let header = frame[..HEADER_LEN].try_into().unwrap();
        assert_eq!(decode_header_versioned(header), Ok((1, 4)));
        let frame = encode(&Message::Commit).unwrap();
        assert_eq!(frame, b"PKVH\x00\x02\x00\x00\x00\x01\x0a");
    }

    #[test]
    fn every_message_round_trips_and_truncations_are_incomplete() {
        for message in samples() {
            let frame = encode(&message).unwrap();
            assert_eq!(
                decode(&frame).unwrap(),
                Some((message.clone(), frame.len()))
            );
            for cut in 0..frame.len() {
                assert_eq!(
                    decode(&frame[..cut]).unwrap(),
                    None,
                    "{message:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn bad_headers_are_refused_before_the_body() {
        let mut frame = encode(&Message::Ready).unwrap();
        frame[0] = b'X';
        assert_eq!(decode(&frame), Err(WireError::Magic));
        let mut frame = encode(&Message::Ready).unwrap();
        frame[4..6].copy_from_slice(&(VERSION + 1).to_be_bytes());
        assert_eq!(decode(&frame), Err(WireError::Version(VERSION + 1)));
        let mut frame = encode(&Message::Ready).unwrap();
        frame[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&frame), Err(WireError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn trailing_and_garbage_bodies_are_refused() {
        let mut frame = encode(&Message::Ready).unwrap();
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[6..10].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&frame), Err(WireError::Malformed(_))));
        let mut frame = MAGIC.to_vec();
        frame.extend_from_slice(&VERSION.to_be_bytes());
        frame.extend_from_slice(&1u32.to_be_bytes());
        frame.push(200);
        assert!(matches!(decode(&frame), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn fuzz_body_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_decode(&data);
        }

        #[test]
        fn fuzz_body_on_mutated_frames(index in 0usize..14, flip in 0usize..64, byte: u8) {
            let frame = encode(&samples()[index]).unwrap();
            let mut data = frame.clone();
            let at = flip % data.len();
            data[at] = byte;
            fuzz_decode(&data);
        }
    }
}

#[cfg(test)]
mod corpus {
    /// Replays the saved fuzz corpus (`fuzz/seeds/handover_wire/`) on stable; the seeds are
    /// whole frames, so each must decode.
    #[test]
    fn saved_inputs_replay() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds/handover_wire");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            assert!(matches!(super::decode(&data), Ok(Some(_))), "{data:?}");
            super::fuzz_decode(&data);
            count += 1;
        }
        assert!(count > 0, "no saved inputs");
    }
}
