//! JSON-RPC 2.0 over HTTP/1.1 (§6), on axum/hyper.
//!
//! HTTP parsing is hyper's (unparseable requests get its 400 and a close). Around it: the
//! global connection limit, an idle timeout, and a body limit checked before reading (from
//! `Content-Length`) and while reading (chunked bodies), answered 413 and closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use polykv_protocols::jsonkv::{
    decode_rpc_request, encode_rpc_response, Id, Limits, Operate, RpcAction, RpcCall, RpcError,
    RpcPayload, RpcResponse, RpcResponsePayload,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::kv::{KvStore, Outcome};
use crate::metrics::ProtocolMetrics;
use crate::session::{accept_limited, ListenerContext};

/// Operation names for metrics: one per call of a body.
pub const OPS: &[&str] = &["put", "get", "delete", "invalid", "malformed"];

#[derive(Clone)]
struct RpcState {
    store: Arc<KvStore>,
    limits: Limits,
    metrics: Arc<ProtocolMetrics>,
}

/// Serves JSON-RPC until shutdown.
pub async fn serve(
    listener: TcpListener,
    store: Arc<KvStore>,
    limits: Limits,
    idle_timeout: Option<Duration>,
    metrics: Arc<ProtocolMetrics>,
    context: ListenerContext,
) {
    let state = RpcState {
        store,
        limits,
        metrics: metrics.clone(),
    };
    // Any path: the original served every path the same way.
    let app = Router::new().fallback(handle).with_state(state);
    let listener = LimitedListener {
        listener,
        connections: context.connections.clone(),
        metrics,
        idle_timeout,
    };
    let mut shutdown = context.shutdown.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "jsonkv json-rpc listener failed");
    }
}

/// A status with `Connection: close`: the request could not be read to its end.
fn close_with(status: StatusCode) -> Response {
    (status, [(header::CONNECTION, "close")]).into_response()
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads the body, never holding more than `max` bytes.
async fn read_body(request: Request, max: usize) -> Result<Vec<u8>, BodyError> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    // Grown as the data arrives: a client that announces a large body and sends nothing must
    // not hold the memory.
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(16 * 1024) as usize);
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn handle(State(state): State<RpcState>, request: Request) -> Response {
    if request.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response();
    }
    let body = match read_body(request, state.limits.max_frame).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return close_with(StatusCode::PAYLOAD_TOO_LARGE),
        Err(BodyError::Broken) => return close_with(StatusCode::BAD_REQUEST),
    };
    let (batch, calls) = match decode_rpc_request(&body, &state.limits) {
        RpcPayload::Single(call) => (false, vec![call]),
        RpcPayload::Batch(calls) => (true, calls),
    };
    let answers = execute(&state, calls).await;
    match RpcResponsePayload::for_answers(batch, answers) {
        // Only notifications: nothing to answer.
        None => StatusCode::NO_CONTENT.into_response(),
        Some(payload) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::from(encode_rpc_response(&payload)),
        )
            .into_response(),
    }
}

fn op_name(call: &RpcCall) -> &'static str {
    match &call.action {
        RpcAction::Execute(command) => command.operate().as_str(),
        RpcAction::Error(RpcError::ParseError) => "malformed",
        RpcAction::Refuse(_) | RpcAction::Error(_) => "invalid",
    }
}

/// Runs the calls in order (writes acknowledged together once durable) and returns the
/// answers of those that have an id.
async fn execute(state: &RpcState, calls: Vec<RpcCall>) -> Vec<RpcResponse> {
    let started = Instant::now();
    let mut budget = state.store.max_response;
    let mut steps = Vec::with_capacity(calls.len());
    for call in calls {
        let op = op_name(&call);
        let step = match call.action {
            RpcAction::Execute(command) => Ok(state.store.apply(command, &mut budget).await),
            RpcAction::Refuse(code) => Err(RpcResponse::refused(code, Id::null())),
            RpcAction::Error(error) => Err(RpcResponse::error(error, Id::null())),
        };
        steps.push((op, call.id, step));
    }
    let mut answers = Vec::new();
    for (op, id, step) in steps {
        let response = match step {
            Ok(step) => rpc_response(step.finish().await, Id::null()),
            Err(response) => response,
        };
        state
            .metrics
            .record(op, is_error(&response), started.elapsed());
        // A call without an id is a notification: executed, never answered.
        if let Some(id) = id {
            answers.push(RpcResponse { id, ..response });
        }
    }
    answers
}

fn rpc_response(outcome: Outcome, id: Id) -> RpcResponse {
    match outcome {
        Outcome::Success { op, value } => {
            RpcResponse::success(op, value.filter(|_| op == Operate::Get), id)
        }
        Outcome::Failure { code, message } => RpcResponse::refused_with(code, message, id),
    }
}

fn is_error(response: &RpcResponse) -> bool {
    use polykv_protocols::jsonkv::RpcOutcome;
    match &response.outcome {
        RpcOutcome::Result { code, .. } => !matches!(code, 0 | 1000),
        RpcOutcome::Error { .. } => true,
    }
}

/// Accepts connections under the global connection limit.
struct LimitedListener {
    listener: TcpListener,
    connections: Arc<Semaphore>,
    metrics: Arc<ProtocolMetrics>,
    idle_timeout: Option<Duration>,
}

impl axum::serve::Listener for LimitedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        let (stream, peer, permit) =
            accept_limited(&self.listener, &self.connections, &self.metrics).await;
        let _ = stream.set_nodelay(true);
        self.metrics.connection_opened();
        (
            GuardedStream::new(stream, permit, self.metrics.clone(), self.idle_timeout),
            peer,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that holds its place under the connection limit and fails its reads and
/// writes once no response has been written for the idle timeout: that closes keep-alive
/// connections left idle, requests sent too slowly, and clients that stop reading.
struct GuardedStream {
    stream: TcpStream,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    metrics: Arc<ProtocolMetrics>,
    _permit: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        metrics: Arc<ProtocolMetrics>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        GuardedStream {
            stream,
            idle: idle_timeout.map(|t| (t, Box::pin(tokio::time::sleep(t)))),
            metrics,
            _permit: permit,
        }
    }

    /// An error once the idle deadline has passed (registers the waker otherwise).
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        let Some((_, sleep)) = &mut self.idle else {
            return Ok(());
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "jsonkv json-rpc idle timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }

    fn wrote(&mut self) {
        if let Some((t, sleep)) = &mut self.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *t);
        }
    }

    /// A write that made progress restarts the idle timer; one that waits is bounded by it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.wrote();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
