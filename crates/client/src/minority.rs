//! A minority client: requests and replies in order, with pushes kept apart.
//!
//! Pushes and replies share the stream. After a notify request, the first `0x81 0x02` frame with
//! its opaque is the reply; every later one is a push. Pushes that arrive while waiting for a
//! reply are kept for [`MinorityClient::next_push`].

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use polykv_protocols::minority::{op, MinorityClientCodec, Op, Request};
pub use polykv_protocols::minority::{status, Response};

use crate::{ClientError, FramedConnection, Result};

pub struct MinorityClient {
    conn: FramedConnection<MinorityClientCodec>,
    next_opaque: u32,
    /// Notify requests whose reply has not arrived yet.
    awaiting_notify: HashSet<u32>,
    pushes: VecDeque<Response>,
}

impl MinorityClient {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        let conn = FramedConnection::connect(addr, MinorityClientCodec::default(), timeout).await?;
        Ok(MinorityClient {
            conn,
            next_opaque: 1,
            awaiting_notify: HashSet::new(),
            pushes: VecDeque::new(),
        })
    }

    fn is_push(&self, frame: &Response) -> bool {
        frame.op == op::NOTIFY && !self.awaiting_notify.contains(&frame.opaque)
    }

    /// Sends a request and returns its reply, keeping any push that arrives first.
    pub async fn call(
        &mut self,
        op: Op,
        data_id: &[u8],
        datanum_id: &[u8],
        value: &[u8],
    ) -> Result<Response> {
        let opaque = self.next_opaque;
        self.next_opaque = self.next_opaque.wrapping_add(1);
        if op == Op::Notify {
            self.awaiting_notify.insert(opaque);
        }
        let request = Request::Frame {
            op,
            opaque,
            data_id: Bytes::copy_from_slice(data_id),
            datanum_id: Bytes::copy_from_slice(datanum_id),
            value: Bytes::copy_from_slice(value),
        };
        self.conn.queue(&request);
        self.conn.flush().await?;
        loop {
            let frame = self.conn.receive().await?;
            if self.is_push(&frame) {
                self.pushes.push_back(frame);
                continue;
            }
            if frame.op == op::NOTIFY {
                self.awaiting_notify.remove(&frame.opaque);
            }
            if frame.opaque != opaque {
                return Err(ClientError::Protocol(format!(
                    "reply for opaque {} while waiting for {opaque}",
                    frame.opaque
                )));
            }
            return Ok(frame);
        }
    }

    fn check(reply: Response) -> Result<Response> {
        match reply.status {
            status::OK | status::NOT_FOUND => Ok(reply),
            status::STORE_FAIL => Err(ClientError::Server("store fail".into())),
            _ => Err(ClientError::Server("invalid arguments".into())),
        }
    }

    pub async fn get(&mut self, data_id: &[u8], datanum_id: &[u8]) -> Result<Option<Bytes>> {
        let reply = Self::check(self.call(Op::Get, data_id, datanum_id, b"").await?)?;
        Ok((reply.status == status::OK).then_some(reply.value))
    }

    pub async fn set(&mut self, data_id: &[u8], datanum_id: &[u8], value: &[u8]) -> Result<()> {
        Self::check(self.call(Op::Set, data_id, datanum_id, value).await?).map(|_| ())
    }

    /// Whether the key existed.
    pub async fn delete(&mut self, data_id: &[u8], datanum_id: &[u8]) -> Result<bool> {
        Ok(
            Self::check(self.call(Op::Delete, data_id, datanum_id, b"").await?)?.status
                == status::OK,
        )
    }

    /// Subscribes to (dataId, datanumId), or to the whole dataId when `datanum_id` is empty.
    /// Returns the current value (empty if none) and the opaque that the pushes will carry.
    pub async fn notify(&mut self, data_id: &[u8], datanum_id: &[u8]) -> Result<(Bytes, u32)> {
        let reply = Self::check(self.call(Op::Notify, data_id, datanum_id, b"").await?)?;
        Ok((reply.value, reply.opaque))
    }

    pub async fn heartbeat(&mut self) -> Result<()> {
        Self::check(self.call(Op::Heartbeat, b"", b"", b"").await?).map(|_| ())
    }

    pub async fn version(&mut self) -> Result<String> {
        let reply = Self::check(self.call(Op::Version, b"", b"", b"").await?)?;
        Ok(String::from_utf8_lossy(&reply.value).into_owned())
    }

    /// The next push: one already received, or the next to arrive within `wait`.
    pub async fn next_push(&mut self, wait: Duration) -> Result<Option<Response>> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        match tokio::time::timeout(wait, self.conn.receive()).await {
            Ok(frame) => Ok(Some(frame?)),
            Err(_) => Ok(None),
        }
    }

    /// The connection, for tests that send raw bytes.
    pub fn connection(&mut self) -> &mut FramedConnection<MinorityClientCodec> {
        &mut self.conn
    }
}
