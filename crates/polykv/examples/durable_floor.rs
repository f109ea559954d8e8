//! The floor under durable writes: an nmdb server that does only what a durable SET needs —
//! decode the frame with polykv's codec, append it to a preallocated file, group-commit with
//! fdatasync on a persister thread, answer — with one runtime thread. No index, no cache, no
//! checkpoints. `scripts/durable-floor.sh` loads it beside polykv and Redis with
//! `appendfsync always`: what it reaches is what this machine allows a server of this shape.
//!
//!   durable_floor ADDR FILE [thread|inline|uring|uring-fsync|buffered|uring-async]
//!
//! `thread` (the default, polykv's shape): a persister thread syncs while the runtime thread goes
//! on serving. `inline` (Redis's `appendfsync always` shape): the runtime thread itself writes and
//! syncs, once per turn of its loop, covering every connection served in that turn. `uring`: no
//! second thread and no blocked loop: each group is one `O_DIRECT` write with `RWF_DSYNC`
//! submitted through io_uring, and its completion arrives on the runtime thread's own event loop
//! (an eventfd beside the sockets), so no thread is woken per group. `uring-fsync`: the group is
//! written to the page cache on the runtime thread and its fdatasync submitted through io_uring
//! (the kernel runs it on one of its own workers), completed the same way. Two shapes make no
//! write durable, as floors of an Async write (one that survives a kill of the process):
//! `buffered` writes each turn's records to the page cache and answers (polykv's and Redis's
//! shape); `uring-async` writes them like `uring` but without `RWF_DSYNC`, and answers once the
//! device has them. The io_uring shapes keep one write in flight; `FLOOR_IN_FLIGHT=N` (up to 4)
//! lets N overlap, each group then starting at a block of its own.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;

#[path = "floor/clients.rs"]
mod clients;
#[path = "floor/uring.rs"]
mod uring;

const FILE_BYTES: i64 = 1 << 30;
/// The io_uring shape's file: smaller, as it is written with zeros first.
const URING_FILE_BYTES: u64 = 256 << 20;

/// Most io_uring writes in flight: `FLOOR_IN_FLIGHT` (1 to 4), default 1.
fn in_flight() -> usize {
    std::env::var("FLOOR_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .clamp(1, 4)
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    appended: u64,
    wanted: u64,
}

struct Log {
    file: File,
    inline: bool,
    /// Inline shape without the fdatasync: a page-cache write per turn (an Async write's floor).
    buffered: bool,
    uring: Option<Mutex<uring::Ring>>,
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
        if let Some(ring) = &self.uring {
            let mut synced = self.synced.subscribe();
            if *synced.borrow() >= seq {
                return;
            }
            // Let every other ready connection append first: one write covers the whole turn.
            tokio::task::yield_now().await;
            self.submit_next(ring);
            let _ = synced.wait_for(|s| *s >= seq).await;
            return;
        }
        if self.inline {
            // Let every other ready connection append first: one sync covers the whole turn.
            tokio::task::yield_now().await;
            if *self.synced.borrow() < seq {
                let (buf, target) = {
                    let mut pending = self.pending.lock().expect("log lock");
                    (std::mem::take(&mut pending.buf), pending.appended)
                };
                self.write_and_sync(&buf, !self.buffered);
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

    fn write_and_sync(&self, buf: &[u8], sync: bool) {
        let mut offset = self.offset.lock().expect("offset lock");
        if *offset + buf.len() as u64 > FILE_BYTES as u64 {
            *offset = 0;
        }
        self.file.write_all_at(buf, *offset).expect("log write");
        *offset += buf.len() as u64;
        if !sync {
            return;
        }
        // SAFETY: fdatasync on the file descriptor this log owns.
        assert_eq!(
            unsafe { libc::fdatasync(self.file.as_raw_fd()) },
            0,
            "fdatasync"
        );
    }

    /// Submits everything appended so far as one durable write, unless a write is in flight (its
    /// completion submits the next).
    fn submit_next(&self, ring: &Mutex<uring::Ring>) {
        let mut ring = ring.lock().expect("ring lock");
        if ring.busy() {
            return;
        }
        let (buf, target) = {
            let mut pending = self.pending.lock().expect("log lock");
            if pending.buf.is_empty() {
                return;
            }
            (std::mem::take(&mut pending.buf), pending.appended)
        };
        if ring.direct() {
            if let Err(e) = ring.write(&self.file, &buf, target) {
                uring::fatal("durable_floor", format_args!("durable write: {e}"));
            }
        } else {
            let mut offset = self.offset.lock().expect("offset lock");
            if *offset + buf.len() as u64 > FILE_BYTES as u64 {
                *offset = 0;
            }
            self.file.write_all_at(&buf, *offset).expect("log write");
            *offset += buf.len() as u64;
            if let Err(e) = ring.fsync(&self.file, target) {
                uring::fatal("durable_floor", format_args!("fdatasync: {e}"));
            }
        }
    }

    /// Runs on the runtime thread: reaps completed writes, publishes them, submits the next.
    async fn reap(self: Arc<Self>, eventfd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>) {
        let Some(ring) = &self.uring else { return };
        loop {
            let Ok(mut ready) = eventfd.readable().await else {
                return;
            };
            uring::drain_eventfd(eventfd.get_ref());
            ready.clear_ready();
            let done = ring.lock().expect("ring lock").reap();
            let done = done.unwrap_or_else(|e| {
                uring::fatal("durable_floor", format_args!("durable write failed: {e}"))
            });
            if let Some(target) = done {
                self.synced.send_replace(target);
                self.submit_next(ring);
            }
        }
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
            self.write_and_sync(&buf, true);
            spare = buf;
            spare.clear();
            self.synced.send_replace(target);
        }
    }
}

impl clients::FloorLog for Arc<Log> {
    fn append(&mut self, frame: &[u8]) -> u64 {
        Log::append(self, frame)
    }

    async fn wait_durable(&mut self, last: u64) -> bool {
        self.wait_synced(last).await;
        true
    }
}

/// How a group of appended records is made durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A persister thread writes and fdatasyncs while the runtime thread serves on.
    Thread,
    /// The runtime thread writes and fdatasyncs once per turn of its loop.
    Inline,
    /// One `O_DIRECT` + `RWF_DSYNC` write through io_uring, completed on the runtime thread.
    Uring,
    /// A page-cache write, then an fdatasync through io_uring (run by a kernel worker).
    UringFsync,
    /// Not durable, an Async write's floor: one page-cache write per turn of the loop.
    Buffered,
    /// Not durable, an Async write's floor: one `O_DIRECT` write (no `RWF_DSYNC`) through
    /// io_uring per group, answered once the device has it.
    UringAsync,
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: durable_floor ADDR FILE [thread|inline|uring|uring-fsync|buffered|uring-async]"
        );
        std::process::exit(2);
    };
    let shape = match args.get(3).map(String::as_str) {
        None | Some("thread") => Shape::Thread,
        Some("inline") => Shape::Inline,
        Some("uring") => Shape::Uring,
        Some("uring-fsync") => Shape::UringFsync,
        Some("buffered") => Shape::Buffered,
        Some("uring-async") => Shape::UringAsync,
        Some(other) => {
            eprintln!(
                "durable_floor: unknown shape {other:?} \
                 (thread, inline, uring, uring-fsync, buffered, uring-async)"
            );
            std::process::exit(2);
        }
    };
    let inline = matches!(shape, Shape::Inline | Shape::Buffered);
    let (file, ring) = if matches!(shape, Shape::Uring | Shape::UringAsync) {
        let (file, ring) = uring::open(path, URING_FILE_BYTES, shape == Shape::Uring, in_flight())?;
        (file, Some(ring))
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        // SAFETY: preallocating a file this function opened, as polykv's log does.
        unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES) };
        let ring = (shape == Shape::UringFsync)
            .then(|| uring::Ring::new(false, in_flight()))
            .transpose()?;
        (file, ring)
    };
    let eventfd = ring.as_ref().map(uring::Ring::eventfd).transpose()?;
    let log = Arc::new(Log {
        file,
        inline,
        buffered: shape == Shape::Buffered,
        uring: ring.map(Mutex::new),
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        synced: watch::channel(0).0,
        offset: Mutex::new(0),
    });
    if shape == Shape::Thread {
        let persister = log.clone();
        std::thread::Builder::new()
            .name("floor-persister".into())
            .spawn(move || persister.persist())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(eventfd) = eventfd {
            // SAFETY: the eventfd is an `OwnedFd` the `AsyncFd` owns until it is dropped.
            let eventfd = unsafe { tokio::io::unix::AsyncFd::register(eventfd) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tokio::spawn(log.clone().reap(eventfd));
        }
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(clients::serve_sets(stream, log.clone()));
        }
    })
}
