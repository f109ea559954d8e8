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
            ring.write(&self.file, &buf, target);
        } else {
            let mut offset = self.offset.lock().expect("offset lock");
            if *offset + buf.len() as u64 > FILE_BYTES as u64 {
                *offset = 0;
            }
            self.file.write_all_at(&buf, *offset).expect("log write");
            *offset += buf.len() as u64;
            ring.fsync(&self.file, target);
        }
    }

    /// Runs on the runtime thread: reaps completed writes, publishes them, submits the next.
    async fn reap(self: Arc<Self>, eventfd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>) {
        let Some(ring) = &self.uring else { return };
        loop {
            let Ok(mut ready) = eventfd.readable().await else {
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reading the eventfd's 8-byte counter into a buffer of 8 bytes.
            unsafe { libc::read(eventfd.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            ready.clear_ready();
            let done = ring.lock().expect("ring lock").reap();
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
        let (file, ring) = uring::open(path, shape == Shape::Uring)?;
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
            .then(|| uring::Ring::new(false))
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
            tokio::spawn(serve(stream, log.clone()));
        }
    })
}

/// The io_uring shape: a file opened with `O_DIRECT`, written in whole 4 KiB blocks (the partial
/// last block is written again, with more in it, by the next group), each write carrying
/// `RWF_DSYNC`; one write in flight at a time.
mod uring {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;

    use io_uring::{opcode, types, IoUring};

    const BLOCK: usize = 4096;
    /// Smaller than the other shapes' file: it is written with zeros first, so that a direct
    /// write never lands on an unwritten extent (whose conversion would need the journal).
    const FILE_BYTES: u64 = 256 << 20;

    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Block([u8; BLOCK]);

    pub struct Ring {
        ring: IoUring,
        /// The writes in flight, oldest first: the target each covers, whether it completed,
        /// and its blocks (they must live until it completes).
        in_flight: std::collections::VecDeque<(u64, bool, Vec<Block>)>,
        /// Most writes in flight at once (`FLOOR_IN_FLIGHT`, default 1). With more than one,
        /// each group starts at a block of its own (no partial block is rewritten while an
        /// earlier write may still carry it).
        max_in_flight: usize,
        /// Bytes of the last, partial block already written: the next write starts with them.
        tail: Vec<u8>,
        /// File offset of the block the next write starts at.
        offset: u64,
        /// `O_DIRECT` writes (else page-cache writes and an fdatasync each).
        direct: bool,
        /// Direct writes carry `RWF_DSYNC`.
        dsync: bool,
    }

    pub fn open(path: &str, dsync: bool) -> std::io::Result<(File, Ring)> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(FILE_BYTES >> 20) {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let mut ring = Ring::new(true)?;
        ring.dsync = dsync;
        Ok((file, ring))
    }

    impl Ring {
        /// `direct`: the file was opened with `O_DIRECT` and each group is written with
        /// `RWF_DSYNC` ([`Ring::write`]); else it is written through the page cache and synced
        /// with [`Ring::fsync`].
        pub fn new(direct: bool) -> std::io::Result<Ring> {
            let max_in_flight = std::env::var("FLOOR_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1usize)
                .clamp(1, 4);
            Ok(Ring {
                ring: IoUring::new(8)?,
                in_flight: std::collections::VecDeque::new(),
                max_in_flight,
                tail: Vec::new(),
                offset: 0,
                direct,
                dsync: direct,
            })
        }

        pub fn direct(&self) -> bool {
            self.direct
        }

        /// Submits an fdatasync of `file` covering `target`.
        pub fn fsync(&mut self, file: &File, target: u64) {
            let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(target);
            // SAFETY: the entry refers to no memory; the file outlives the ring.
            unsafe {
                self.ring
                    .submission()
                    .push(&sync)
                    .expect("submission queue")
            };
            self.ring.submit().expect("io_uring submit");
            self.in_flight.push_back((target, false, Vec::new()));
        }

        pub fn eventfd(&self) -> std::io::Result<OwnedFd> {
            // SAFETY: a new eventfd; the result is checked before it is owned.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            self.ring.submitter().register_eventfd(fd)?;
            // SAFETY: `fd` is a descriptor this function just created and nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }

        pub fn busy(&self) -> bool {
            self.in_flight.len() >= self.max_in_flight
        }

        /// Submits `data` (appended after the tail) as one durable write covering `target`.
        pub fn write(&mut self, file: &File, data: &[u8], target: u64) {
            let mut bytes = std::mem::take(&mut self.tail);
            bytes.extend_from_slice(data);
            let blocks = bytes.len().div_ceil(BLOCK);
            if self.offset + (blocks * BLOCK) as u64 > FILE_BYTES {
                // A floor keeps nothing: wrap around.
                self.offset = 0;
            }
            let mut buffer = vec![Block([0; BLOCK]); blocks];
            for (block, chunk) in buffer.iter_mut().zip(bytes.chunks(BLOCK)) {
                block.0[..chunk.len()].copy_from_slice(chunk);
            }
            let len = (blocks * BLOCK) as u32;
            let write = opcode::Write::new(
                types::Fd(file.as_raw_fd()),
                buffer.as_ptr().cast::<u8>(),
                len,
            )
            .offset(self.offset)
            .rw_flags(if self.dsync { libc::RWF_DSYNC } else { 0 })
            .build()
            .user_data(target);
            // SAFETY: the buffer lives, unchanged (a `Vec`'s heap block does not move when the
            // `Vec` is moved), in `in_flight` until its completion is reaped.
            unsafe {
                self.ring
                    .submission()
                    .push(&write)
                    .expect("submission queue")
            };
            self.ring.submit().expect("io_uring submit");
            self.in_flight.push_back((target, false, buffer));
            if self.max_in_flight == 1 {
                // The next write rewrites the partial last block with more in it.
                let full = bytes.len() / BLOCK;
                self.tail = bytes[full * BLOCK..].to_vec();
                self.offset += (full * BLOCK) as u64;
            } else {
                self.offset += (blocks * BLOCK) as u64;
            }
        }

        /// The highest target every write up to which has completed, if a completion moved it.
        pub fn reap(&mut self) -> Option<u64> {
            let finished: Vec<u64> = self
                .ring
                .completion()
                .map(|entry| {
                    assert!(
                        entry.result() >= 0,
                        "durable write failed: {}",
                        entry.result()
                    );
                    entry.user_data()
                })
                .collect();
            for target in finished {
                if let Some(write) = self.in_flight.iter_mut().find(|w| w.0 == target) {
                    write.1 = true;
                }
            }
            let mut done = None;
            while self.in_flight.front().is_some_and(|w| w.1) {
                done = self.in_flight.pop_front().map(|w| w.0);
            }
            done
        }
    }
}
