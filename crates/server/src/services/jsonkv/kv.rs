//! jsonkv put/get/delete on the engine (§4), shared by TCP, UDP and JSON-RPC, and the service
//! that answers framed requests over TCP and UDP.

use bytes::{Bytes, BytesMut};
use polykv_engine::{
    Command as EngineCommand, Durability, Engine, KeyspaceId, Outcome as EngineOutcome, Value,
};
use polykv_protocols::jsonkv::{
    Code, Command, Id, Item, JsonkvServerCodec, Operate, PlainText, RequestPayload, Response,
    ResponsePayload, ServerReply, ServerRequest, NOT_UTF8_MESSAGE,
};
use polykv_protocols::{Decoded, Reject, ServerCodec};

use crate::session::{Reply, Service};
use crate::submit::{Submitted, Submitter};

/// Operation names for metrics (TCP and UDP). `get` first: a request's metrics are found by
/// comparing names in this order, and most requests are gets.
pub const OPS: &[&str] = &["get", "put", "delete", "batch", "invalid", "malformed"];

/// The message of a get refused because its batch already returns too many value bytes.
pub const RESPONSE_TOO_LARGE: &str = "batch response too large";

/// The result of one command, before it is written in a protocol's reply shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `value` is the stored value for a get, `None` otherwise.
    Success {
        op: Operate,
        value: Option<String>,
    },
    Failure {
        code: Code,
        message: &'static str,
    },
}

impl Outcome {
    fn failure(code: Code) -> Outcome {
        Outcome::Failure {
            code,
            message: code.message(),
        }
    }

    /// The jsonkv response object (§3.2).
    pub fn into_response(self, id: Id) -> Response {
        match self {
            Outcome::Success { op, value } => Response::success(op, value.unwrap_or_default(), id),
            Outcome::Failure { code, message } => Response::error_with(code, message, id),
        }
    }
}

/// A command applied to the engine, and what is left before it may be acknowledged.
pub enum Step {
    Done(Outcome),
    /// A write that is visible but must reach its durability before it is acknowledged.
    Durable {
        op: Operate,
        pending: Submitted,
    },
}

impl Step {
    /// Waits for durability, if needed; a write that cannot be made durable is 1024.
    pub async fn finish(self) -> Outcome {
        match self {
            Step::Done(outcome) => outcome,
            Step::Durable { op, pending } => match pending.durable().await {
                Ok(_) => Outcome::Success { op, value: None },
                Err(e) => {
                    tracing::error!(error = %e, "jsonkv write could not be made durable");
                    Outcome::failure(Code::Internal)
                }
            },
        }
    }
}

/// The jsonkv keyspace and how writes are acknowledged.
pub struct KvStore {
    engine: Engine,
    submitter: Submitter,
    keyspace: KeyspaceId,
    durability: Durability,
    /// Value bytes one request (single or batch) may return.
    pub max_response: usize,
    /// A read needs no barrier first (a single node, or a cluster's stale reads): a get is
    /// then answered without an await.
    local_reads: bool,
}

impl KvStore {
    pub fn new(
        submitter: Submitter,
        keyspace: KeyspaceId,
        durability: Durability,
        max_response: usize,
    ) -> Self {
        let local_reads = submitter.reads_locally();
        KvStore {
            engine: submitter.engine().clone(),
            local_reads,
            submitter,
            keyspace,
            durability,
            max_response,
        }
    }

    /// Applies one validated command now (§3.4 step 6). `budget` is what is left of the
    /// request's value bytes; a get that would pass it answers 1024.
    pub async fn apply(&self, command: Command, budget: &mut usize) -> Step {
        match command {
            Command::Get { key } => {
                if let Err(e) = self.submitter.read_barrier().await {
                    tracing::warn!(error = %e, "jsonkv get: no linearizable read");
                    return Step::Done(Outcome::failure(Code::Internal));
                }
                Step::Done(self.get(&key, budget))
            }
            Command::Put { key, value } => {
                self.write(
                    Operate::Put,
                    EngineCommand::put(
                        self.keyspace,
                        Bytes::from(key.into_bytes()),
                        Value::Bytes(Bytes::from(value.into_bytes())),
                    ),
                )
                .await
            }
            Command::Delete { key } => {
                self.write(
                    Operate::Delete,
                    EngineCommand::delete(self.keyspace, Bytes::from(key.into_bytes())),
                )
                .await
            }
        }
    }

    /// Starts loading what reading `keys` will touch (a pipelined batch).
    fn prefetch<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let ks = self.keyspace;
        self.engine.prefetch(keys.map(|key| (ks, key)));
    }

    fn get(&self, key: &str, budget: &mut usize) -> Outcome {
        match self.read(key.as_bytes()) {
            Ok(value) => text_outcome(value, budget),
            Err(failure) => failure,
        }
    }

    /// A single get's reply: a plain value (the usual one) is written straight from the
    /// engine's bytes, checked once; anything else goes through [`Outcome`] as in a batch.
    fn get_reply(&self, key: &[u8], id: Id) -> ServerReply {
        let mut budget = self.max_response;
        let outcome = match self.read(key) {
            Ok(value) => match PlainText::new(value) {
                // Plain text is its own JSON string, between two quotes.
                Ok(value) if value.len().saturating_add(2) <= budget => {
                    return ServerReply::Got { value, id };
                }
                Ok(_) => too_large(),
                Err(value) => text_outcome(value, &mut budget),
            },
            Err(failure) => failure,
        };
        ServerReply::Payload(ResponsePayload::Single(outcome.into_response(id)))
    }

    /// The stored bytes of `key`, or the failure to answer.
    fn read(&self, key: &[u8]) -> Result<Bytes, Outcome> {
        match self.engine.get(self.keyspace, key) {
            Ok(Some(read)) => Ok(read.entry.value.into_bytes()),
            Ok(None) => Err(Outcome::failure(Code::KeyNotFound)),
            Err(e) => {
                tracing::warn!(error = %e, "jsonkv get failed in the engine");
                Err(Outcome::failure(Code::Internal))
            }
        }
    }

    async fn write(&self, op: Operate, command: EngineCommand) -> Step {
        match self.submitter.submit(command, self.durability).await {
            Ok(pending) if *pending.outcome() == EngineOutcome::NotFound => {
                Step::Done(Outcome::failure(Code::KeyNotFound))
            }
            Ok(pending) => Step::Durable { op, pending },
            Err(e) => {
                tracing::warn!(error = %e, op = op.as_str(), "jsonkv write failed in the engine");
                Step::Done(Outcome::failure(Code::Internal))
            }
        }
    }
}

/// A get's outcome for stored bytes that may need escaping, or not be text at all.
fn text_outcome(value: Bytes, budget: &mut usize) -> Outcome {
    // A shared keyspace can hold bytes another protocol wrote; JSON strings cannot carry them.
    // `Vec::from` takes over the copied-out value's buffer instead of copying it again.
    let Ok(value) = String::from_utf8(Vec::from(value)) else {
        return Outcome::Failure {
            code: Code::Internal,
            message: NOT_UTF8_MESSAGE,
        };
    };
    let cost = escaped_len(&value);
    if cost > *budget {
        return too_large();
    }
    *budget -= cost;
    Outcome::Success {
        op: Operate::Get,
        value: Some(value),
    }
}

/// A get refused because its request already returns too many value bytes.
fn too_large() -> Outcome {
    Outcome::Failure {
        code: Code::Internal,
        message: RESPONSE_TOO_LARGE,
    }
}

/// An upper bound of the size of `s` as a JSON string: control characters become up to six
/// bytes, quotes and backslashes two.
pub fn escaped_len(s: &str) -> usize {
    use polykv_protocols::jsonkv::{escapes, needs_escape};
    // The check is cheaper than the count, and values seldom need escaping.
    let escaped = if needs_escape(s.as_bytes()) {
        escapes(s)
    } else {
        0
    };
    s.len() + 2 + escaped
}

/// Whether a response code counts as an error in the metrics (a missing key does not).
fn is_error_code(code: &str) -> bool {
    !matches!(code, "0" | "1000")
}

/// One TCP connection's, or the UDP socket's, jsonkv service.
pub struct JsonkvService {
    store: std::sync::Arc<KvStore>,
}

impl JsonkvService {
    pub fn new(store: std::sync::Arc<KvStore>) -> Self {
        JsonkvService { store }
    }
}

impl Service for JsonkvService {
    type Request = ServerRequest;
    type Response = ServerReply;
    /// Nothing per connection to carry, no pushes: an idle connection is handed over as is.
    const STATELESS: bool = true;

    fn op_name(request: &ServerRequest) -> &'static str {
        match request {
            ServerRequest::Get { .. } => Operate::Get.as_str(),
            ServerRequest::Payload(RequestPayload::Single(Item::Command { command, .. })) => {
                command.operate().as_str()
            }
            ServerRequest::Payload(RequestPayload::Single(Item::Invalid { .. })) => "invalid",
            ServerRequest::Payload(RequestPayload::Batch(_)) => "batch",
            ServerRequest::Payload(RequestPayload::Malformed) => "malformed",
        }
    }

    fn is_error(response: &ServerReply) -> bool {
        match response {
            ServerReply::Got { .. } => false,
            ServerReply::Payload(ResponsePayload::Single(r)) => is_error_code(&r.code),
            ServerReply::Payload(ResponsePayload::Batch(rs)) => {
                rs.iter().any(|r| is_error_code(&r.code))
            }
        }
    }

    fn prefetch(&self, requests: &[ServerRequest]) {
        // Only reads are prefetched, and a lone request's lookups follow at once.
        if requests.len() < 2 {
            return;
        }
        let keys = requests.iter().flat_map(|request| {
            let (get, items) = match request {
                ServerRequest::Get { key, .. } => (Some(key.as_bytes()), &[][..]),
                ServerRequest::Payload(RequestPayload::Single(item)) => {
                    (None, std::slice::from_ref(item))
                }
                ServerRequest::Payload(RequestPayload::Batch(items)) => (None, &items[..]),
                ServerRequest::Payload(RequestPayload::Malformed) => (None, &[][..]),
            };
            get.into_iter()
                .chain(items.iter().filter_map(|item| match item {
                    Item::Command { command, .. } => Some(command.key().as_bytes()),
                    Item::Invalid { .. } => None,
                }))
        });
        self.store.prefetch(keys);
    }

    async fn call(&mut self, request: ServerRequest) -> Reply<ServerReply> {
        let request = match request {
            // The common request, answered without the async layers below.
            ServerRequest::Get { key, id } if self.store.local_reads => {
                return Reply::send(self.store.get_reply(key.as_bytes(), id));
            }
            request => request.into_payload(),
        };
        let single = |response| ServerReply::Payload(ResponsePayload::Single(response));
        let mut budget = self.store.max_response;
        match request {
            RequestPayload::Malformed => Reply::send(single(Response::malformed())),
            RequestPayload::Single(Item::Invalid { code, id }) => {
                Reply::send(single(Response::error(code, id)))
            }
            // The common request, answered without the async layers below.
            RequestPayload::Single(Item::Command {
                command: Command::Get { key },
                id,
            }) if self.store.local_reads => Reply::send(self.store.get_reply(key.as_bytes(), id)),
            RequestPayload::Single(Item::Command { command, id }) => {
                match self.store.apply(command, &mut budget).await {
                    Step::Done(outcome) => Reply::send(single(outcome.into_response(id))),
                    // Deferred, so pipelined writes share one group commit.
                    Step::Durable { op, pending } => Reply::after(
                        pending,
                        single(Response::success(op, String::new(), id.clone())),
                        single(Response::error(Code::Internal, id)),
                    ),
                }
            }
            RequestPayload::Batch(items) => {
                // Every element is applied in order first; the waits then usually share one
                // group commit, and the batch is answered once all its writes are durable.
                let mut steps: Vec<(Step, Id)> = Vec::with_capacity(items.len());
                for item in items {
                    steps.push(match item {
                        Item::Invalid { code, id } => (Step::Done(Outcome::failure(code)), id),
                        Item::Command { command, id } => {
                            (self.store.apply(command, &mut budget).await, id)
                        }
                    });
                }
                let mut responses = Vec::with_capacity(steps.len());
                for (step, id) in steps {
                    responses.push(step.finish().await.into_response(id));
                }
                Reply::send(ServerReply::Payload(ResponsePayload::Batch(responses)))
            }
        }
    }
}

/// jsonkv over UDP: a datagram whose `length` disagrees with its size is dropped (J2), and a
/// reply too large for one datagram is replaced by the 1024 object of §2.2.
pub struct UdpCodec(pub JsonkvServerCodec);

impl ServerCodec for UdpCodec {
    type Request = ServerRequest;
    type Response = ServerReply;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<ServerRequest>, Reject> {
        self.0
            .decode_datagram(buf)
            .map(|request| Decoded::Frame(request.into(), buf.len()))
            .ok_or(Reject::new(
                "jsonkv datagram length disagrees with its size",
            ))
    }

    fn encode_response(&self, response: &ServerReply, out: &mut BytesMut) {
        self.0.encode_datagram_response(response, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_len_is_an_upper_bound() {
        for s in ["", "abc", "a\"b\\c", "\u{1}\n\t", "é€😀"] {
            let json = serde_json::to_string(s).unwrap();
            assert!(escaped_len(s) >= json.len(), "{s:?}");
        }
        assert_eq!(escaped_len("abc"), 5);
    }

    #[test]
    fn udp_codec_drops_wrong_lengths() {
        let codec = UdpCodec(JsonkvServerCodec::default());
        let json = br#"{"jsonkv":"1.0","operate":"get","key":"k"}"#;
        let mut datagram = vec![0u8; 16];
        datagram[8..12].copy_from_slice(&(16 + json.len() as u32).to_be_bytes());
        datagram.extend_from_slice(json);
        assert!(matches!(
            codec.decode_request(&datagram),
            Ok(Decoded::Frame(ServerRequest::Payload(RequestPayload::Single(_)), n))
                if n == datagram.len()
        ));
        datagram.push(b' ');
        assert!(codec.decode_request(&datagram).is_err());
        assert!(codec.decode_request(&datagram[..10]).is_err());
    }
}
