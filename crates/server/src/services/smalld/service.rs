//! smalld: one request per connection, guarded by a secret key (smalld.md).
//!
//! Its life cycle does not fit the pipelined session framework (check the key from the header
//! before reading on, one reply, half-close, drain), so it has a small connection handler of its
//! own, under the same connection limit and shutdown signal.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use polykv_engine::{Durability, Engine, KeyspaceId, Outcome, Value};
use polykv_protocols::smalld::{self, Request, Response, HEADER_LEN, MAX_REQUEST, MAX_VALUE};
use polykv_protocols::Decoded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{log, RequestLog, SmalldConfig};
use crate::metrics::ProtocolMetrics;
use crate::runtime::ServerError;
use crate::session::{serve_connections, ListenerContext};

pub(super) const OPS: &[&str] = &["set", "get", "digest", "run", "malformed"];

pub struct Smalld {
    pub(super) engine: Engine,
    pub(super) submitter: crate::submit::Submitter,
    pub(super) keyspace: KeyspaceId,
    pub(super) key: u32,
    pub(super) config: SmalldConfig,
    pub(super) metrics: ProtocolMetrics,
}

/// The secret key: configured, or generated once and kept in `dir/smalld.key` (mode 0600).
pub fn secret_key(config: &SmalldConfig, dir: &Path) -> Result<u32, ServerError> {
    if !config.secret_key.is_empty() {
        return config.secret_key.trim().parse().map_err(|_| {
            ServerError::Other("smalld.secret_key is not a number from 0 to 4294967295".into())
        });
    }
    let path = dir.join("smalld.key");
    let existing = std::fs::read_to_string(&path).ok();
    if let Some(text) = existing.as_deref().filter(|t| !t.trim().is_empty()) {
        return text.trim().parse().map_err(|_| {
            ServerError::Other(format!(
                "{} does not hold a number from 0 to 4294967295",
                path.display()
            ))
        });
    }
    let random = crate::secret::random_hex(4).map_err(|source| ServerError::Io {
        what: "cannot read random bytes".into(),
        source,
    })?;
    let key = u32::from_str_radix(&random, 16)
        .map_err(|e| ServerError::Other(format!("random key: {e}")))?;
    crate::secret::write_private(&path, &format!("{key}\n")).map_err(|source| ServerError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })?;
    tracing::warn!(secret_key = key, file = %path.display(), "smalld: generated a secret key; give it to the clients");
    Ok(key)
}

impl Smalld {
    fn log(&self, block: &str) {
        let result = match self.config.request_log {
            RequestLog::Stdout => std::io::stdout().lock().write_all(block.as_bytes()),
            RequestLog::Stderr => std::io::stderr().lock().write_all(block.as_bytes()),
            RequestLog::Off => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "smalld request log write failed");
        }
    }

    async fn execute(&self, request: &Request) -> Response {
        match request {
            Request::Set { name, value } => self.set(name, value).await,
            Request::Get { name } => match async {
                self.submitter.read_barrier().await?;
                self.engine.get(self.keyspace, name)
            }
            .await
            {
                Ok(Some(read)) => {
                    let value = read.entry.value.into_bytes();
                    if value.len() > MAX_VALUE {
                        Response::Failure
                    } else {
                        Response::Value(value)
                    }
                }
                Ok(None) => Response::Failure,
                Err(e) => {
                    tracing::warn!(error = %e, "smalld get failed");
                    Response::Failure
                }
            },
            Request::Digest { value } => Response::Value(smalld::digest(value)),
            Request::Run { program } => self.run(program).await,
            Request::Invalid { .. } => Response::Failure,
        }
    }

    async fn set(&self, name: &Bytes, value: &Bytes) -> Response {
        if self.config.max_names > 0 {
            let exists = matches!(self.engine.get(self.keyspace, name), Ok(Some(_)));
            let limit = self.config.max_names as usize;
            let count = self
                .engine
                .scan(
                    self.keyspace,
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Unbounded,
                    limit,
                )
                .map_or(limit, |v| v.len());
            if !exists && count >= limit {
                return Response::Failure;
            }
        }
        let command =
            polykv_engine::Command::put(self.keyspace, name.clone(), Value::Bytes(value.clone()));
        let written = match self.submitter.submit(command, Durability::Sync).await {
            Ok(submitted) => submitted.durable().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(Outcome::Written { .. }) => Response::Ok,
            Ok(_) => Response::Failure,
            Err(e) => {
                tracing::warn!(error = %e, "smalld set failed");
                Response::Failure
            }
        }
    }

    /// The three allowed programs, run without a shell, with a time limit and a 100-byte cap.
    async fn run(&self, program: &[u8]) -> Response {
        if !self.config.run_enabled {
            return Response::Failure;
        }
        let limit = Duration::from_millis(self.config.run_timeout_ms.max(1));
        let output = match program {
            b"hosts" => read_file_prefix("/etc/hosts").await,
            b"service" => read_file_prefix("/etc/services").await,
            b"inet" => run_inet(limit).await,
            _ => None,
        };
        output.map_or(Response::Failure, |bytes| Response::Value(bytes.into()))
    }
}

async fn read_file_prefix(path: &str) -> Option<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let mut out = Vec::with_capacity(MAX_VALUE);
    let mut chunk = [0u8; MAX_VALUE];
    while out.len() < MAX_VALUE {
        let n = file.read(&mut chunk[..MAX_VALUE - out.len()]).await.ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Some(out)
}

/// `/sbin/ifconfig -a`, or `ip address` from the first of /sbin, /usr/sbin, /bin, /usr/bin.
async fn run_inet(limit: Duration) -> Option<Vec<u8>> {
    let (program, args): (String, &[&str]) = if Path::new("/sbin/ifconfig").exists() {
        ("/sbin/ifconfig".into(), &["-a"])
    } else {
        let ip = ["/sbin/ip", "/usr/sbin/ip", "/bin/ip", "/usr/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        (ip.into(), &["address"])
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let mut out = Vec::with_capacity(MAX_VALUE);
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; MAX_VALUE];
    while out.len() < MAX_VALUE {
        match tokio::time::timeout_at(deadline, stdout.read(&mut chunk[..MAX_VALUE - out.len()]))
            .await
        {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    // Enough read (or time is up): stop the program and reap it.
    let _ = child.start_kill();
    let _ = child.wait().await;
    Some(out)
}

/// Reads until `buf` holds `want` bytes, EOF, or the deadline. Returns false on EOF or timeout.
async fn read_to(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    deadline: Instant,
) -> bool {
    while buf.len() < want {
        let read = tokio::time::timeout_at(deadline.into(), stream.read_buf(buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

async fn handle(service: Arc<Smalld>, mut stream: TcpStream) {
    service.metrics.connection_opened();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(service.config.request_timeout_secs.max(1));
    let mut buf = BytesMut::with_capacity(MAX_REQUEST);
    // S1: the header must arrive in time.
    if !read_to(&mut stream, &mut buf, HEADER_LEN, deadline).await {
        tracing::debug!("smalld: connection closed before a whole header");
        service.metrics.connection_closed();
        return;
    }
    let Some(header) = smalld::decode_header(&buf) else {
        return;
    };
    // S2: a wrong key is logged and answered with silence.
    if !crate::secret::constant_time_eq(&header.key.to_be_bytes(), &service.key.to_be_bytes()) {
        service.log(&log::log_wrong_key(header.key));
        service.metrics.rejected_frames.increment(1);
        service.metrics.connection_closed();
        return;
    }
    // Read the body; the codec says when the request is complete (never more than 126 bytes).
    let request = loop {
        match smalld::decode_request(&buf) {
            Decoded::Frame(request, _) => break Some(request),
            Decoded::Incomplete if buf.len() >= MAX_REQUEST => break None,
            Decoded::Incomplete => {
                let want = buf.len() + 1;
                if !read_to(&mut stream, &mut buf, want, deadline).await {
                    break None;
                }
            }
        }
    };
    let Some(request) = request else {
        // S4: the header was valid but the request never completed.
        let detail = log::escape(buf.get(HEADER_LEN..).unwrap_or_default());
        service.log(&log::log_block(header.key, header.kind, &detail, false));
        service.metrics.connection_closed();
        return;
    };
    let reply = service.execute(&request).await;
    let success = reply != Response::Failure;
    service.log(&log::log_block(
        header.key,
        header.kind,
        &log::detail(&request),
        success,
    ));
    let op = match &request {
        Request::Set { .. } => "set",
        Request::Get { .. } => "get",
        Request::Digest { .. } => "digest",
        Request::Run { .. } => "run",
        Request::Invalid { .. } => "malformed",
    };
    service.metrics.record(op, !success, started.elapsed());
    let mut out = BytesMut::new();
    smalld::encode_reply(&reply, &mut out);
    if stream.write_all(&out).await.is_ok() {
        // Half-close, then drain what the client still sends, so that a reset does not
        // destroy the reply.
        let _ = stream.shutdown().await;
        let drain_until = Instant::now() + Duration::from_millis(service.config.drain_ms);
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match tokio::time::timeout_at(drain_until.into(), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
    service.metrics.connection_closed();
}

pub(super) async fn serve(listener: TcpListener, service: Arc<Smalld>, context: ListenerContext) {
    let accepting = context.handover.accepting();
    serve_connections(
        listener,
        &service.metrics,
        context,
        accepting,
        Vec::new(),
        futures_util::stream::empty(),
        |stream, _shutdown| handle(service.clone(), stream),
    )
    .await;
}
