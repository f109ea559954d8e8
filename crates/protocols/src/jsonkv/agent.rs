//! jsonagent (§7): registration and listing of servers, and its codecs.

use super::*;

/// The protocols a server can be listed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerProtocol {
    Tcp,
    Udp,
    Rpc,
}

impl ServerProtocol {
    /// Case-insensitive.
    pub fn parse(text: &str) -> Option<ServerProtocol> {
        [
            ServerProtocol::Tcp,
            ServerProtocol::Udp,
            ServerProtocol::Rpc,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(text))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerProtocol::Tcp => "tcp",
            ServerProtocol::Udp => "udp",
            ServerProtocol::Rpc => "rpc",
        }
    }
}

/// The agent codes of §7.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCode {
    Success,
    UnsupportedVersion,
    InvalidOperate,
    RegisterFailed,
    AlreadyRemoved,
    NoServerAlive,
    InvalidParameters,
}

impl AgentCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentCode::Success => "0",
            AgentCode::UnsupportedVersion => "800",
            AgentCode::InvalidOperate => "900",
            AgentCode::RegisterFailed => "901",
            AgentCode::AlreadyRemoved => "902",
            AgentCode::NoServerAlive => "903",
            AgentCode::InvalidParameters => "905",
        }
    }

    /// The error message (success messages depend on the request).
    pub fn message(self) -> &'static str {
        match self {
            AgentCode::Success => "success",
            AgentCode::UnsupportedVersion => "unsupported protocol version",
            AgentCode::InvalidOperate => "invalid operate",
            AgentCode::RegisterFailed => "register failed",
            AgentCode::AlreadyRemoved => "server already removed",
            AgentCode::NoServerAlive => "no server alive",
            AgentCode::InvalidParameters => "invalid parameters",
        }
    }
}

/// An agent request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// At least one port is present.
    Register {
        address: String,
        tcpport: Option<u16>,
        rpcport: Option<u16>,
        udpport: Option<u16>,
    },
    Unregister,
    GetServerList {
        protocol: ServerProtocol,
    },
    /// Answered with `code` (800, 900 or 905).
    Invalid {
        code: AgentCode,
    },
}

/// One entry of a server list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub nodeid: u64,
    pub address: String,
    pub port: u16,
}

/// The `value` of an agent result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentValue {
    /// No `value` member.
    None,
    /// A register's node id, as the decimal string the wire carries.
    NodeId(String),
    Servers(Vec<ServerEntry>),
}

/// An agent response (§7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentResponse {
    pub value: AgentValue,
    pub code: String,
    pub message: String,
}

impl AgentResponse {
    pub fn registered(nodeid: u64) -> AgentResponse {
        AgentResponse {
            value: AgentValue::NodeId(nodeid.to_string()),
            code: "0".into(),
            message: "register success".into(),
        }
    }

    pub fn unregistered() -> AgentResponse {
        AgentResponse {
            value: AgentValue::None,
            code: "0".into(),
            message: "unregister success".into(),
        }
    }

    /// The list (sorted by the caller); an empty list is 903 `no server alive`.
    pub fn server_list(servers: Vec<ServerEntry>) -> AgentResponse {
        if servers.is_empty() {
            return AgentResponse::error(AgentCode::NoServerAlive);
        }
        AgentResponse {
            value: AgentValue::Servers(servers),
            code: "0".into(),
            message: "get server list success".into(),
        }
    }

    pub fn error(code: AgentCode) -> AgentResponse {
        AgentResponse {
            value: AgentValue::None,
            code: code.as_str().into(),
            message: code.message().into(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == "0"
    }
}

/// A port: a JSON integer or a string of decimal digits, 1–65 535.
pub(super) fn agent_port(value: Option<Option<Value>>) -> Result<Option<u16>, ()> {
    let Some(value) = value else {
        return Ok(None);
    };
    let n = match value.ok_or(())? {
        Value::Number(n) => n.as_u64().ok_or(())?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().map_err(|_| ())?
        }
        _ => return Err(()),
    };
    match u16::try_from(n) {
        Ok(port) if port >= 1 => Ok(Some(port)),
        _ => Err(()),
    }
}

/// Decodes an agent payload (server side).
pub fn decode_agent_request(payload: &[u8], max_depth: usize) -> AgentRequest {
    let invalid = |code| AgentRequest::Invalid { code };
    let Some(members) = document(payload, max_depth).and_then(members) else {
        return invalid(AgentCode::InvalidParameters);
    };
    match member_value(&members, "jsonagent") {
        None => return invalid(AgentCode::InvalidParameters),
        Some(Some(Value::String(v))) if v == VERSION => {}
        Some(_) => return invalid(AgentCode::UnsupportedVersion),
    }
    let operate = member_string(&members, "operate").unwrap_or_default();
    if operate.eq_ignore_ascii_case("register") {
        let address = match member_string(&members, "address") {
            Some(a) if !a.is_empty() && a.len() <= MAX_AGENT_ADDRESS => a,
            _ => return invalid(AgentCode::InvalidParameters),
        };
        let ports = (
            agent_port(member_value(&members, "tcpport")),
            agent_port(member_value(&members, "rpcport")),
            agent_port(member_value(&members, "udpport")),
        );
        match ports {
            (Ok(tcpport), Ok(rpcport), Ok(udpport))
                if tcpport.is_some() || rpcport.is_some() || udpport.is_some() =>
            {
                AgentRequest::Register {
                    address,
                    tcpport,
                    rpcport,
                    udpport,
                }
            }
            _ => invalid(AgentCode::InvalidParameters),
        }
    } else if operate.eq_ignore_ascii_case("unregister") {
        AgentRequest::Unregister
    } else if operate.eq_ignore_ascii_case("getserverlist") {
        match member_string(&members, "protocol")
            .as_deref()
            .and_then(ServerProtocol::parse)
        {
            Some(protocol) => AgentRequest::GetServerList { protocol },
            None => invalid(AgentCode::InvalidParameters),
        }
    } else {
        invalid(AgentCode::InvalidOperate)
    }
}

/// Appends the JSON of an agent request (client side).
pub fn encode_agent_request(out: &mut BytesMut, request: &AgentRequest) {
    match request {
        AgentRequest::Register {
            address,
            tcpport,
            rpcport,
            udpport,
        } => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"register\",\"address\":");
            put_str(out, address);
            for (name, port) in [
                ("tcpport", tcpport),
                ("rpcport", rpcport),
                ("udpport", udpport),
            ] {
                if let Some(port) = port {
                    out.put_slice(format!(",\"{name}\":{port}").as_bytes());
                }
            }
            out.put_u8(b'}');
        }
        AgentRequest::Unregister => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"unregister\"}");
        }
        AgentRequest::GetServerList { protocol } => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"getserverlist\",\"protocol\":\"");
            out.put_slice(protocol.as_str().as_bytes());
            out.put_slice(b"\"}");
        }
        // Objects that decode back to the same code (hostile tests, fuzzing).
        AgentRequest::Invalid { code } => out.put_slice(match code {
            AgentCode::UnsupportedVersion => b"{\"jsonagent\":\"2.0\"}".as_slice(),
            AgentCode::InvalidOperate => b"{\"jsonagent\":\"1.0\"}",
            _ => b"{}",
        }),
    }
}

/// Appends the JSON of an agent response: members in the order of §7.2.
pub fn encode_agent_response(out: &mut BytesMut, response: &AgentResponse) {
    out.put_slice(b"{\"jsonagent\":\"1.0\",\"result\":{");
    match &response.value {
        AgentValue::None => {}
        AgentValue::NodeId(id) => {
            out.put_slice(b"\"value\":");
            put_str(out, id);
            out.put_u8(b',');
        }
        AgentValue::Servers(servers) => {
            out.put_slice(b"\"value\":[");
            for (i, s) in servers.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(format!("{{\"nodeid\":{},\"address\":", s.nodeid).as_bytes());
                put_str(out, &s.address);
                out.put_slice(format!(",\"port\":{}}}", s.port).as_bytes());
            }
            out.put_slice(b"],");
        }
    }
    out.put_slice(b"\"code\":");
    put_str(out, &response.code);
    out.put_slice(b",\"message\":");
    put_str(out, &response.message);
    out.put_slice(b"}}");
}

pub(super) fn parse_server_entry(raw: &[u8]) -> Option<ServerEntry> {
    let m = members(raw)?;
    let number = |v: Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    Some(ServerEntry {
        // The seed's own example lists entries without a node id.
        nodeid: match member_value(&m, "nodeid") {
            None => 0,
            Some(v) => number(v?)?,
        },
        address: member_string(&m, "address")?,
        port: u16::try_from(number(member_value(&m, "port")??)?).ok()?,
    })
}

/// Decodes an agent response payload (client side).
pub fn decode_agent_response(payload: &[u8], max_depth: usize) -> Option<AgentResponse> {
    let outer = members(document(payload, max_depth)?)?;
    let result = members(member(&outer, "result")?)?;
    let value = match member(&result, "value") {
        None => AgentValue::None,
        Some(raw) => match raw.first()? {
            b'[' => AgentValue::Servers(
                elements(raw)?
                    .into_iter()
                    .map(parse_server_entry)
                    .collect::<Option<_>>()?,
            ),
            b'n' => AgentValue::None,
            _ => AgentValue::NodeId(text_of(serde_json::from_slice(raw).ok()?)?),
        },
    };
    Some(AgentResponse {
        value,
        code: text_of(member_value(&result, "code")??)?,
        message: match member_value(&result, "message") {
            None => String::new(),
            Some(v) => text_of(v?)?,
        },
    })
}

/// The server side of jsonagent (TCP, same framing as jsonkv).
#[derive(Debug, Clone, Copy)]
pub struct AgentServerCodec {
    pub max_frame: usize,
    pub max_depth: usize,
}

impl Default for AgentServerCodec {
    fn default() -> Self {
        AgentServerCodec {
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl ServerCodec for AgentServerCodec {
    type Request = AgentRequest;
    type Response = AgentResponse;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<AgentRequest>, Reject> {
        Ok(match split_frame(buf, self.max_frame)? {
            Decoded::Frame(payload, used) => {
                Decoded::Frame(decode_agent_request(payload, self.max_depth), used)
            }
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }

    fn encode_response(&self, response: &AgentResponse, out: &mut BytesMut) {
        put_frame(out, |out| encode_agent_response(out, response));
    }
}

/// The client side of jsonagent.
#[derive(Debug, Clone, Copy)]
pub struct AgentClientCodec {
    pub max_frame: usize,
    pub max_depth: usize,
}

impl Default for AgentClientCodec {
    fn default() -> Self {
        AgentClientCodec {
            max_frame: DEFAULT_CLIENT_MAX_FRAME,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl ClientCodec for AgentClientCodec {
    type Request = AgentRequest;
    type Response = AgentResponse;

    fn encode_request(&self, request: &AgentRequest, out: &mut BytesMut) {
        put_frame(out, |out| encode_agent_request(out, request));
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<AgentResponse>, Reject> {
        Ok(match split_frame(buf, self.max_frame)? {
            Decoded::Frame(payload, used) => Decoded::Frame(
                decode_agent_response(payload, self.max_depth)
                    .ok_or(Reject::new("not a jsonagent response"))?,
                used,
            ),
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }
}
