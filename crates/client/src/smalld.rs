//! A smalld client: one request per connection, replies read until the server closes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polykv_protocols::smalld::{decode_reply, encode_request, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ClientError, Result};

pub struct SmalldClient {
    addr: String,
    key: u32,
    timeout: Duration,
}

impl SmalldClient {
    pub fn new(addr: &str, key: u32, timeout: Duration) -> Self {
        SmalldClient {
            addr: addr.to_string(),
            key,
            timeout,
        }
    }

    /// Sends raw bytes on a new connection and returns everything the server sent before it
    /// closed (for tests of malformed input).
    pub async fn raw(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let run = async {
            let mut stream =
                TcpStream::connect(&self.addr)
                    .await
                    .map_err(|source| ClientError::Connect {
                        addr: self.addr.clone(),
                        source,
                    })?;
            stream.write_all(bytes).await?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await?;
            Ok(reply)
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn call(&self, request: &Request, expects_value: bool) -> Result<Reply> {
        let mut out = BytesMut::new();
        encode_request(self.key, request, &mut out);
        let reply = self.raw(&out).await?;
        if reply.is_empty() {
            // The server closes without a byte on a wrong key.
            return Err(ClientError::Closed);
        }
        decode_reply(&reply, expects_value)
            .ok_or_else(|| ClientError::Protocol(format!("bad smalld reply {reply:02x?}")))
    }

    fn value(reply: Reply) -> Result<Option<Bytes>> {
        match reply {
            Reply::Value(v) => Ok(Some(v)),
            Reply::Failure => Ok(None),
            Reply::Ok => Err(ClientError::Protocol("success without a value".into())),
        }
    }

    /// Stores `value` under `name` (1–15 bytes, no NUL). False when the server answered failure.
    pub async fn set(&self, name: &[u8], value: &[u8]) -> Result<bool> {
        let request = Request::Set {
            name: Bytes::copy_from_slice(name),
            value: Bytes::copy_from_slice(value),
        };
        Ok(self.call(&request, false).await? == Reply::Ok)
    }

    pub async fn get(&self, name: &[u8]) -> Result<Option<Bytes>> {
        Self::value(
            self.call(
                &Request::Get {
                    name: Bytes::copy_from_slice(name),
                },
                true,
            )
            .await?,
        )
    }

    pub async fn digest(&self, value: &[u8]) -> Result<Option<Bytes>> {
        Self::value(
            self.call(
                &Request::Digest {
                    value: Bytes::copy_from_slice(value),
                },
                true,
            )
            .await?,
        )
    }

    pub async fn run(&self, program: &[u8]) -> Result<Option<Bytes>> {
        Self::value(
            self.call(
                &Request::Run {
                    program: Bytes::copy_from_slice(program),
                },
                true,
            )
            .await?,
        )
    }
}
