//! The sending side of a cluster connection.
//!
//! A frame is written at once, from the task that sends it, with one non-blocking `send(2)`
//! when nothing is waiting before it: on the common path (a Raft append, its answer) there is
//! no hand-off to another task, which on a busy machine costs more than the write. What the
//! socket does not take at once, and every frame after it until that is out, goes in order to
//! the connection's writer task, which writes everything queued with one write (frames that
//! pile up while the peer is slow to read still leave together).

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::wire::{self, Envelope, WireError};

/// Frames queued behind a write the socket did not take whole.
const WRITE_QUEUE: usize = 4096;

#[derive(Default)]
struct State {
    /// Frames are queued for the writer task: later frames must queue behind them.
    queued: bool,
    /// The connection failed or was closed: nothing more is sent.
    closed: bool,
}

/// Sends whole frames on one connection, in order. Cheap to share.
pub(crate) struct FrameSender {
    half: Arc<OwnedWriteHalf>,
    state: Arc<Mutex<State>>,
    queue: mpsc::Sender<Vec<u8>>,
}

/// Why a frame was not sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection is closed or failed.
    Closed,
    /// The message is over the frame limit.
    TooLarge(WireError),
}

/// Largest encoding buffer a thread keeps between frames.
const KEPT_ENCODE_BUFFER: usize = 4 << 20;

thread_local! {
    /// Frames are encoded into this buffer and sent from it: no allocation per frame.
    static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl FrameSender {
    /// The sender of `half`, and its writer task (to be spawned; it ends once every sender is
    /// dropped and what was queued is written, or at the first failed write).
    pub fn new(half: OwnedWriteHalf) -> (Arc<FrameSender>, impl std::future::Future<Output = ()>) {
        let half = Arc::new(half);
        let state = Arc::new(Mutex::new(State::default()));
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = run_writer(half.clone(), state.clone(), rx);
        (Arc::new(FrameSender { half, state, queue }), writer)
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Encodes `envelope` and sends it as one frame (see [`FrameSender::send`]).
    pub fn send_envelope(&self, envelope: &Envelope) -> Result<(), SendError> {
        ENCODED.with(|buffer| {
            let mut frame = buffer.borrow_mut();
            frame.clear();
            let result = match wire::encode(envelope, &mut frame) {
                Ok(()) => self.send(&frame),
                Err(e) => Err(SendError::TooLarge(e)),
            };
            if frame.capacity() > KEPT_ENCODE_BUFFER {
                *frame = Vec::new();
            }
            result
        })
    }

    /// Sends one whole frame (never a part of it). Does not wait: the socket takes it at
    /// once, or it is queued for the writer task. A full queue (the peer stopped reading)
    /// closes the connection.
    pub fn send(&self, frame: &[u8]) -> Result<(), SendError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(SendError::Closed);
        }
        let mut written = 0;
        if !state.queued {
            while written < frame.len() {
                match self.half.try_write(&frame[written..]) {
                    Ok(0) => {
                        state.closed = true;
                        return Err(SendError::Closed);
                    }
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        state.closed = true;
                        return Err(SendError::Closed);
                    }
                }
            }
            if written == frame.len() {
                return Ok(());
            }
            state.queued = true;
        }
        if self.queue.try_send(frame[written..].to_vec()).is_err() {
            state.closed = true;
            return Err(SendError::Closed);
        }
        Ok(())
    }
}

async fn write_all(half: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        half.writable().await?;
        match half.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn run_writer(
    half: Arc<OwnedWriteHalf>,
    state: Arc<Mutex<State>>,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut batch = Vec::new();
    while let Some(frame) = queue.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        while let Ok(more) = queue.try_recv() {
            batch.extend_from_slice(&more);
        }
        if write_all(&half, &batch).await.is_err() {
            break;
        }
        // Senders queue under the lock: once the queue is seen empty under it, the next
        // frame may go out directly without overtaking anything.
        let mut state = state.lock();
        if queue.is_empty() {
            state.queued = false;
        }
    }
    state.lock().closed = true;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_frame_the_socket_cannot_take_whole_is_queued_and_later_frames_stay_behind_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_read, write) = client.into_split();
        let (sender, writer) = FrameSender::new(write);
        let writer = tokio::spawn(writer);
        // Far more than a loopback socket buffer: the rest goes through the writer task.
        let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        sender.send(&big).unwrap();
        assert!(sender.state.lock().queued, "the big frame did not fit");
        sender.send(b"after").unwrap();
        drop(sender);
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received.len(), big.len() + 5);
        assert_eq!(&received[..big.len()], &big[..]);
        assert_eq!(&received[big.len()..], b"after");
    }
}
