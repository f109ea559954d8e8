//! The wire protocols the load generator speaks: GET and SET requests and their replies.

use bytes::{Bytes, BytesMut};
use polykv_protocols::opencluster::{
    self, ItemId, OpenClusterClientCodec, RequestBody, Response, ResponseBody,
};
use polykv_protocols::{jsonkv, minority, nmdb, ClientCodec, Decoded};

/// How the load generator talks to one kind of server.
pub trait LoadProtocol: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>);
    /// `sync`: ask for a durable write where the protocol can say so (nmdb's SYNC flag).
    fn encode_set(&self, key: &[u8], value: &[u8], sync: bool, out: &mut Vec<u8>);
    /// Parses the reply at the start of `buf`: `Ok(None)` when incomplete, else the bytes it
    /// used and whether it reports success (a GET miss is a success).
    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String>;
}

/// Which protocol, by name on the command line.
pub fn by_name(name: &str) -> Option<Box<dyn LoadProtocol>> {
    match name {
        "memcached" => Some(Box::new(Memcached)),
        "redis" | "resp" => Some(Box::new(Resp)),
        "nmdb" => Some(Box::new(Nmdb { cache_only: false })),
        "nmdb-cache" => Some(Box::new(Nmdb { cache_only: true })),
        "opencluster" => Some(Box::new(OpenCluster)),
        "minority" => Some(Box::new(Minority)),
        "jsonkv" => Some(Box::new(Jsonkv)),
        "etcd" => Some(Box::new(Etcd)),
        _ => None,
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

thread_local! {
    /// Where [`encode_with`] lets a codec write: one buffer per thread, reused, so that
    /// encoding a request allocates nothing of its own.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Appends `request` as `codec` encodes it.
fn encode_with<C: ClientCodec>(codec: C, request: &C::Request, out: &mut Vec<u8>) {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        codec.encode_request(request, &mut buf);
        out.extend_from_slice(&buf);
    });
}

/// Decodes the reply at the start of `buf` with `codec`: `Ok(None)` when incomplete, else the
/// bytes it used and what `judge` says of it (whether it reports success, or why it cannot be a
/// reply to the load's requests).
fn decode_with<C: ClientCodec>(
    codec: C,
    buf: &[u8],
    judge: impl FnOnce(C::Response) -> Result<bool, String>,
) -> Result<Option<(usize, bool)>, String> {
    match codec.decode_response(buf) {
        Ok(Decoded::Frame(reply, used)) => Ok(Some((used, judge(reply)?))),
        Ok(Decoded::Incomplete) => Ok(None),
        Err(reject) => Err(reject.reason.to_string()),
    }
}

/// memcached's text protocol.
pub struct Memcached;

impl LoadProtocol for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"get ");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\r\n");
    }

    fn encode_set(&self, key: &[u8], value: &[u8], _sync: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"set ");
        out.extend_from_slice(key);
        out.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let Some(end) = find_crlf(buf, 0) else {
            return Ok(None);
        };
        let line = &buf[..end];
        if line == b"END" || line == b"STORED" {
            return Ok(Some((end + 2, true)));
        }
        if let Some(rest) = line.strip_prefix(b"VALUE ") {
            // VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n
            let text = std::str::from_utf8(rest).map_err(|_| "bad VALUE line".to_string())?;
            let bytes: usize = text
                .split_whitespace()
                .nth(2)
                .and_then(|b| b.parse().ok())
                .ok_or_else(|| format!("bad VALUE line {text:?}"))?;
            let total = end + 2 + bytes + 2 + 5;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 5..total] != b"END\r\n" {
                return Err("VALUE without END".into());
            }
            return Ok(Some((total, true)));
        }
        if line.starts_with(b"ERROR")
            || line.starts_with(b"CLIENT_ERROR")
            || line.starts_with(b"SERVER_ERROR")
            || line == b"NOT_STORED"
        {
            return Ok(Some((end + 2, false)));
        }
        Err(format!(
            "unexpected memcached reply {:?}",
            String::from_utf8_lossy(line)
        ))
    }
}

/// nmdb over TCP, as libnmdb sends it (request id 1). `cache_only`: GET and SET with the
/// CACHE_ONLY flag (`nmdb-cache`), nmdb's in-memory mode, the one comparable to memcached.
pub struct Nmdb {
    pub cache_only: bool,
}

impl Nmdb {
    fn mode(&self) -> nmdb::Mode {
        if self.cache_only {
            nmdb::Mode::CacheOnly
        } else {
            nmdb::Mode::Normal
        }
    }
}

impl LoadProtocol for Nmdb {
    fn name(&self) -> &'static str {
        if self.cache_only {
            "nmdb-cache"
        } else {
            "nmdb"
        }
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        let request = nmdb::Request::Get {
            id: 1,
            mode: self.mode(),
            key: Bytes::copy_from_slice(key),
        };
        encode_nmdb(&request, out);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], sync: bool, out: &mut Vec<u8>) {
        let mode = if sync { nmdb::Mode::Sync } else { self.mode() };
        let request = nmdb::Request::Set {
            id: 1,
            mode,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        };
        encode_nmdb(&request, out);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        decode_with(nmdb::NmdbClientCodec::tcp(), buf, |reply| {
            Ok(!matches!(reply.body, nmdb::ResponseBody::Error(_)))
        })
    }
}

fn encode_nmdb(request: &nmdb::Request, out: &mut Vec<u8>) {
    encode_with(nmdb::NmdbClientCodec::tcp(), request, out);
}

/// OpenCluster: get_string and set_string of the key as an item outside any map (no hello,
/// so the server sends no pushes). `sync` sets full wait.
pub struct OpenCluster;

impl OpenCluster {
    fn encode(body: RequestBody, out: &mut Vec<u8>) {
        let request = opencluster::Request { user_id: 1, body };
        encode_with(OpenClusterClientCodec::default(), &request, out);
    }
}

impl LoadProtocol for OpenCluster {
    fn name(&self) -> &'static str {
        "opencluster"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        let body = RequestBody::Get {
            item: ItemId::named(None, key),
            kind: opencluster::ValueType::String,
        };
        Self::encode(body, out);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], sync: bool, out: &mut Vec<u8>) {
        let body = RequestBody::Set {
            item: ItemId::named(None, key),
            expires: 0,
            full_wait: sync,
            name: Bytes::copy_from_slice(key),
            value: opencluster::Value::String(Bytes::copy_from_slice(value)),
        };
        Self::encode(body, out);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        decode_with(
            OpenClusterClientCodec::default(),
            buf,
            |reply| match reply {
                Response::Reply { body, .. } => Ok(matches!(
                    body,
                    ResponseBody::Ack | ResponseBody::Fail | ResponseBody::Data { .. }
                )),
                Response::Push { push, .. } => Err(format!("unexpected push {push:?}")),
            },
        )
    }
}

/// minority: get and set of (key, empty datanumId). A set is acknowledged once on disk unless
/// the server runs with `minority.async_acks`; `sync` changes nothing here.
pub struct Minority;

impl Minority {
    fn encode(op: minority::Op, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let request = minority::Request::Frame {
            op,
            opaque: 1,
            data_id: Bytes::copy_from_slice(key),
            datanum_id: Bytes::new(),
            value: Bytes::copy_from_slice(value),
        };
        encode_with(minority::MinorityClientCodec::default(), &request, out);
    }
}

impl LoadProtocol for Minority {
    fn name(&self) -> &'static str {
        "minority"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        Self::encode(minority::Op::Get, key, b"", out);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], _sync: bool, out: &mut Vec<u8>) {
        Self::encode(minority::Op::Set, key, value, out);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        decode_with(minority::MinorityClientCodec::default(), buf, |reply| {
            Ok(matches!(
                reply.status,
                minority::status::OK | minority::status::NOT_FOUND
            ))
        })
    }
}

/// jsonkv over TCP: one put or get object per frame (the workload's keys and values are ASCII).
/// A put is acknowledged once on disk unless the server runs with `jsonkv.async_acks`.
pub struct Jsonkv;

impl Jsonkv {
    fn encode(command: jsonkv::Command, out: &mut Vec<u8>) {
        let request = jsonkv::RequestPayload::Single(jsonkv::Item::Command {
            command,
            id: jsonkv::Id::number(1),
        });
        encode_with(jsonkv::JsonkvClientCodec::default(), &request, out);
    }

    /// The request `{"jsonkv":"1.0","operate":OP,"key":KEY[,"value":VALUE],"id":1}` written
    /// directly, byte for byte what the codec writes, when the key and value are UTF-8 with
    /// nothing to escape (the workload's always are); false (nothing written) otherwise.
    fn encode_plain(operate: &str, key: &[u8], value: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
        let plain = |text: &[u8]| std::str::from_utf8(text).is_ok_and(|t| jsonkv::escapes(t) == 0);
        if !plain(key) || !value.is_none_or(plain) {
            return false;
        }
        let start = out.len();
        out.extend_from_slice(&[0; jsonkv::HEADER_LEN]);
        out.extend_from_slice(b"{\"jsonkv\":\"1.0\",\"operate\":\"");
        out.extend_from_slice(operate.as_bytes());
        out.extend_from_slice(b"\",\"key\":\"");
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(b"\",\"value\":\"");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\",\"id\":1}");
        let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
        true
    }

    /// Judges a reply of the server's usual shape, `{"jsonkv":"1.0","result":{"value":…,
    /// "code":"N",…}…}`, by its code alone, without building the response: a quote cannot
    /// appear unescaped inside a JSON string, so the first `"code":"` after `"result":{` is the
    /// member. `None` for any other shape (the full decoder then decides).
    fn judge_plain(payload: &[u8]) -> Option<bool> {
        const HEAD: &[u8] = b"{\"jsonkv\":\"1.0\",\"result\":{";
        const CODE: &[u8] = b"\"code\":\"";
        let rest = payload.strip_prefix(HEAD)?;
        let at = rest.windows(CODE.len()).position(|w| w == CODE)?;
        let code = &rest[at + CODE.len()..];
        let end = code.iter().position(|b| *b == b'"')?;
        let code = &code[..end];
        if !payload.ends_with(b"}") {
            return None;
        }
        Some(
            code == jsonkv::Code::Success.as_str().as_bytes()
                || code == jsonkv::Code::KeyNotFound.as_str().as_bytes(),
        )
    }
}

impl LoadProtocol for Jsonkv {
    fn name(&self) -> &'static str {
        "jsonkv"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        if Self::encode_plain("get", key, None, out) {
            return;
        }
        let key = String::from_utf8_lossy(key).into_owned();
        Self::encode(jsonkv::Command::get(key), out);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], _sync: bool, out: &mut Vec<u8>) {
        if Self::encode_plain("put", key, Some(value), out) {
            return;
        }
        let key = String::from_utf8_lossy(key).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        Self::encode(jsonkv::Command::put(key, value), out);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let frame = jsonkv::split_frame(buf, jsonkv::DEFAULT_CLIENT_MAX_FRAME)
            .map_err(|reject| reject.reason.to_string())?;
        if let Decoded::Frame(payload, used) = frame {
            if let Some(success) = Self::judge_plain(payload) {
                return Ok(Some((used, success)));
            }
        }
        decode_with(
            jsonkv::JsonkvClientCodec::default(),
            buf,
            |reply| match reply {
                jsonkv::ResponsePayload::Single(reply) => {
                    Ok(reply.is_success() || reply.code == jsonkv::Code::KeyNotFound.as_str())
                }
                jsonkv::ResponsePayload::Batch(_) => {
                    Err("a batch reply to a single request".into())
                }
            },
        )
    }
}

/// Redis's RESP2.
pub struct Resp;

fn bulk(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
    out.extend_from_slice(item);
    out.extend_from_slice(b"\r\n");
}

impl LoadProtocol for Resp {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"*2\r\n");
        bulk(out, b"GET");
        bulk(out, key);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], _sync: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"*3\r\n");
        bulk(out, b"SET");
        bulk(out, key);
        bulk(out, value);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let Some(end) = find_crlf(buf, 0) else {
            return Ok(None);
        };
        match buf.first() {
            Some(b'+') | Some(b':') => Ok(Some((end + 2, true))),
            Some(b'-') => Ok(Some((end + 2, false))),
            Some(b'$') => {
                let len: i64 = std::str::from_utf8(&buf[1..end])
                    .ok()
                    .and_then(|l| l.parse().ok())
                    .ok_or("bad bulk length")?;
                if len < 0 {
                    return Ok(Some((end + 2, true)));
                }
                let total = end + 2 + len as usize + 2;
                Ok((buf.len() >= total).then_some((total, true)))
            }
            _ => Err(format!(
                "unexpected RESP reply {:?}",
                String::from_utf8_lossy(&buf[..end])
            )),
        }
    }
}

/// etcd v3 through its JSON gateway: `POST /v3/kv/put` and `/v3/kv/range` with base64 keys
/// and values, on a keep-alive HTTP/1.1 connection (every etcd write is durable: its WAL is
/// fsynced before the answer).
pub struct Etcd;

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Etcd {
    fn post(path: &str, body: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
}

impl LoadProtocol for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn encode_get(&self, key: &[u8], out: &mut Vec<u8>) {
        let body = format!("{{\"key\":\"{}\"}}", base64(key));
        Self::post("/v3/kv/range", &body, out);
    }

    fn encode_set(&self, key: &[u8], value: &[u8], _sync: bool, out: &mut Vec<u8>) {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key),
            base64(value)
        );
        Self::post("/v3/kv/put", &body, out);
    }

    fn decode_reply(&self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad HTTP status line")?;
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or("an HTTP reply without Content-Length")?;
        let total = head_end + 4 + length;
        Ok((buf.len() >= total).then_some((total, status == 200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_requests_and_replies() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let mut out = Vec::new();
        Etcd.encode_set(b"k", b"v", true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v3/kv/put HTTP/1.1\r\n"));
        assert!(text.ends_with("{\"key\":\"aw==\",\"value\":\"dg==\"}"));
        let reply =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(Etcd.decode_reply(reply).unwrap(), Some((reply.len(), true)));
        assert_eq!(Etcd.decode_reply(&reply[..reply.len() - 1]).unwrap(), None);
        let refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            Etcd.decode_reply(refused).unwrap(),
            Some((refused.len(), false))
        );
    }

    #[test]
    fn memcached_encoding_and_replies() {
        let mut out = Vec::new();
        Memcached.encode_set(b"k", b"vv", false, &mut out);
        Memcached.encode_get(b"k", &mut out);
        assert_eq!(out, b"set k 0 0 2\r\nvv\r\nget k\r\n");
        assert_eq!(
            Memcached.decode_reply(b"STORED\r\n").unwrap(),
            Some((8, true))
        );
        assert_eq!(Memcached.decode_reply(b"END\r\n").unwrap(), Some((5, true)));
        let hit = b"VALUE k 0 2\r\nvv\r\nEND\r\n";
        assert_eq!(
            Memcached.decode_reply(hit).unwrap(),
            Some((hit.len(), true))
        );
        assert_eq!(Memcached.decode_reply(&hit[..hit.len() - 1]).unwrap(), None);
        assert_eq!(
            Memcached
                .decode_reply(b"SERVER_ERROR out of memory\r\n")
                .unwrap(),
            Some((28, false))
        );
        assert!(Memcached.decode_reply(b"WHAT\r\n").is_err());
    }

    #[test]
    fn resp_encoding_and_replies() {
        let mut out = Vec::new();
        Resp.encode_set(b"k", b"v", false, &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        assert_eq!(Resp.decode_reply(b"+OK\r\n").unwrap(), Some((5, true)));
        assert_eq!(Resp.decode_reply(b"$-1\r\n").unwrap(), Some((5, true)));
        assert_eq!(Resp.decode_reply(b"$2\r\nvv\r\n").unwrap(), Some((8, true)));
        assert_eq!(Resp.decode_reply(b"$2\r\nvv").unwrap(), None);
        assert_eq!(Resp.decode_reply(b"-ERR x\r\n").unwrap(), Some((8, false)));
    }

    #[test]
    fn opencluster_encoding_and_replies() {
        let mut out = Vec::new();
        OpenCluster.encode_set(b"something", b"-", true, &mut out);
        // set_string, user id 1, L = 24 + 9 + 1, map 0, FNV-1a of the name, full wait 1.
        assert_eq!(&out[..12], &[0x07, 0xe4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 34]);
        assert_eq!(&out[12..20], &[0, 0, 0, 0, 0x7e, 0x47, 0x59, 0x6b]);
        assert_eq!(&out[24..28], &[0, 0, 0, 1]);
        let mut get = Vec::new();
        OpenCluster.encode_get(b"something", &mut get);
        assert_eq!(&get[..4], &[0x08, 0x48, 0, 0]);
        let ack = [0, 1, 0x07, 0xe4, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(OpenCluster.decode_reply(&ack).unwrap(), Some((12, true)));
        assert_eq!(OpenCluster.decode_reply(&ack[..11]).unwrap(), None);
        let fail = [0, 2, 0x08, 0x48, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(OpenCluster.decode_reply(&fail).unwrap(), Some((12, true)));
        let mut failinfo = vec![0, 3, 0x08, 0x48, 0, 0, 0, 1, 0, 0, 0, 8];
        failinfo.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 0]);
        assert_eq!(
            OpenCluster.decode_reply(&failinfo).unwrap(),
            Some((20, false))
        );
    }

    #[test]
    fn minority_encoding_and_replies() {
        let mut out = Vec::new();
        Minority.encode_set(b"test", b"hello", false, &mut out);
        let mut want = vec![0x80, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1];
        want.extend_from_slice(b"testhello");
        assert_eq!(out, want);
        let ok = [0x81, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(Minority.decode_reply(&ok).unwrap(), Some((16, true)));
        assert_eq!(Minority.decode_reply(&ok[..15]).unwrap(), None);
        let mut fail = ok;
        fail[7] = 1;
        assert_eq!(Minority.decode_reply(&fail).unwrap(), Some((16, false)));
    }

    #[test]
    fn jsonkv_encoding_and_replies() {
        let mut out = Vec::new();
        Jsonkv.encode_get(b"k", &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(r#""operate":"get""#), "{text}");
        assert!(text.contains(r#""key":"k""#), "{text}");
        let mut reply = BytesMut::new();
        jsonkv::encode_frame(
            &mut reply,
            br#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":1}"#,
        );
        assert_eq!(
            Jsonkv.decode_reply(&reply).unwrap(),
            Some((reply.len(), true))
        );
        assert_eq!(
            Jsonkv.decode_reply(&reply[..reply.len() - 1]).unwrap(),
            None
        );
        let mut error = BytesMut::new();
        jsonkv::encode_frame(
            &mut error,
            br#"{"jsonkv":"1.0","result":{"value":"","code":"1002","message":"invalid key"},"id":1}"#,
        );
        assert_eq!(
            Jsonkv.decode_reply(&error).unwrap(),
            Some((error.len(), false))
        );
    }

    /// The direct encoding is the codec's, byte for byte; keys or values it cannot write
    /// plainly go through the codec.
    #[test]
    fn jsonkv_plain_requests_are_the_codecs() {
        let codec = |command: jsonkv::Command| {
            let mut out = Vec::new();
            Jsonkv::encode(command, &mut out);
            out
        };
        for key in [
            "k",
            "key:000123",
            "caf\u{e9}",
            "a\"b",
            "back\\slash",
            "tab\t",
        ] {
            let mut out = Vec::new();
            Jsonkv.encode_get(key.as_bytes(), &mut out);
            assert_eq!(out, codec(jsonkv::Command::get(key)), "get {key:?}");
            for value in ["", "v", "x\ny"] {
                let mut out = Vec::new();
                Jsonkv.encode_set(key.as_bytes(), value.as_bytes(), false, &mut out);
                assert_eq!(out, codec(jsonkv::Command::put(key, value)), "put {key:?}");
            }
        }
        let mut plain = Vec::new();
        assert!(Jsonkv::encode_plain("get", b"k", None, &mut plain));
        assert!(!Jsonkv::encode_plain("get", b"a\"b", None, &mut plain));
        assert!(!Jsonkv::encode_plain(
            "put",
            b"k",
            Some(&[0xff]),
            &mut plain
        ));
    }

    /// Replies judged by their code alone agree with the full decoder; other shapes go to it.
    #[test]
    fn jsonkv_replies_judged_by_their_code() {
        let frame = |payload: &str| {
            let mut out = BytesMut::new();
            jsonkv::encode_frame(&mut out, payload.as_bytes());
            out
        };
        let value = r#"{"jsonkv":"1.0","result":{"value":"a \"code\":\"1\" b","code":"0","message":"get operation success"},"id":1}"#;
        assert_eq!(Jsonkv::judge_plain(value.as_bytes()), Some(true));
        let fail = r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"internal error"},"id":1}"#;
        assert_eq!(Jsonkv::judge_plain(fail.as_bytes()), Some(false));
        let reordered =
            r#"{"result":{"code":"0","value":"v","message":"m"},"jsonkv":"1.0","id":1}"#;
        assert_eq!(Jsonkv::judge_plain(reordered.as_bytes()), None);
        for payload in [value, fail, reordered] {
            let reply = frame(payload);
            let full = jsonkv::JsonkvClientCodec::default().decode_response(&reply);
            let Ok(Decoded::Frame(jsonkv::ResponsePayload::Single(full), _)) = full else {
                panic!("{payload}");
            };
            let expected = full.is_success() || full.code == "1000";
            assert_eq!(
                Jsonkv.decode_reply(&reply).unwrap(),
                Some((reply.len(), expected)),
                "{payload}"
            );
        }
        let bad = frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"0""#);
        assert!(
            Jsonkv.decode_reply(&bad).is_err(),
            "not JSON: the decoder refuses it"
        );
    }
}
