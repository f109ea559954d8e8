//! JSON-RPC 2.0 (§6): bodies only; HTTP is the listener's business.

use std::borrow::Cow;

use super::*;

/// The standard JSON-RPC errors the server answers with (it never answers -32603, Internal
/// error: an engine failure is a jsonkv result code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcError {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
}

impl RpcError {
    pub fn code(self) -> i64 {
        match self {
            RpcError::ParseError => -32700,
            RpcError::InvalidRequest => -32600,
            RpcError::MethodNotFound => -32601,
            RpcError::InvalidParams => -32602,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RpcError::ParseError => "Parse error",
            RpcError::InvalidRequest => "Invalid Request",
            RpcError::MethodNotFound => "Method not found",
            RpcError::InvalidParams => "Invalid params",
        }
    }
}

/// What to do with one JSON-RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAction {
    /// A valid Put/Get/Delete.
    Execute(Command),
    /// A well-formed call whose key or value breaks a limit: answered in `result` with this
    /// code (1001, 1002), not in `error` [orig].
    Refuse(Code),
    /// Answered with a JSON-RPC `error` object.
    Error(RpcError),
}

/// One JSON-RPC call. `id == None` is a notification: it is executed but never answered.
/// Parse errors and invalid requests always carry an id (`null` when none could be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcCall {
    pub id: Option<Id>,
    pub action: RpcAction,
}

/// A whole JSON-RPC request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcPayload {
    Single(RpcCall),
    Batch(Vec<RpcCall>),
}

/// The id of a call: `Ok(None)` when absent, `Err(())` when present but not a string,
/// number or null.
pub(super) fn rpc_id(members: &[(Cow<'_, str>, &[u8])]) -> Result<Option<Id>, ()> {
    match member(members, "id") {
        None => Ok(None),
        Some(raw) => match raw.first() {
            Some(b'"' | b'-' | b'0'..=b'9' | b'n') => Ok(Some(Id::from_raw(raw))),
            _ => Err(()),
        },
    }
}

pub(super) fn parse_rpc_call(raw: &[u8], limits: &Limits) -> RpcCall {
    let invalid = |id: Option<Id>| RpcCall {
        id: Some(id.unwrap_or_else(Id::null)),
        action: RpcAction::Error(RpcError::InvalidRequest),
    };
    let Some(members) = members(raw) else {
        return invalid(None);
    };
    let Ok(id) = rpc_id(&members) else {
        return invalid(None);
    };
    if member_string(&members, "jsonrpc").as_deref() != Some("2.0") {
        return invalid(id);
    }
    let Some(method) = member_string(&members, "method") else {
        return invalid(id);
    };
    let call = |action| RpcCall {
        id: id.clone(),
        action,
    };
    let Some(op) = [Operate::Put, Operate::Get, Operate::Delete]
        .into_iter()
        .find(|op| op.method() == method)
    else {
        return call(RpcAction::Error(RpcError::MethodNotFound));
    };
    let want = if op == Operate::Put { 2 } else { 1 };
    let params: Option<Vec<String>> = match member_value(&members, "params") {
        Some(Some(Value::Array(params))) if params.len() == want => params
            .into_iter()
            .map(|p| match p {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    let Some(mut params) = params else {
        return call(RpcAction::Error(RpcError::InvalidParams));
    };
    let value = (op == Operate::Put).then(|| params.pop().unwrap_or_default());
    let key = params.pop().unwrap_or_default();
    if key.is_empty() || key.len() > limits.max_key {
        return call(RpcAction::Refuse(Code::InvalidKey));
    }
    let command = match (op, value) {
        (Operate::Put, Some(value)) if value.len() > limits.max_value => {
            return call(RpcAction::Refuse(Code::ValueTooLong));
        }
        (Operate::Put, value) => Command::Put {
            key,
            value: value.unwrap_or_default(),
        },
        (Operate::Get, _) => Command::Get { key },
        (Operate::Delete, _) => Command::Delete { key },
    };
    call(RpcAction::Execute(command))
}

/// Decodes a JSON-RPC request body (server side). A body that is not JSON gives a single
/// `ParseError` call; an empty batch a single `InvalidRequest`, both with id `null`.
pub fn decode_rpc_request(body: &[u8], limits: &Limits) -> RpcPayload {
    let single_error = |error| {
        RpcPayload::Single(RpcCall {
            id: Some(Id::null()),
            action: RpcAction::Error(error),
        })
    };
    let Some(doc) = document(body, limits.max_depth) else {
        return single_error(RpcError::ParseError);
    };
    match elements(doc) {
        Some(calls) if calls.is_empty() => single_error(RpcError::InvalidRequest),
        Some(calls) => RpcPayload::Batch(
            calls
                .into_iter()
                .map(|c| parse_rpc_call(c, limits))
                .collect(),
        ),
        None => RpcPayload::Single(parse_rpc_call(doc, limits)),
    }
}

pub(super) fn put_rpc_call(out: &mut BytesMut, call: &RpcCall, limits: &Limits) {
    let (method, params): (&str, Vec<&str>) = match &call.action {
        RpcAction::Execute(Command::Put { key, value }) => ("Put", vec![key, value]),
        RpcAction::Execute(Command::Get { key }) => ("Get", vec![key]),
        RpcAction::Execute(Command::Delete { key }) => ("Delete", vec![key]),
        // The forms below decode back to the same action (hostile tests, fuzzing).
        RpcAction::Refuse(Code::ValueTooLong) => ("Put", vec!["k"]),
        RpcAction::Refuse(_) => ("Get", vec![""]),
        RpcAction::Error(RpcError::MethodNotFound) => ("", vec![]),
        RpcAction::Error(RpcError::InvalidParams) => ("Get", vec![]),
        RpcAction::Error(RpcError::ParseError) => {
            out.put_slice(b"?");
            return;
        }
        RpcAction::Error(_) => {
            out.put_slice(b"{");
            if let Some(id) = &call.id {
                out.put_slice(b"\"id\":");
                out.put_slice(id.as_json().as_bytes());
            }
            out.put_slice(b"}");
            return;
        }
    };
    out.put_slice(b"{\"jsonrpc\":\"2.0\",\"method\":");
    put_str(out, method);
    out.put_slice(b",\"params\":[");
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_str(out, p);
    }
    if call.action == RpcAction::Refuse(Code::ValueTooLong) {
        out.put_slice(b",\"");
        out.put_bytes(b'x', limits.max_value.saturating_add(1));
        out.put_u8(b'"');
    }
    out.put_u8(b']');
    if let Some(id) = &call.id {
        out.put_slice(b",\"id\":");
        out.put_slice(id.as_json().as_bytes());
    }
    out.put_u8(b'}');
}

/// Encodes a JSON-RPC request body (client side); positional params.
pub fn encode_rpc_request(payload: &RpcPayload, limits: &Limits) -> Vec<u8> {
    let mut out = BytesMut::new();
    match payload {
        RpcPayload::Single(call) => put_rpc_call(&mut out, call, limits),
        RpcPayload::Batch(calls) => {
            out.put_u8(b'[');
            for (i, call) in calls.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_rpc_call(&mut out, call, limits);
            }
            out.put_u8(b']');
        }
    }
    out.to_vec()
}

/// The outcome part of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcOutcome {
    /// `result`: numeric code, message, and the value of a successful Get.
    Result {
        code: i64,
        message: String,
        value: Option<String>,
    },
    /// `error`: a standard JSON-RPC error.
    Error { code: i64, message: String },
}

/// One JSON-RPC response object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcResponse {
    pub outcome: RpcOutcome,
    pub id: Id,
}

impl RpcResponse {
    /// Success of `op`; `value` only for Get.
    pub fn success(op: Operate, value: Option<String>, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Result {
                code: 0,
                message: op.success_message().into(),
                value,
            },
            id,
        }
    }

    /// A key-value error (1000, 1001, 1002, 1024), in `result`.
    pub fn refused(code: Code, id: Id) -> RpcResponse {
        RpcResponse::refused_with(code, code.message(), id)
    }

    pub fn refused_with(code: Code, message: &str, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Result {
                code: i64::from(code.number()),
                message: message.into(),
                value: None,
            },
            id,
        }
    }

    /// A JSON-RPC `error`.
    pub fn error(error: RpcError, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Error {
                code: error.code(),
                message: error.message().into(),
            },
            id,
        }
    }
}

/// A whole JSON-RPC response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcResponsePayload {
    Single(RpcResponse),
    Batch(Vec<RpcResponse>),
}

impl RpcResponsePayload {
    /// The body for the answers to a request payload (only calls with an id are answered);
    /// `None` when nothing needs an answer: HTTP `204 No Content`.
    pub fn for_answers(batch: bool, mut answers: Vec<RpcResponse>) -> Option<RpcResponsePayload> {
        if answers.is_empty() {
            None
        } else if batch {
            Some(RpcResponsePayload::Batch(answers))
        } else {
            answers.pop().map(RpcResponsePayload::Single)
        }
    }
}

pub(super) fn put_rpc_response(out: &mut BytesMut, r: &RpcResponse) {
    out.put_slice(b"{\"jsonrpc\":\"2.0\",");
    match &r.outcome {
        RpcOutcome::Result {
            code,
            message,
            value,
        } => {
            out.put_slice(format!("\"result\":{{\"code\":{code},\"message\":").as_bytes());
            put_str(out, message);
            if let Some(value) = value {
                out.put_slice(b",\"value\":");
                put_str(out, value);
            }
        }
        RpcOutcome::Error { code, message } => {
            out.put_slice(format!("\"error\":{{\"code\":{code},\"message\":").as_bytes());
            put_str(out, message);
        }
    }
    out.put_slice(b"},\"id\":");
    out.put_slice(r.id.as_json().as_bytes());
    out.put_u8(b'}');
}

/// Encodes a JSON-RPC response body (server side).
pub fn encode_rpc_response(payload: &RpcResponsePayload) -> Vec<u8> {
    let mut out = BytesMut::new();
    match payload {
        RpcResponsePayload::Single(r) => put_rpc_response(&mut out, r),
        RpcResponsePayload::Batch(rs) => {
            out.put_u8(b'[');
            for (i, r) in rs.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_rpc_response(&mut out, r);
            }
            out.put_u8(b']');
        }
    }
    out.to_vec()
}

pub(super) fn parse_rpc_response_object(raw: &[u8]) -> Option<RpcResponse> {
    let outer = members(raw)?;
    let id = read_id(&outer);
    let int = |v: Option<Option<Value>>| v??.as_i64();
    let string = |v: Option<Option<Value>>| match v?? {
        Value::String(s) => Some(s),
        _ => None,
    };
    if let Some(result) = member(&outer, "result") {
        let result = members(result)?;
        let value = match member_value(&result, "value") {
            None => None,
            Some(v) => Some(string(Some(v))?),
        };
        return Some(RpcResponse {
            outcome: RpcOutcome::Result {
                code: int(member_value(&result, "code"))?,
                message: string(member_value(&result, "message"))?,
                value,
            },
            id,
        });
    }
    let error = members(member(&outer, "error")?)?;
    Some(RpcResponse {
        outcome: RpcOutcome::Error {
            code: int(member_value(&error, "code"))?,
            message: string(member_value(&error, "message"))?,
        },
        id,
    })
}

/// Decodes a JSON-RPC response body (client side).
pub fn decode_rpc_response(body: &[u8], max_depth: usize) -> Option<RpcResponsePayload> {
    let doc = document(body, max_depth)?;
    match elements(doc) {
        Some(rs) => Some(RpcResponsePayload::Batch(
            rs.into_iter()
                .map(parse_rpc_response_object)
                .collect::<Option<_>>()?,
        )),
        None => Some(RpcResponsePayload::Single(parse_rpc_response_object(doc)?)),
    }
}
