//! The client side the floors share (`durable_floor`, `cluster_floor`): nmdb frames read from a
//! connection, each SET appended to the floor's log, and the turn's answers written once the
//! floor's log holds the last of them durably. Other requests are answered NotIn; a frame the
//! codec refuses ends the connection (a floor answers only what it understands).

use bytes::{Buf, BytesMut};
use polykv_protocols::nmdb::{NmdbServerCodec, Request, Response, ResponseBody};
use polykv_protocols::{Decoded, ServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a floor does with its clients' SETs.
pub trait FloorLog {
    /// Appends one SET's frame and returns the position that covers it.
    fn append(&mut self, frame: &[u8]) -> u64;

    /// Waits until everything up to `last` is durable; false ends the connection.
    #[allow(async_fn_in_trait)]
    async fn wait_durable(&mut self, last: u64) -> bool;
}

/// Serves one client until it closes or errs.
pub async fn serve_sets(mut stream: TcpStream, mut log: impl FloorLog) {
    let codec = NmdbServerCodec::tcp();
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut answers = Vec::new();
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut last = 0;
        let decoded = each_frame(&codec, &mut input, |request, frame| {
            let body = match request {
                Request::Set { .. } => {
                    last = log.append(frame);
                    ResponseBody::Ok
                }
                _ => ResponseBody::NotIn,
            };
            answers.push(Response {
                id: request.id(),
                body,
            });
        });
        if !decoded {
            return;
        }
        if last > 0 && !log.wait_durable(last).await {
            return;
        }
        for answer in answers.drain(..) {
            codec.encode_response(&answer, &mut output);
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
        output.clear();
    }
}

/// Hands every complete frame at the front of `input` to `each` with its bytes, and takes it
/// off. False when the codec refused a frame (the floor ends the connection).
pub fn each_frame(
    codec: &NmdbServerCodec,
    input: &mut BytesMut,
    mut each: impl FnMut(&Request, &[u8]),
) -> bool {
    loop {
        match codec.decode_request(input) {
            Ok(Decoded::Frame(request, used)) => {
                each(&request, &input[..used]);
                input.advance(used);
            }
            Ok(Decoded::Incomplete) => return true,
            Err(_) => return false,
        }
    }
}
