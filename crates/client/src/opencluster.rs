//! An OpenCluster client: one TCP connection to one node (spec `opencluster.md`).
//!
//! The server may push commands (serverlist, hashmasks, hashmask, goodbye) at any point between
//! whole messages, even between a command and its reply. Every push that arrives while the
//! client waits for a reply is applied to the client's topology view and acked at once (§5.1).
//!
//! Keys are hashed with standard FNV-1a-32 (§10): the key hash of the name, and the map hash of
//! the map name (0 outside a map).
//!
//! Typed methods map the replies they do not expect to [`ClientError::Server`] with a stable
//! text: `"fail"`, `"failinfo CODE: TEXT"`, `"tryelsewhere HOST:PORT"`, `"unknown ID"`. A caller
//! that routes (acts on tryelsewhere) uses [`OpenClusterClient::call`], which returns the reply.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polykv_protocols::opencluster::{
    cmd, encode_message, rep, OpenClusterClientCodec, Push, Request, RequestBody, Response,
};
pub use polykv_protocols::opencluster::{
    failinfo, fnv1a32, ItemId, ResponseBody, Value, ValueType, DEFAULT_PORT,
};

use crate::{ClientError, FramedConnection, Result};

/// A loadlevels (210) reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLevels {
    /// Buckets this node is primary for.
    pub primary: i32,
    /// Buckets this node backs up.
    pub backup: i32,
    /// Whether a bucket is being moved to or from the node.
    pub transferring: bool,
}

pub struct OpenClusterClient {
    conn: FramedConnection<OpenClusterClientCodec>,
    next_user_id: u32,
    /// The bucket mask of the last hashmasks/hashmask push.
    mask: Option<u32>,
    /// Bucket → this node's level for it (0 primary, ≥ 1 backup), from the pushes.
    levels: BTreeMap<u32, i32>,
    /// The other nodes, from the last serverlist push.
    servers: Vec<Bytes>,
    /// The server pushed goodbye (it is shutting down and will close).
    server_goodbye: bool,
}

/// The error for a reply a typed method does not expect.
fn unexpected(body: ResponseBody) -> ClientError {
    match body {
        ResponseBody::Fail => ClientError::Server("fail".into()),
        ResponseBody::FailInfo { code, text } => ClientError::Server(format!(
            "failinfo {code}: {}",
            String::from_utf8_lossy(&text)
        )),
        ResponseBody::TryElsewhere { addr } => {
            ClientError::Server(format!("tryelsewhere {}", String::from_utf8_lossy(&addr)))
        }
        ResponseBody::Unknown { command } => ClientError::Server(format!("unknown {command}")),
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

impl OpenClusterClient {
    /// Connects to `addr` ("host:port") without saying hello (data commands work without it).
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self> {
        Self::connect_with(addr, OpenClusterClientCodec::default(), timeout).await
    }

    /// Connects with a codec of non-default limits.
    pub async fn connect_with(
        addr: &str,
        codec: OpenClusterClientCodec,
        timeout: Duration,
    ) -> Result<Self> {
        let conn = FramedConnection::connect(addr, codec, timeout).await?;
        Ok(OpenClusterClient {
            conn,
            next_user_id: 1,
            mask: None,
            levels: BTreeMap::new(),
            servers: Vec::new(),
            server_goodbye: false,
        })
    }

    /// hello (10): ack, then the serverlist and hashmasks pushes, which are applied and acked.
    pub async fn hello(&mut self) -> Result<()> {
        match self.call(RequestBody::Hello).await? {
            ResponseBody::Ack => {}
            other => return Err(unexpected(other)),
        }
        // Both pushes follow the ack immediately, before any other reply (§5.1).
        let (mut list, mut masks) = (false, false);
        while !(list && masks) {
            match self.conn.receive().await? {
                Response::Push { user_id, push } => {
                    list |= matches!(push, Push::ServerList { .. });
                    masks |= matches!(push, Push::HashMasks { .. });
                    self.handle_push(user_id, push).await?;
                }
                Response::Reply { repcmd, .. } => {
                    return Err(ClientError::Protocol(format!(
                        "reply to {repcmd} before hello's pushes"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Sends one command and returns its reply, applying and acking pushes meanwhile.
    pub async fn call(&mut self, body: RequestBody) -> Result<ResponseBody> {
        let user_id = self.next_user_id;
        self.next_user_id = self.next_user_id.wrapping_add(1);
        let command = body.command_id();
        self.conn.queue(&Request { user_id, body });
        self.conn.flush().await?;
        loop {
            match self.conn.receive().await? {
                Response::Push { user_id, push } => self.handle_push(user_id, push).await?,
                Response::Reply {
                    repcmd,
                    user_id: reply_user,
                    body,
                } => {
                    if repcmd != command || reply_user != user_id {
                        return Err(ClientError::Protocol(format!(
                            "reply to command {repcmd} (user id {reply_user}) while waiting for \
                             {command} (user id {user_id})"
                        )));
                    }
                    return Ok(body);
                }
            }
        }
    }

    /// Applies a push to the topology view and answers it: ack for the known ones, unknown (9)
    /// with the id for any other command.
    async fn handle_push(&mut self, user_id: u32, push: Push) -> Result<()> {
        let id = push.command_id();
        match push {
            Push::ServerList { servers } => self.servers = servers,
            Push::HashMasks { mask, rows } => {
                self.mask = Some(mask);
                self.levels = rows.iter().map(|row| (row.bucket, row.level)).collect();
            }
            Push::HashMask {
                mask,
                bucket,
                level,
            } => {
                self.mask = Some(mask);
                if level < 0 {
                    self.levels.remove(&bucket);
                } else {
                    self.levels.insert(bucket, level);
                }
            }
            Push::Goodbye => self.server_goodbye = true,
            Push::Other { command } => {
                let mut out = BytesMut::new();
                encode_message(
                    rep::UNKNOWN,
                    command,
                    user_id,
                    &command.to_be_bytes(),
                    &mut out,
                );
                self.conn.queue_raw(&out);
                return self.conn.flush().await;
            }
        }
        self.conn.queue(&Request::ack(id, user_id));
        self.conn.flush().await
    }

    /// Applies and acks every push that arrives within `wait`; returns how many. A reply
    /// arriving here (no command is outstanding) is a protocol error.
    pub async fn process_pushes(&mut self, wait: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut count = 0;
        loop {
            let received = tokio::time::timeout_at(deadline, self.conn.receive()).await;
            match received {
                Err(_) => return Ok(count),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Response::Push { user_id, push })) => {
                    self.handle_push(user_id, push).await?;
                    count += 1;
                }
                Ok(Ok(Response::Reply { repcmd, .. })) => {
                    return Err(ClientError::Protocol(format!(
                        "unsolicited reply to {repcmd}"
                    )))
                }
            }
        }
    }

    async fn expect_ack(&mut self, body: RequestBody) -> Result<()> {
        match self.call(body).await? {
            ResponseBody::Ack => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// ack → true, fail → false.
    async fn ack_or_fail(&mut self, body: RequestBody) -> Result<bool> {
        match self.call(body).await? {
            ResponseBody::Ack => Ok(true),
            ResponseBody::Fail => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// set_int / set_long / set_string on `item`, by the value's type. `expires`: seconds,
    /// 0 = never; `full_wait`: ack only once durable.
    pub async fn set(
        &mut self,
        item: ItemId,
        name: &[u8],
        value: Value,
        expires: i32,
        full_wait: bool,
    ) -> Result<()> {
        self.expect_ack(RequestBody::Set {
            item,
            expires,
            full_wait,
            name: Bytes::copy_from_slice(name),
            value,
        })
        .await
    }

    /// set_int of `name` (outside any map).
    pub async fn set_int(
        &mut self,
        name: &[u8],
        value: i32,
        expires: i32,
        full_wait: bool,
    ) -> Result<()> {
        let item = ItemId::named(None, name);
        self.set(item, name, Value::Int(value), expires, full_wait)
            .await
    }

    /// set_long of `name` (outside any map).
    pub async fn set_long(
        &mut self,
        name: &[u8],
        value: i64,
        expires: i32,
        full_wait: bool,
    ) -> Result<()> {
        let item = ItemId::named(None, name);
        self.set(item, name, Value::Long(value), expires, full_wait)
            .await
    }

    /// set_string of `name` (outside any map).
    pub async fn set_string(
        &mut self,
        name: &[u8],
        value: &[u8],
        expires: i32,
        full_wait: bool,
    ) -> Result<()> {
        let item = ItemId::named(None, name);
        let value = Value::String(Bytes::copy_from_slice(value));
        self.set(item, name, value, expires, full_wait).await
    }

    /// get_int / get_long / get_string of `item`: `None` when missing or expired (fail).
    /// An item of another type is `Err(Server("failinfo 1: …"))`.
    pub async fn get(&mut self, item: ItemId, kind: ValueType) -> Result<Option<Value>> {
        match self.call(RequestBody::Get { item, kind }).await? {
            ResponseBody::Data {
                item: echoed,
                value,
            } if echoed == item && value.value_type() == kind => Ok(Some(value)),
            ResponseBody::Fail => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get_int(&mut self, name: &[u8]) -> Result<Option<i32>> {
        match self.get(ItemId::named(None, name), ValueType::Int).await? {
            Some(Value::Int(v)) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    pub async fn get_long(&mut self, name: &[u8]) -> Result<Option<i64>> {
        match self.get(ItemId::named(None, name), ValueType::Long).await? {
            Some(Value::Long(v)) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    pub async fn get_string(&mut self, name: &[u8]) -> Result<Option<Bytes>> {
        match self
            .get(ItemId::named(None, name), ValueType::String)
            .await?
        {
            Some(Value::String(v)) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// get_type of `item`: `None` when missing or expired.
    pub async fn get_type_of(&mut self, item: ItemId) -> Result<Option<ValueType>> {
        match self.call(RequestBody::GetType { item }).await? {
            ResponseBody::DataType { item: echoed, kind } if echoed == item => Ok(Some(kind)),
            ResponseBody::Fail => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// get_type of `name` (outside any map).
    pub async fn get_type(&mut self, name: &[u8]) -> Result<Option<ValueType>> {
        self.get_type_of(ItemId::named(None, name)).await
    }

    /// lock (1000): true if acquired (or renewed), false if another connection holds it.
    /// `timeout` in seconds, 0 = until unlock or disconnect.
    pub async fn lock(&mut self, name: &[u8], timeout: i32) -> Result<bool> {
        self.ack_or_fail(RequestBody::Lock {
            timeout,
            name: Bytes::copy_from_slice(name),
        })
        .await
    }

    /// unlock (1010): true if this connection held the lock.
    pub async fn unlock(&mut self, name: &[u8]) -> Result<bool> {
        self.ack_or_fail(RequestBody::Unlock {
            name: Bytes::copy_from_slice(name),
        })
        .await
    }

    pub async fn ping(&mut self) -> Result<()> {
        self.expect_ack(RequestBody::Ping).await
    }

    /// capabilities (11): whether the server accepts `command`.
    pub async fn capabilities(&mut self, command: u16) -> Result<bool> {
        self.ack_or_fail(RequestBody::Capabilities { command })
            .await
    }

    /// loadlevel (200).
    pub async fn loadlevel(&mut self) -> Result<LoadLevels> {
        match self.call(RequestBody::LoadLevel).await? {
            ResponseBody::LoadLevels {
                primary,
                backup,
                transferring,
            } => Ok(LoadLevels {
                primary,
                backup,
                transferring,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// goodbye (20): waits for the ack, then closes the connection.
    pub async fn goodbye(mut self) -> Result<()> {
        self.expect_ack(RequestBody::Goodbye).await
    }

    /// The bucket mask, once a hashmasks or hashmask push arrived.
    pub fn mask(&self) -> Option<u32> {
        self.mask
    }

    /// Bucket → this node's level (0 primary, ≥ 1 backup), from the pushes.
    pub fn bucket_levels(&self) -> &BTreeMap<u32, i32> {
        &self.levels
    }

    /// Whether this node is the primary for `name`'s bucket; `None` before any hashmasks.
    pub fn is_primary_for(&self, name: &[u8]) -> Option<bool> {
        let mask = self.mask?;
        let bucket = ItemId::named(None, name).bucket(mask);
        Some(self.levels.get(&bucket) == Some(&0))
    }

    /// The other nodes' `"host:port"`, from the last serverlist push.
    pub fn servers(&self) -> &[Bytes] {
        &self.servers
    }

    /// Whether the server pushed goodbye (it is shutting down).
    pub fn server_said_goodbye(&self) -> bool {
        self.server_goodbye
    }

    /// The connection, for tests that send raw bytes.
    pub fn connection(&mut self) -> &mut FramedConnection<OpenClusterClientCodec> {
        &mut self.conn
    }
}

/// Whether `command` is one a polykv server accepts (what capabilities answers).
pub fn server_accepts(command: u16) -> bool {
    cmd::is_accepted(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    enum Step {
        /// Read exactly these bytes from the client.
        Expect(Vec<u8>),
        /// Write these bytes.
        Send(Vec<u8>),
        /// Write these bytes one at a time (split across reads).
        Trickle(Vec<u8>),
        /// Close the connection.
        Close,
        /// Expect EOF from the client.
        ExpectEof,
        /// Keep the connection open for a while.
        Sleep(Duration),
    }

    fn expect(text: &str) -> Step {
        Step::Expect(hex(text))
    }

    fn send(text: &str) -> Step {
        Step::Send(hex(text))
    }

    /// A fake server on 127.0.0.1:0 playing `script`; the handle fails if the client sent
    /// anything else.
    async fn fake_server(script: Vec<Step>) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for step in script {
                match step {
                    Step::Expect(bytes) => {
                        let mut got = vec![0u8; bytes.len()];
                        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
                            .await
                            .expect("client too slow")
                            .expect("read");
                        assert_eq!(got, bytes, "client sent {got:02x?}, expected {bytes:02x?}");
                    }
                    Step::Send(bytes) => stream.write_all(&bytes).await.unwrap(),
                    Step::Trickle(bytes) => {
                        for byte in bytes {
                            stream.write_all(&[byte]).await.unwrap();
                            stream.flush().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Step::Close => return,
                    Step::Sleep(wait) => tokio::time::sleep(wait).await,
                    Step::ExpectEof => {
                        let mut rest = Vec::new();
                        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                            .await
                            .expect("client did not close")
                            .unwrap();
                        assert!(rest.is_empty(), "client sent more: {rest:02x?}");
                    }
                }
            }
        });
        (addr, handle)
    }

    async fn client(addr: &str) -> OpenClusterClient {
        OpenClusterClient::connect(addr, Duration::from_secs(5))
            .await
            .unwrap()
    }

    fn hello_steps() -> Vec<Step> {
        let mut rows = String::new();
        for bucket in 0..16 {
            rows.push_str(&format!("{bucket:08x} 00000000 "));
        }
        vec![
            expect("000a 0000 00000001 00000000"),
            Step::Send(
                [
                    hex("0001 000a 00000001 00000000"),
                    hex("0064 0000 00000000 00000004 | 00000000"),
                    hex(&format!(
                        "006e 0000 00000001 00000088 | 0000000f 00000010 {rows}"
                    )),
                ]
                .concat(),
            ),
            // The client acks both pushes, with their user ids.
            expect("0001 0064 00000000 00000000"),
            expect("0001 006e 00000001 00000000"),
        ]
    }

    /// The whole §15.2 session, byte for byte.
    #[tokio::test]
    async fn spec_session_15_2() {
        let mut script = hello_steps();
        script.extend([
            expect("07d0 0000 00000002 00000021 | 00000000 7e47596b 00000000 00000000 00000009 736f6d657468696e67 0000002d"),
            send("0001 07d0 00000002 00000000"),
            expect("0834 0000 00000003 00000008 | 00000000 7e47596b"),
            send("0839 0834 00000003 0000000c | 00000000 7e47596b 0000002d"),
            expect("07e4 0000 00000004 0000002c | 00000000 29f6a27d 00000000 00000000 0000000a 636c69656e746e616d65 0000000a 42696c6c204772616479"),
            send("0001 07e4 00000004 00000000"),
            expect("0848 0000 00000005 00000008 | 00000000 29f6a27d"),
            send("084d 0848 00000005 00000016 | 00000000 29f6a27d 0000000a 42696c6c204772616479"),
            expect("0834 0000 00000006 00000008 | 00000000 29f6a27d"),
            send("0003 0834 00000006 00000012 | 00000001 0000000a 77726f6e672074797065"),
            expect("0834 0000 00000007 00000008 | 00000000 e40c292c"),
            send("0002 0834 00000007 00000000"),
            expect("04d2 0000 00000008 00000000"),
            send("0009 04d2 00000008 00000002 | 04d2"),
            expect("000b 0000 00000009 00000002 | 0898"),
            send("0001 000b 00000009 00000000"),
            expect("00c8 0000 0000000a 00000000"),
            send("00d2 00c8 0000000a 0000000c | 00000010 00000000 00000000"),
            expect("0898 0000 0000000b 00000008 | 00000000 7e47596b"),
            send("089d 0898 0000000b 0000000c | 00000000 7e47596b 00000001"),
            expect("03e8 0000 0000000c 0000000b | 0000001e 00000003 6a6f62"),
            send("0001 03e8 0000000c 00000000"),
            expect("0014 0000 0000000d 00000000"),
            send("0001 0014 0000000d 00000000"),
            Step::ExpectEof,
        ]);
        let (addr, server) = fake_server(script).await;
        let mut c = client(&addr).await;
        c.hello().await.unwrap();
        assert_eq!(c.mask(), Some(0x0f));
        assert_eq!(
            c.bucket_levels(),
            &(0..16).map(|b| (b, 0)).collect::<BTreeMap<u32, i32>>()
        );
        assert!(c.servers().is_empty());
        assert_eq!(c.is_primary_for(b"something"), Some(true));

        c.set_int(b"something", 45, 0, false).await.unwrap();
        assert_eq!(c.get_int(b"something").await.unwrap(), Some(45));
        c.set_string(b"clientname", b"Bill Grady", 0, false)
            .await
            .unwrap();
        assert_eq!(
            c.get_string(b"clientname").await.unwrap(),
            Some(Bytes::from_static(b"Bill Grady"))
        );
        match c.get_int(b"clientname").await {
            Err(ClientError::Server(text)) => assert_eq!(text, "failinfo 1: wrong type"),
            other => panic!("expected failinfo 1, got {other:?}"),
        }
        assert_eq!(c.get_int(b"a").await.unwrap(), None);
        assert_eq!(
            c.call(RequestBody::Unknown { command: 1234 })
                .await
                .unwrap(),
            ResponseBody::Unknown { command: 1234 }
        );
        assert!(c.capabilities(cmd::GET_TYPE).await.unwrap());
        assert_eq!(
            c.loadlevel().await.unwrap(),
            LoadLevels {
                primary: 16,
                backup: 0,
                transferring: false
            }
        );
        assert_eq!(
            c.get_type(b"something").await.unwrap(),
            Some(ValueType::Int)
        );
        assert!(c.lock(b"job", 30).await.unwrap());
        c.goodbye().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn pushes_between_a_command_and_its_reply_are_applied_and_acked() {
        let mut script = hello_steps();
        script.extend([
            expect("0834 0000 00000002 00000008 | 00000000 7e47596b"),
            Step::Send(
                [
                    // Bucket 0xb (of "something") is no longer held here.
                    hex("0078 0000 00000002 0000000c | 0000000f 0000000b ffffffff"),
                    // Bucket 3 becomes a backup.
                    hex("0078 0000 00000003 0000000c | 0000000f 00000003 00000001"),
                    hex("0064 0000 00000004 00000016 | 00000001 0000000e 31302e302e302e323a3133363030"),
                    // An unmodelled command: answered with unknown and its id.
                    hex("001e 0000 00000005 00000000"),
                    hex("0004 0834 00000002 00000012 | 0000000e 31302e302e302e323a3133363030"),
                ]
                .concat(),
            ),
            expect("0001 0078 00000002 00000000"),
            expect("0001 0078 00000003 00000000"),
            expect("0001 0064 00000004 00000000"),
            expect("0009 001e 00000005 00000002 | 001e"),
            expect("001e 0000 00000003 00000000"),
            send("0001 001e 00000003 00000000"),
        ]);
        let (addr, server) = fake_server(script).await;
        let mut c = client(&addr).await;
        c.hello().await.unwrap();
        match c.get_int(b"something").await {
            Err(ClientError::Server(text)) => assert_eq!(text, "tryelsewhere 10.0.0.2:13600"),
            other => panic!("expected tryelsewhere, got {other:?}"),
        }
        assert_eq!(c.is_primary_for(b"something"), Some(false));
        assert_eq!(c.bucket_levels().get(&0xb), None);
        assert_eq!(c.bucket_levels().get(&3), Some(&1));
        assert_eq!(c.bucket_levels().len(), 15);
        assert_eq!(c.servers(), &[Bytes::from_static(b"10.0.0.2:13600")]);
        c.ping().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn typed_commands_encode_expiry_full_wait_and_maps() {
        let script = vec![
            // set_long "testkey" = -2, expires 60, full wait.
            expect("07da 0000 00000001 00000023 | 00000000 b105e50c 0000003c 00000001 00000007 746573746b6579 fffffffffffffffe"),
            send("0001 07da 00000001 00000000"),
            // get_long, reply split across many reads.
            expect("083e 0000 00000002 00000008 | 00000000 b105e50c"),
            Step::Trickle(hex("0843 083e 00000002 00000010 | 00000000 b105e50c fffffffffffffffe")),
            // set_string in map "foobar".
            expect("07e4 0000 00000003 00000024 | bf9cf968 7e47596b 00000002 00000000 00000009 736f6d657468696e67 00000003 78797a"),
            send("0003 07e4 00000003 00000013 | 00000005 0000000b 756e617661696c61626c65"),
            // get_string in the map: missing.
            expect("0848 0000 00000004 00000008 | bf9cf968 7e47596b"),
            send("0002 0848 00000004 00000000"),
            expect("0898 0000 00000005 00000008 | 00000000 e40c292c"),
            send("0002 0898 00000005 00000000"),
            expect("03e8 0000 00000006 0000000b | 00000000 00000003 6a6f62"),
            send("0002 03e8 00000006 00000000"),
            expect("03f2 0000 00000007 00000007 | 00000003 6a6f62"),
            send("0001 03f2 00000007 00000000"),
            expect("03f2 0000 00000008 00000007 | 00000003 6a6f62"),
            send("0002 03f2 00000008 00000000"),
            expect("000b 0000 00000009 00000002 | 0839"),
            send("0002 000b 00000009 00000000"),
            expect("001e 0000 0000000a 00000000"),
            send("0001 001e 0000000a 00000000"),
        ];
        let (addr, server) = fake_server(script).await;
        let mut c = client(&addr).await;
        c.set_long(b"testkey", -2, 60, true).await.unwrap();
        assert_eq!(c.get_long(b"testkey").await.unwrap(), Some(-2));
        let item = ItemId::named(Some(b"foobar"), b"something");
        match c
            .set(
                item,
                b"something",
                Value::String(Bytes::from_static(b"xyz")),
                2,
                false,
            )
            .await
        {
            Err(ClientError::Server(text)) => assert_eq!(text, "failinfo 5: unavailable"),
            other => panic!("expected failinfo 5, got {other:?}"),
        }
        assert_eq!(c.get(item, ValueType::String).await.unwrap(), None);
        assert_eq!(c.get_type(b"a").await.unwrap(), None);
        assert!(!c.lock(b"job", 0).await.unwrap());
        assert!(c.unlock(b"job").await.unwrap());
        assert!(!c.unlock(b"job").await.unwrap());
        assert!(!c.capabilities(rep::DATA_INT).await.unwrap());
        c.ping().await.unwrap();
        assert_eq!(c.mask(), None);
        assert_eq!(c.is_primary_for(b"x"), None);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn server_goodbye_is_acked_and_the_close_reported() {
        let script = vec![
            expect("001e 0000 00000001 00000000"),
            send("0014 0000 00000000 00000000"),
            expect("0001 0014 00000000 00000000"),
            Step::Close,
        ];
        let (addr, server) = fake_server(script).await;
        let mut c = client(&addr).await;
        assert!(matches!(c.ping().await, Err(ClientError::Closed)));
        assert!(c.server_said_goodbye());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn process_pushes_applies_idle_pushes() {
        let script = vec![
            send("0078 0000 00000007 0000000c | 0000000f 00000002 00000000"),
            expect("0001 0078 00000007 00000000"),
            send("0064 0000 00000008 00000004 | 00000000"),
            expect("0001 0064 00000008 00000000"),
            // A reply nobody asked for.
            send("0001 001e 00000009 00000000"),
        ];
        let (addr, server) = fake_server(script).await;
        let mut c = client(&addr).await;
        // Both pushes arrive (the second only after the first ack); then the stray reply.
        let result = c.process_pushes(Duration::from_secs(2)).await;
        assert!(
            matches!(result, Err(ClientError::Protocol(_))),
            "{result:?}"
        );
        assert_eq!(c.mask(), Some(0x0f));
        assert_eq!(c.bucket_levels().get(&2), Some(&0));
        server.await.unwrap();

        let (addr, server) = fake_server(vec![
            send("0078 0000 00000000 0000000c | 0000000f 00000002 00000001"),
            expect("0001 0078 00000000 00000000"),
            Step::Sleep(Duration::from_millis(600)),
        ])
        .await;
        let mut c = client(&addr).await;
        assert_eq!(
            c.process_pushes(Duration::from_millis(300)).await.unwrap(),
            1
        );
        assert_eq!(c.bucket_levels().get(&2), Some(&1));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn mismatched_or_malformed_replies_are_protocol_errors() {
        const PING: &str = "001e 0000 00000001 00000000";
        const GET_INT: &str = "0834 0000 00000001 00000008 | 00000000 7e47596b";
        for (what, request, reply) in [
            ("wrong repcmd", PING, "0001 000a 00000001 00000000"),
            ("wrong user id", PING, "0001 001e 00000002 00000000"),
            (
                "a data reply for another item",
                GET_INT,
                "0839 0834 00000001 0000000c | 00000000 7e47596c 0000002d",
            ),
            (
                "a truncated data_int payload",
                GET_INT,
                "0839 0834 00000001 00000008 | 00000000 7e47596b",
            ),
        ] {
            let (addr, server) = fake_server(vec![expect(request), send(reply)]).await;
            let mut c = client(&addr).await;
            let result = if request == PING {
                c.ping().await.map(|_| ())
            } else {
                c.get_int(b"something").await.map(|_| ())
            };
            assert!(
                matches!(result, Err(ClientError::Protocol(_))),
                "{what}: {result:?}"
            );
            server.await.unwrap();
        }
        // hello answered by fail.
        let (addr, server) = fake_server(vec![
            expect("000a 0000 00000001 00000000"),
            send("0002 000a 00000001 00000000"),
        ])
        .await;
        let mut c = client(&addr).await;
        match c.hello().await {
            Err(ClientError::Server(text)) => assert_eq!(text, "fail"),
            other => panic!("expected fail, got {other:?}"),
        }
        server.await.unwrap();
    }

    #[test]
    fn server_accepts_the_spec_commands() {
        assert!(server_accepts(cmd::GET_TYPE));
        assert!(!server_accepts(rep::DATA_TYPE));
    }
}
