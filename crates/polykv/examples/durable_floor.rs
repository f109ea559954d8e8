//! The floor under durable writes: an nmdb server that does only what a durable SET needs —
//! decode the frame with polykv's codec, append it to a preallocated file, group-commit with
//! fdatasync on a persister thread, answer — with one runtime thread. No index, no cache, no
//! checkpoints. `scripts/durable-floor.sh` loads it beside polykv and Redis with
//! `appendfsync always`: what it reaches is what this machine allows a server of this shape.
//!
//!   durable_floor ADDR FILE [thread|inline]
//!
//! `thread` (the default, polykv's shape): a persister thread syncs while the runtime thread goes
//! on serving. `inline` (Redis's `appendfsync always` shape): the runtime thread itself writes and
//! syncs, once per turn of its loop, covering every connection served in that turn.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};

use bytes::{Buf, BytesMut};
use polykv_protocols::nmdb::{NmdbServerCodec, Request, Response, ResponseBody};
use polykv_protocols::{Decoded, ServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FILE_BYTES: i64 = 1 << 30;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    appended: u64,
    wanted: u64,
}

struct Log {
    file: File,
    inline: bool,
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<u64>,
    offset: Mutex<u64>,
}

impl Log {
    fn append(&self, frame: &[u8]) -> u64 {
        let mut pending = self.pending.lock().expect("log lock");
        pending.buf.extend_from_slice(frame);
        pending.appended += 1;
        pending.appended
    }

    async fn wait_synced(&self, seq: u64) {
        if self.inline {
            // Let every other ready connection append first: one sync covers the whole turn.
            tokio::task::yield_now().await;
            if *self.synced.borrow() < seq {
                let (buf, target) = {
                    let mut pending = self.pending.lock().expect("log lock");
                    (std::mem::take(&mut pending.buf), pending.appended)
                };
                self.write_and_sync(&buf);
                self.synced.send_replace(target);
            }
            return;
        }
        let mut synced = self.synced.subscribe();
        if *synced.borrow() >= seq {
            return;
        }
        {
            let mut pending = self.pending.lock().expect("log lock");
            pending.wanted = pending.wanted.max(seq);
        }
        self.wake.notify_one();
        let _ = synced.wait_for(|s| *s >= seq).await;
    }

    fn write_and_sync(&self, buf: &[u8]) {
        let mut offset = self.offset.lock().expect("offset lock");
        if *offset + buf.len() as u64 > FILE_BYTES as u64 {
            *offset = 0;
        }
        self.file.write_all_at(buf, *offset).expect("log write");
        *offset += buf.len() as u64;
        // SAFETY: fdatasync on the file descriptor this log owns.
        assert_eq!(
            unsafe { libc::fdatasync(self.file.as_raw_fd()) },
            0,
            "fdatasync"
        );
    }

    /// One group commit after another, each covering every record appended before it began.
    fn persist(&self) {
        let mut spare = Vec::new();
        loop {
            let (buf, target) = {
                let mut pending = self.pending.lock().expect("log lock");
                while pending.wanted <= *self.synced.borrow() {
                    pending = self.wake.wait(pending).expect("log lock");
                }
                std::mem::swap(&mut pending.buf, &mut spare);
                (std::mem::take(&mut spare), pending.appended)
            };
            self.write_and_sync(&buf);
            spare = buf;
            spare.clear();
            self.synced.send_replace(target);
        }
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Log>) {
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
        while let Ok(Decoded::Frame(request, used)) = codec.decode_request(&input) {
            let answer = match request {
                Request::Set { id, .. } => {
                    last = log.append(&input[..used]);
                    Response {
                        id,
                        body: ResponseBody::Ok,
                    }
                }
                Request::Get { id, .. } => Response {
                    id,
                    body: ResponseBody::NotIn,
                },
                _ => Response {
                    id: 0,
                    body: ResponseBody::NotIn,
                },
            };
            answers.push(answer);
            input.advance(used);
        }
        if last > 0 {
            log.wait_synced(last).await;
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

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: durable_floor ADDR FILE [thread|inline]");
        std::process::exit(2);
    };
    let inline = args.get(3).is_some_and(|mode| mode == "inline");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: preallocating a file this function opened, as polykv's log does.
    unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES) };
    let log = Arc::new(Log {
        file,
        inline,
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        synced: watch::channel(0).0,
        offset: Mutex::new(0),
    });
    if !inline {
        let persister = log.clone();
        std::thread::Builder::new()
            .name("floor-persister".into())
            .spawn(move || persister.persist())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream, log.clone()));
        }
    })
}
