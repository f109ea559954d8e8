//! jsonkv clients: the framed protocol over TCP ([`JsonkvClient`]) and UDP
//! ([`JsonkvUdpClient`]), JSON-RPC 2.0 over HTTP/1.1 ([`JsonRpcClient`]) and the jsonagent
//! discovery service ([`AgentClient`]).
//!
//! Every call gets a fresh numeric `id` and checks that the reply echoes it, so a stale UDP
//! reply or a confused server is noticed instead of being taken for the answer.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use polykv_protocols::jsonkv::{
    decode_rpc_response, encode_rpc_request, AgentClientCodec, AgentRequest, AgentResponse,
    AgentValue, Command, Id, Item, JsonkvClientCodec, Limits, RequestPayload, Response,
    ResponsePayload, RpcAction, RpcCall, RpcOutcome, RpcPayload, RpcResponse, RpcResponsePayload,
    ServerEntry, ServerProtocol, DEFAULT_CLIENT_MAX_FRAME, DEFAULT_MAX_DEPTH,
};
use polykv_protocols::ClientCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::{ClientError, FramedConnection, Result};

/// The code of "key does not exist." in both jsonkv (string) and JSON-RPC (number).
const NOT_FOUND: i64 = 1000;

fn server_error(code: &str, message: &str) -> ClientError {
    ClientError::Server(format!("{code} {message}"))
}

/// Turns the response to `command` into the caller's result: get → the value (`None` when
/// missing), delete → whether the key existed, put → `None`.
fn outcome(command: &Command, response: &Response) -> Result<Outcome> {
    match (command, &*response.code) {
        (Command::Put { .. }, "0") => Ok(Outcome::Done(true)),
        (Command::Get { .. }, "0") => Ok(Outcome::Value(Some(response.value.clone()))),
        (Command::Delete { .. }, "0") => Ok(Outcome::Done(true)),
        (Command::Get { .. }, "1000") => Ok(Outcome::Value(None)),
        (Command::Delete { .. }, "1000") => Ok(Outcome::Done(false)),
        (_, code) => Err(server_error(code, &response.message)),
    }
}

enum Outcome {
    Value(Option<String>),
    Done(bool),
}

impl Outcome {
    fn value(self) -> Option<String> {
        match self {
            Outcome::Value(v) => v,
            Outcome::Done(_) => None,
        }
    }

    fn done(self) -> bool {
        match self {
            Outcome::Done(d) => d,
            Outcome::Value(v) => v.is_some(),
        }
    }
}

/// Whether `response` answers `request`: same shape, same length, same ids.
fn answers(request: &RequestPayload, response: &ResponsePayload) -> bool {
    match (request, response) {
        (RequestPayload::Single(item), ResponsePayload::Single(r)) => item.id() == &r.id,
        (RequestPayload::Batch(items), ResponsePayload::Batch(rs)) => {
            items.len() == rs.len() && items.iter().zip(rs).all(|(i, r)| i.id() == &r.id)
        }
        (RequestPayload::Malformed, ResponsePayload::Single(r)) => r.id.is_null(),
        _ => false,
    }
}

/// Hands out request ids.
#[derive(Debug, Default)]
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> Id {
        self.0 += 1;
        Id::number(self.0)
    }

    fn single(&mut self, command: Command) -> RequestPayload {
        RequestPayload::Single(Item::Command {
            command,
            id: self.next(),
        })
    }

    fn batch(&mut self, commands: &[Command]) -> RequestPayload {
        RequestPayload::Batch(
            commands
                .iter()
                .map(|c| Item::Command {
                    command: c.clone(),
                    id: self.next(),
                })
                .collect(),
        )
    }
}

fn only(response: ResponsePayload) -> Result<Response> {
    match response {
        ResponsePayload::Single(r) => Ok(r),
        ResponsePayload::Batch(_) => {
            Err(ClientError::Protocol("batch reply to one request".into()))
        }
    }
}

fn all(response: ResponsePayload) -> Result<Vec<Response>> {
    match response {
        ResponsePayload::Batch(rs) => Ok(rs),
        ResponsePayload::Single(r) => Err(server_error(&r.code, &r.message)),
    }
}

/// How a jsonkv client reaches the server: sends one payload and returns the reply that
/// answers it (same shape, same ids).
pub trait Exchange {
    fn exchange(
        &mut self,
        request: &RequestPayload,
    ) -> impl std::future::Future<Output = Result<ResponsePayload>> + Send;
}

/// jsonkv over one persistent TCP connection (port 15001).
pub struct TcpTransport {
    conn: FramedConnection<JsonkvClientCodec>,
}

impl Exchange for TcpTransport {
    async fn exchange(&mut self, request: &RequestPayload) -> Result<ResponsePayload> {
        let response = self.conn.call(request).await?;
        if !answers(request, &response) {
            return Err(ClientError::Protocol(format!(
                "reply does not answer the request: {response:?}"
            )));
        }
        Ok(response)
    }
}

/// jsonkv over UDP (port 15002): one datagram per request, resent after `timeout` up to
/// `attempts` times in all.
pub struct UdpTransport {
    socket: UdpSocket,
    codec: JsonkvClientCodec,
    timeout: Duration,
    attempts: u32,
}

impl Exchange for UdpTransport {
    /// Sends one payload until a datagram that answers it arrives. Datagrams whose length
    /// disagrees with their header, that are not responses, or that answer other ids (late
    /// replies to earlier requests) are ignored.
    async fn exchange(&mut self, request: &RequestPayload) -> Result<ResponsePayload> {
        let mut datagram = BytesMut::new();
        self.codec.encode_request(request, &mut datagram);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..self.attempts {
            self.socket.send(&datagram).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await
            {
                let n = received?;
                if let Some(response) = buf.get(..n).and_then(|d| self.codec.decode_datagram(d)) {
                    if answers(request, &response) {
                        return Ok(response);
                    }
                }
            }
        }
        Err(ClientError::Timeout(
            self.timeout.saturating_mul(self.attempts),
        ))
    }
}

/// A jsonkv client over a transport: put, get, delete and batches, each with fresh ids.
pub struct Jsonkv<T> {
    transport: T,
    ids: Ids,
}

/// A jsonkv client over one persistent TCP connection (port 15001).
pub type JsonkvClient = Jsonkv<TcpTransport>;

/// A jsonkv client over UDP (port 15002).
pub type JsonkvUdpClient = Jsonkv<UdpTransport>;

impl Jsonkv<TcpTransport> {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        let conn = FramedConnection::connect(addr, JsonkvClientCodec::default(), timeout).await?;
        Ok(Jsonkv {
            transport: TcpTransport { conn },
            ids: Ids::default(),
        })
    }

    /// The framed connection, for raw and pipelined requests.
    pub fn connection(&mut self) -> &mut FramedConnection<JsonkvClientCodec> {
        &mut self.transport.conn
    }
}

impl Jsonkv<UdpTransport> {
    pub async fn connect(addr: &str, timeout: Duration, attempts: u32) -> Result<Self> {
        let socket = crate::connect_udp(addr).await?;
        Ok(Jsonkv {
            transport: UdpTransport {
                socket,
                codec: JsonkvClientCodec::default(),
                timeout,
                attempts: attempts.max(1),
            },
            ids: Ids::default(),
        })
    }
}

impl<T: Exchange> Jsonkv<T> {
    /// Sends one payload and reads its reply, checking that the reply echoes the ids.
    pub async fn call(&mut self, request: &RequestPayload) -> Result<ResponsePayload> {
        self.transport.exchange(request).await
    }

    async fn one(&mut self, command: Command) -> Result<Outcome> {
        let request = self.ids.single(command.clone());
        let response = only(self.call(&request).await?)?;
        outcome(&command, &response)
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Result<()> {
        self.one(Command::put(key, value)).await.map(|_| ())
    }

    /// The value, or `None` when the key does not exist (1000).
    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.one(Command::get(key)).await?.value())
    }

    /// Whether the key existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool> {
        Ok(self.one(Command::delete(key)).await?.done())
    }

    /// Sends the commands as one batch; the responses come in the same order.
    pub async fn batch(&mut self, commands: &[Command]) -> Result<Vec<Response>> {
        let request = self.ids.batch(commands);
        all(self.call(&request).await?)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 for JSON-RPC
// ---------------------------------------------------------------------------------------------

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Empty,
    Exactly(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    length: BodyLength,
    close: bool,
}

fn bad(message: &str) -> ClientError {
    ClientError::Protocol(format!("http: {message}"))
}

/// Parses a response head at the start of `buf`: `None` until the blank line has arrived.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too long"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head is not text"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut close = version == "HTTP/1.0";
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            close = value.contains("close") || (close && !value.contains("keep-alive"));
        }
    }
    let length = if status < 200 || status == 204 || status == 304 {
        BodyLength::Empty
    } else if chunked {
        BodyLength::Chunked
    } else if let Some(n) = length {
        BodyLength::Exactly(n)
    } else {
        BodyLength::UntilClose
    };
    Ok(Some((
        Head {
            status,
            length,
            close,
        },
        end + 4,
    )))
}

/// Decodes a chunked body at the start of `buf`: the body and the bytes used, or `None` until
/// the last chunk and the trailers have arrived.
fn parse_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let Some(end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if body.len().saturating_add(size) > max {
            return Err(bad("response body too large"));
        }
        let Some(chunk) = buf.get(pos..pos.saturating_add(size)) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        pos += size;
        match buf.get(pos..pos + 2) {
            None => return Ok(None),
            Some(b"\r\n") => pos += 2,
            Some(_) => return Err(bad("chunk without CRLF")),
        }
    }
}

/// A JSON-RPC 2.0 client over HTTP/1.1 (port 15003), keeping its connection alive between
/// calls and reconnecting when the server has closed it.
pub struct JsonRpcClient {
    addr: String,
    path: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    read_buf: BytesMut,
    ids: Ids,
}

impl JsonRpcClient {
    /// `addr` is "host:port"; requests go to path `/`. Connects on the first call.
    pub fn new(addr: &str, timeout: Duration) -> Self {
        JsonRpcClient {
            addr: addr.into(),
            path: "/".into(),
            timeout,
            stream: None,
            read_buf: BytesMut::new(),
            ids: Ids::default(),
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let stream = crate::connect_tcp(&self.addr).await?;
        self.stream = Some(stream);
        self.read_buf.clear();
        Ok(())
    }

    /// Reads more bytes; false at EOF.
    async fn fill(&mut self) -> Result<bool> {
        let stream = self.stream.as_mut().ok_or(ClientError::Closed)?;
        Ok(stream.read_buf(&mut self.read_buf).await? > 0)
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<HttpResponse> {
        self.read_buf.clear();
        let stream = self.stream.as_mut().ok_or(ClientError::Closed)?;
        stream.write_all(request).await?;
        let (head, used) = loop {
            if let Some(parsed) = parse_head(&self.read_buf)? {
                break parsed;
            }
            if !self.fill().await? {
                return Err(ClientError::Closed);
            }
        };
        self.read_buf.advance(used);
        let mut close = head.close;
        let body = match head.length {
            BodyLength::Empty => Vec::new(),
            BodyLength::Exactly(n) => {
                if n > DEFAULT_CLIENT_MAX_FRAME {
                    return Err(bad("response body too large"));
                }
                while self.read_buf.len() < n {
                    if !self.fill().await? {
                        return Err(ClientError::Closed);
                    }
                }
                self.read_buf.split_to(n).to_vec()
            }
            BodyLength::Chunked => loop {
                if let Some((body, used)) = parse_chunked(&self.read_buf, DEFAULT_CLIENT_MAX_FRAME)?
                {
                    self.read_buf.advance(used);
                    break body;
                }
                if !self.fill().await? {
                    return Err(ClientError::Closed);
                }
            },
            BodyLength::UntilClose => {
                while self.fill().await? {
                    if self.read_buf.len() > DEFAULT_CLIENT_MAX_FRAME {
                        return Err(bad("response body too large"));
                    }
                }
                close = true;
                self.read_buf.split().to_vec()
            }
        };
        if close {
            self.stream = None;
        }
        Ok(HttpResponse {
            status: head.status,
            body,
        })
    }

    /// POSTs `body` and returns the status and body of the response. A kept-alive connection
    /// that the server closed meanwhile is replaced once.
    pub async fn post(&mut self, body: &[u8]) -> Result<HttpResponse> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.path,
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let timeout = self.timeout;
        let run = async {
            let reused = self.stream.is_some();
            if !reused {
                self.connect().await?;
            }
            match self.exchange(&request).await {
                Err(ClientError::Closed | ClientError::Io(_)) if reused => {
                    self.connect().await?;
                    self.exchange(&request).await
                }
                other => other,
            }
        };
        let result = tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    /// Sends a JSON-RPC payload. `Ok(None)`: `204 No Content` (only notifications).
    pub async fn call(&mut self, payload: &RpcPayload) -> Result<Option<RpcResponsePayload>> {
        let body = encode_rpc_request(payload, &Limits::default());
        let response = self.post(&body).await?;
        match response.status {
            204 => Ok(None),
            200 => decode_rpc_response(&response.body, DEFAULT_MAX_DEPTH)
                .map(Some)
                .ok_or_else(|| bad("body is not a JSON-RPC response")),
            status => Err(ClientError::Server(format!("HTTP {status}"))),
        }
    }

    async fn one(&mut self, command: Command) -> Result<(i64, Option<String>)> {
        let id = self.ids.next();
        let payload = RpcPayload::Single(RpcCall {
            id: Some(id.clone()),
            action: RpcAction::Execute(command),
        });
        let Some(RpcResponsePayload::Single(response)) = self.call(&payload).await? else {
            return Err(bad("no single response to a call"));
        };
        if response.id != id {
            return Err(bad("response id differs from the request's"));
        }
        match response.outcome {
            RpcOutcome::Result { code: 0, value, .. } => Ok((0, value)),
            RpcOutcome::Result {
                code: NOT_FOUND, ..
            } => Ok((NOT_FOUND, None)),
            RpcOutcome::Result { code, message, .. } | RpcOutcome::Error { code, message } => {
                Err(server_error(&code.to_string(), &message))
            }
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Result<()> {
        self.one(Command::put(key, value)).await.map(|_| ())
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        match self.one(Command::get(key)).await? {
            (0, Some(value)) => Ok(Some(value)),
            (0, None) => Err(bad("Get success without a value")),
            _ => Ok(None),
        }
    }

    pub async fn delete(&mut self, key: &str) -> Result<bool> {
        Ok(self.one(Command::delete(key)).await?.0 == 0)
    }

    /// Sends the commands as one JSON-RPC batch; the responses are returned in request order
    /// (a server may answer a batch in any order, so they are matched by id).
    pub async fn batch(&mut self, commands: &[Command]) -> Result<Vec<RpcResponse>> {
        let calls: Vec<RpcCall> = commands
            .iter()
            .map(|c| RpcCall {
                id: Some(self.ids.next()),
                action: RpcAction::Execute(c.clone()),
            })
            .collect();
        let ids: Vec<Id> = calls.iter().filter_map(|c| c.id.clone()).collect();
        let responses = match self.call(&RpcPayload::Batch(calls)).await? {
            Some(RpcResponsePayload::Batch(rs)) => rs,
            Some(RpcResponsePayload::Single(r)) => vec![r],
            None => Vec::new(),
        };
        ids.iter()
            .map(|id| {
                responses
                    .iter()
                    .find(|r| &r.id == id)
                    .cloned()
                    .ok_or_else(|| bad("a batch call has no response"))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// jsonagent
// ---------------------------------------------------------------------------------------------

/// A jsonagent client (port 15000). A registration lives as long as this connection, so keep
/// the client alive (and call [`Self::get_server_list`] now and then: the agent closes
/// connections silent for 20 s).
pub struct AgentClient {
    conn: FramedConnection<AgentClientCodec>,
}

impl AgentClient {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        Ok(AgentClient {
            conn: FramedConnection::connect(addr, AgentClientCodec::default(), timeout).await?,
        })
    }

    pub fn connection(&mut self) -> &mut FramedConnection<AgentClientCodec> {
        &mut self.conn
    }

    pub async fn call(&mut self, request: &AgentRequest) -> Result<AgentResponse> {
        self.conn.call(request).await
    }

    /// Registers a server; returns its node id.
    pub async fn register(
        &mut self,
        address: &str,
        tcpport: Option<u16>,
        rpcport: Option<u16>,
        udpport: Option<u16>,
    ) -> Result<u64> {
        let response = self
            .call(&AgentRequest::Register {
                address: address.into(),
                tcpport,
                rpcport,
                udpport,
            })
            .await?;
        match (&response.value, response.is_success()) {
            (AgentValue::NodeId(id), true) => id
                .parse()
                .map_err(|_| ClientError::Protocol(format!("node id {id:?} is not a number"))),
            (_, true) => Err(ClientError::Protocol(
                "register success without a node id".into(),
            )),
            (_, false) => Err(server_error(&response.code, &response.message)),
        }
    }

    /// Removes this connection's registration; false when there was none (902).
    pub async fn unregister(&mut self) -> Result<bool> {
        let response = self.call(&AgentRequest::Unregister).await?;
        match response.code.as_str() {
            "0" => Ok(true),
            "902" => Ok(false),
            code => Err(server_error(code, &response.message)),
        }
    }

    /// The servers offering `protocol`; empty when the agent answers 903 (no server alive).
    pub async fn get_server_list(&mut self, protocol: ServerProtocol) -> Result<Vec<ServerEntry>> {
        let response = self.call(&AgentRequest::GetServerList { protocol }).await?;
        match (response.code.as_str(), response.value) {
            ("0", AgentValue::Servers(servers)) => Ok(servers),
            ("0", _) => Err(ClientError::Protocol("server list without a list".into())),
            ("903", _) => Ok(Vec::new()),
            (code, _) => Err(server_error(code, &response.message)),
        }
    }
}

#[cfg(test)]
mod tests;
