//! The depth-1 floor of a tokio server: nmdb GETs answered with a fixed 100-byte value by one
//! task per connection on a current-thread runtime, one read and one write per turn, nothing
//! else. What polykv's session adds per request is the difference between the two.
//!
//!   cargo run --release -p polykv --example get_floor -- PORT

use bytes::{Bytes, BytesMut};
use polykv_protocols::nmdb::{NmdbServerCodec, Request, Response, ResponseBody};
use polykv_protocols::ServerCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(dead_code)] // the SET path and its log are the durable floors'
#[path = "floor/clients.rs"]
mod clients;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(26010);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let value = Bytes::from(vec![b'v'; 100]);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream, value.clone()));
        }
    })
}

async fn serve(mut stream: TcpStream, value: Bytes) {
    let codec = NmdbServerCodec::tcp();
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let decoded = clients::each_frame(&codec, &mut input, |request, _| {
            let body = match request {
                Request::Get { .. } => ResponseBody::CacheHit(value.clone()),
                _ => ResponseBody::Ok,
            };
            let answer = Response {
                id: request.id(),
                body,
            };
            codec.encode_response(&answer, &mut output);
        });
        if !decoded {
            return;
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
        output.clear();
    }
}
