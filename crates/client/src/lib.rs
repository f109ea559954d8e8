//! Async clients for every protocol polykv speaks, built on the codecs of `polykv-protocols`.
//!
//! Each protocol module has its own client type with one method per request. They share the
//! framed connection and the error type defined here.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use polykv_protocols::{ClientCodec, Decoded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod jsonkv;
pub mod minority;
pub mod nmdb;
pub mod opencluster;
pub mod smalld;

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("malformed reply: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A TCP connection that writes requests and reads whole responses with a [`ClientCodec`].
pub struct FramedConnection<C: ClientCodec> {
    stream: TcpStream,
    codec: C,
    read_buf: BytesMut,
    write_buf: BytesMut,
    timeout: Duration,
}

impl<C: ClientCodec> FramedConnection<C> {
    /// Connects to `addr` ("host:port"). Every later read waits at most `timeout`.
    pub async fn connect(addr: &str, codec: C, timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        Ok(Self::from_stream(stream, codec, timeout))
    }

    pub fn from_stream(stream: TcpStream, codec: C, timeout: Duration) -> Self {
        FramedConnection {
            stream,
            codec,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(4096),
            timeout,
        }
    }

    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Queues a request without sending it (for pipelining); [`Self::flush`] sends the queue.
    pub fn queue(&mut self, request: &C::Request) {
        self.codec.encode_request(request, &mut self.write_buf);
    }

    /// Queues raw bytes (for tests of malformed input).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Reads the next whole response.
    pub async fn receive(&mut self) -> Result<C::Response> {
        loop {
            match self.codec.decode_response(&self.read_buf) {
                Ok(Decoded::Frame(response, used)) => {
                    self.read_buf.advance(used);
                    return Ok(response);
                }
                Ok(Decoded::Incomplete) => {}
                Err(reject) => return Err(ClientError::Protocol(reject.reason.to_string())),
            }
            let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.read_buf))
                .await
                .map_err(|_| ClientError::Timeout(self.timeout))??;
            if read == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Sends one request and reads its response.
    pub async fn call(&mut self, request: &C::Request) -> Result<C::Response> {
        self.queue(request);
        self.flush().await?;
        self.receive().await
    }

    /// Whether the server has closed the connection (reads EOF within `wait`). Bytes that
    /// arrive meanwhile are kept for [`Self::receive`].
    pub async fn is_closed_by_peer(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.read_buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
