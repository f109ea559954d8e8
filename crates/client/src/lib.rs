//! Async clients for every protocol polykv speaks, built on the codecs of `polykv-protocols`.
//!
//! Each protocol module has its own client type with one method per request. They share the
//! framed connection and the error type defined here.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use polykv_protocols::{ClientCodec, Decoded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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

/// A TCP connection to `addr` ("host:port") with Nagle's algorithm off: requests go out whole.
pub(crate) async fn connect_tcp(addr: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A UDP socket "connected" to `addr`, bound on every interface of the target's address family
/// so that any server address works.
pub(crate) async fn connect_udp(addr: &str) -> Result<UdpSocket> {
    let connect_error = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await.map_err(connect_error)?;
    Ok(socket)
}

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
        let stream = tokio::time::timeout(timeout, connect_tcp(addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
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
