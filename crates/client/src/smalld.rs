//! A smalld client: one request per connection, replies read until the server closes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polykv_protocols::smalld::{decode_reply, encode_request, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            let mut stream = crate::connect_tcp(&self.addr).await?;
            stream.write_all(bytes).await?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await?;
            Ok(reply)
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn call(&self, request: &Request, expects_value: bool) -> Result<Response> {
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

    fn value(reply: Response) -> Result<Option<Bytes>> {
        match reply {
            Response::Value(v) => Ok(Some(v)),
            Response::Failure => Ok(None),
            Response::Ok => Err(ClientError::Protocol("success without a value".into())),
        }
    }

    /// Stores `value` under `name` (1–15 bytes, no NUL). False when the server answered failure.
    pub async fn set(&self, name: &[u8], value: &[u8]) -> Result<bool> {
        let request = Request::Set {
            name: Bytes::copy_from_slice(name),
            value: Bytes::copy_from_slice(value),
        };
        Ok(self.call(&request, false).await? == Response::Ok)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server for one connection: reads `want` bytes, answers `reply`, closes. Returns the
    /// bytes it read.
    async fn fake(want: usize, reply: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; want];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(&reply).await.unwrap();
            request
        });
        (addr, task)
    }

    const ALFRED: &[u8] = b"Alfred E. Newman\0";

    fn client(addr: &str) -> SmalldClient {
        SmalldClient::new(addr, 4242, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn set_sends_vector_1_and_reads_the_bare_success() {
        let (addr, server) = fake(43, vec![0, 0, 0, 0]).await;
        assert!(client(&addr).set(b"name", ALFRED).await.unwrap());
        let request = server.await.unwrap();
        assert_eq!(request[..8], [0, 0, 0x10, 0x92, 0, 0, 0, 0]);
        assert_eq!(&request[8..24], b"name\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(request[24..26], [0, 17]);
        assert_eq!(&request[26..], ALFRED);
    }

    #[tokio::test]
    async fn set_failure_is_false() {
        let (addr, _server) = fake(26 + 1, vec![0xff, 0, 0, 0]).await;
        assert!(!client(&addr).set(b"n", b"v").await.unwrap());
    }

    #[tokio::test]
    async fn get_reads_the_value_or_the_failure() {
        let mut reply = vec![0, 0, 0, 0, 0, 17];
        reply.extend_from_slice(ALFRED);
        let (addr, server) = fake(24, reply).await;
        assert_eq!(
            client(&addr).get(b"name").await.unwrap(),
            Some(Bytes::from_static(ALFRED))
        );
        let request = server.await.unwrap();
        assert_eq!(request[..8], [0, 0, 0x10, 0x92, 0, 1, 0, 0]);
        assert_eq!(&request[8..13], b"name\0");

        let (addr, _server) = fake(24, vec![0xff, 0, 0, 0]).await;
        assert_eq!(client(&addr).get(b"nome").await.unwrap(), None);
    }

    #[tokio::test]
    async fn digest_sends_the_value_and_reads_69_bytes() {
        let line = b"a7b47dc97e99389e3b09850c3a8843e28f8c29a8ee78b3ce6aee19ba5daf1a05  -\n\0";
        let mut reply = vec![0, 0, 0, 0, 0, 69];
        reply.extend_from_slice(line);
        let (addr, server) = fake(27, reply).await;
        assert_eq!(
            client(&addr).digest(ALFRED).await.unwrap(),
            Some(Bytes::from_static(line))
        );
        let request = server.await.unwrap();
        assert_eq!(request[..10], [0, 0, 0x10, 0x92, 0, 2, 0, 0, 0, 17]);
    }

    #[tokio::test]
    async fn run_sends_the_8_byte_field() {
        let mut reply = vec![0, 0, 0, 0, 0, 5];
        reply.extend_from_slice(b"127.0");
        let (addr, server) = fake(16, reply).await;
        assert_eq!(
            client(&addr).run(b"hosts").await.unwrap(),
            Some(Bytes::from_static(b"127.0"))
        );
        assert_eq!(
            server.await.unwrap(),
            [0, 0, 0x10, 0x92, 0, 3, 0, 0, b'h', b'o', b's', b't', b's', 0, 0, 0]
        );
    }

    #[tokio::test]
    async fn wrong_key_silence_and_bad_replies_are_errors() {
        // The server closes without a byte (wrong key).
        let (addr, _server) = fake(24, vec![]).await;
        assert!(matches!(
            client(&addr).get(b"name").await,
            Err(ClientError::Closed)
        ));
        // A success claiming more bytes than were sent.
        let (addr, _server) = fake(24, vec![0, 0, 0, 0, 0, 9, b'x']).await;
        assert!(matches!(
            client(&addr).get(b"name").await,
            Err(ClientError::Protocol(_))
        ));
        // A success without a value for a get.
        let (addr, _server) = fake(24, vec![0, 0, 0, 0]).await;
        assert!(matches!(
            client(&addr).get(b"name").await,
            Err(ClientError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let client = SmalldClient::new(&addr, 1, Duration::from_millis(100));
        assert!(matches!(
            client.get(b"x").await,
            Err(ClientError::Timeout(_))
        ));
    }
}
