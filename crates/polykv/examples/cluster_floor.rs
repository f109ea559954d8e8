//! The floor under a replicated durable write: the least work any three-node design that makes a
//! write durable on a majority must do on this machine. No Raft, no elections, no state machine.
//! The leader decodes nmdb SYNC SETs (polykv's codec), gathers each turn of its event loop into
//! a group, writes the group to its own file and sends it to both followers at once (one TCP
//! connection each); a follower writes each group it receives and acks it; the leader answers a
//! group's clients once a majority of the three (its own write and one follower's, or both
//! followers') covers it. Every write is one `O_DIRECT` + `RWF_DSYNC` write through io_uring,
//! completed on the process's one event-loop thread, as in `durable_floor uring` and polykv's
//! log mirror. `scripts/cluster-floor.sh` loads it beside polykv's cluster and etcd.
//!
//!   cluster_floor leader ADDR FILE FOLLOWER FOLLOWER [--groups-in-flight N] [--writes-in-flight N]
//!                 [--busy-us-per-write US]
//!   cluster_floor follower ADDR FILE [--writes-in-flight N] [--busy-us-per-write US]
//!   cluster_floor disk FILE_PREFIX WRITERS SECONDS [BYTES]
//!
//! `--groups-in-flight`: groups sent to a follower and not yet acked (1, the default, is
//! openraft's replication today: one AppendEntries in flight per follower; more is pipelined).
//! `--writes-in-flight`: the process's own durable writes in flight (default 1; polykv's mirror
//! keeps 2). `--busy-us-per-write`: CPU the node burns per write it takes (the leader per SET,
//! a follower per record of a group), to see what a design's CPU per write costs in throughput
//! on this machine (default 0). `disk`: the device alone: WRITERS threads, each writing BYTES
//! (default 4096) with `O_DIRECT` + `RWF_DSYNC` to its own file, one write at a time, for
//! SECONDS; prints each writer's writes/s and latency.
//!
//! Link frames: leader → follower `[u32 length][u64 target][length bytes]` (the target: how many
//! records the leader has appended up to this group's end); follower → leader `[u64 target]`,
//! cumulative. A group is at most [`MAX_GROUP`] bytes; a follower more than [`MAX_BEHIND`] bytes
//! behind stops the leader.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

#[path = "floor/clients.rs"]
mod clients;
#[allow(dead_code)] // the page-cache + fdatasync shape is durable_floor's only
#[path = "floor/uring.rs"]
mod uring;

const PROGRAM: &str = "cluster_floor";
/// Largest group on the link (and so the largest buffer a follower allocates for one).
const MAX_GROUP: usize = 16 << 20;
/// A follower this many bytes behind the leader's appends stops the floor (bounded memory).
const MAX_BEHIND: usize = 64 << 20;
/// Each process's log file (written with zeros first; writes wrap around at its end).
const FILE_BYTES: u64 = 64 << 20;
const HEADER: usize = 12;

fn fatal(what: impl std::fmt::Display) -> ! {
    uring::fatal(PROGRAM, what)
}

/// The process's own durable log: a ring writing a zero-filled `O_DIRECT` file.
struct DiskLog {
    file: File,
    ring: uring::Ring,
    /// Bytes appended and not yet submitted, and the target they reach.
    pending: Vec<u8>,
    pending_target: u64,
    /// Highest target durable here.
    durable: u64,
    writes: u64,
}

impl DiskLog {
    fn open(path: &str, writes_in_flight: usize) -> std::io::Result<(DiskLog, OwnedFd)> {
        let (file, ring) = uring::open(path, FILE_BYTES, true, writes_in_flight)?;
        let eventfd = ring.eventfd()?;
        let log = DiskLog {
            file,
            ring,
            pending: Vec::new(),
            pending_target: 0,
            durable: 0,
            writes: 0,
        };
        Ok((log, eventfd))
    }

    /// Submits what is pending as one durable write, unless the ring is full (a completion
    /// submits it).
    fn submit(&mut self) {
        if self.ring.busy() || self.pending.is_empty() {
            return;
        }
        if let Err(e) = self
            .ring
            .write(&self.file, &self.pending, self.pending_target)
        {
            fatal(format_args!("durable write: {e}"));
        }
        self.pending.clear();
        self.writes += 1;
    }

    /// Takes completed writes into `durable`; true if it moved.
    fn reap(&mut self) -> bool {
        match self.ring.reap() {
            Ok(Some(target)) => {
                self.durable = target;
                true
            }
            Ok(None) => false,
            Err(e) => fatal(format_args!("durable write failed: {e}")),
        }
    }
}

/// Waits for the ring's completions on the event loop and hands them to `on_durable`.
async fn reap_loop(eventfd: OwnedFd, log: Rc<RefCell<DiskLog>>, on_durable: impl Fn()) {
    // SAFETY: the eventfd is an `OwnedFd` the `AsyncFd` owns until it is dropped.
    let eventfd = unsafe { AsyncFd::register(eventfd) }
        .unwrap_or_else(|e| fatal(format_args!("eventfd: {e}")));
    loop {
        let mut ready = match eventfd.readable().await {
            Ok(ready) => ready,
            Err(e) => fatal(format_args!("eventfd: {e}")),
        };
        uring::drain_eventfd(eventfd.get_ref());
        ready.clear_ready();
        let moved = log.borrow_mut().reap();
        log.borrow_mut().submit();
        if moved {
            on_durable();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Leader

/// What one follower has been sent and has acked.
struct Link {
    /// Records appended and not yet sent, and the target they reach.
    pending: Vec<u8>,
    pending_target: u64,
    /// Targets of the groups sent and not yet acked, oldest first.
    in_flight: VecDeque<u64>,
    acked: u64,
    groups: u64,
    wake: Rc<Notify>,
}

struct Leader {
    appended: u64,
    log: Rc<RefCell<DiskLog>>,
    links: [Link; 2],
    groups_in_flight: usize,
    /// Highest target a majority holds durably: what clients may be answered up to.
    committed: watch::Sender<u64>,
}

impl Leader {
    fn append(&mut self, frame: &[u8]) -> u64 {
        self.appended += 1;
        let mut log = self.log.borrow_mut();
        log.pending.extend_from_slice(frame);
        log.pending_target = self.appended;
        for (i, link) in self.links.iter_mut().enumerate() {
            if link.pending.len() + frame.len() > MAX_BEHIND {
                fatal(format_args!(
                    "follower {} is more than {MAX_BEHIND} bytes behind",
                    i + 1
                ));
            }
            link.pending.extend_from_slice(frame);
            link.pending_target = self.appended;
        }
        self.appended
    }

    /// Starts the leader's own write and the sends to the followers of what is pending, as far
    /// as their in-flight limits allow.
    fn kick(&self) {
        self.log.borrow_mut().submit();
        for link in &self.links {
            if !link.pending.is_empty() && link.in_flight.len() < self.groups_in_flight {
                link.wake.notify_one();
            }
        }
    }

    /// The majority of three: the second highest of the three durable targets.
    fn update_commit(&self) {
        let mut held = [
            self.log.borrow().durable,
            self.links[0].acked,
            self.links[1].acked,
        ];
        held.sort_unstable();
        self.committed.send_if_modified(|c| {
            let moved = held[1] > *c;
            *c = (*c).max(held[1]);
            moved
        });
    }
}

/// A client's view of the leader: its SETs appended to the next group (each burning the CPU
/// the settings ask for), answered once a majority holds them.
struct ClientLog {
    leader: Rc<RefCell<Leader>>,
    committed: watch::Receiver<u64>,
    busy: Duration,
}

impl clients::FloorLog for ClientLog {
    fn append(&mut self, frame: &[u8]) -> u64 {
        let last = self.leader.borrow_mut().append(frame);
        burn(self.busy);
        last
    }

    async fn wait_durable(&mut self, last: u64) -> bool {
        // Let every other ready connection append first: one group covers the whole turn.
        tokio::task::yield_now().await;
        self.leader.borrow().kick();
        self.committed.wait_for(|c| *c >= last).await.is_ok()
    }
}

fn serve_client(
    stream: TcpStream,
    leader: Rc<RefCell<Leader>>,
    busy: Duration,
) -> impl std::future::Future<Output = ()> {
    let committed = leader.borrow().committed.subscribe();
    clients::serve_sets(
        stream,
        ClientLog {
            leader,
            committed,
            busy,
        },
    )
}

/// Sends each follower what is pending whenever it has room for another group.
async fn send_groups(mut stream: OwnedWriteHalf, leader: Rc<RefCell<Leader>>, index: usize) {
    let wake = leader.borrow().links[index].wake.clone();
    let mut frame = Vec::with_capacity(64 * 1024);
    loop {
        wake.notified().await;
        loop {
            {
                let mut leader = leader.borrow_mut();
                let limit = leader.groups_in_flight;
                let link = &mut leader.links[index];
                if link.pending.is_empty() || link.in_flight.len() >= limit {
                    break;
                }
                if link.pending.len() > MAX_GROUP {
                    fatal(format_args!(
                        "a group of {} bytes is over the link's {MAX_GROUP}",
                        link.pending.len()
                    ));
                }
                frame.clear();
                frame.extend_from_slice(&(link.pending.len() as u32).to_le_bytes());
                frame.extend_from_slice(&link.pending_target.to_le_bytes());
                frame.extend_from_slice(&link.pending);
                link.pending.clear();
                link.in_flight.push_back(link.pending_target);
                link.groups += 1;
            }
            if let Err(e) = stream.write_all(&frame).await {
                fatal(format_args!("sending to follower {}: {e}", index + 1));
            }
        }
    }
}

/// Reads a follower's acks (cumulative targets) and commits what a majority holds.
async fn read_acks(mut stream: OwnedReadHalf, leader: Rc<RefCell<Leader>>, index: usize) {
    let mut input = BytesMut::with_capacity(4096);
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) => fatal(format_args!("follower {} closed the link", index + 1)),
            Err(e) => fatal(format_args!("reading follower {}: {e}", index + 1)),
            Ok(_) => {}
        }
        let mut acked = None;
        while input.len() >= 8 {
            acked = Some(input.get_u64_le());
        }
        let Some(target) = acked else { continue };
        let mut leader = leader.borrow_mut();
        let link = &mut leader.links[index];
        if target < link.acked || !link.in_flight.contains(&target) {
            fatal(format_args!(
                "follower {} acked {target}, which was not sent",
                index + 1
            ));
        }
        while link.in_flight.front().is_some_and(|t| *t <= target) {
            link.in_flight.pop_front();
        }
        link.acked = target;
        leader.update_commit();
        leader.kick();
    }
}

async fn connect(addr: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => return stream,
            Err(e) if Instant::now() >= deadline => {
                fatal(format_args!("cannot reach follower {addr}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run_leader(
    addr: &str,
    path: &str,
    followers: [&str; 2],
    settings: Settings,
) -> std::io::Result<()> {
    let Settings {
        groups_in_flight,
        writes_in_flight,
        ..
    } = settings;
    let (log, eventfd) = DiskLog::open(path, writes_in_flight)?;
    let log = Rc::new(RefCell::new(log));
    let link = || Link {
        pending: Vec::new(),
        pending_target: 0,
        in_flight: VecDeque::new(),
        acked: 0,
        groups: 0,
        wake: Rc::new(Notify::new()),
    };
    let leader = Rc::new(RefCell::new(Leader {
        appended: 0,
        log: log.clone(),
        links: [link(), link()],
        groups_in_flight,
        committed: watch::channel(0).0,
    }));
    for (index, follower) in followers.iter().enumerate() {
        let stream = connect(follower).await;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        tokio::task::spawn_local(send_groups(write, leader.clone(), index));
        tokio::task::spawn_local(read_acks(read, leader.clone(), index));
    }
    let on_durable = {
        let leader = leader.clone();
        move || {
            let leader = leader.borrow();
            leader.update_commit();
            leader.kick();
        }
    };
    tokio::task::spawn_local(reap_loop(eventfd, log, on_durable));
    let listener = TcpListener::bind(addr).await?;
    let accept = async {
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(serve_client(stream, leader.clone(), settings.busy));
        }
    };
    let result: std::io::Result<()> = tokio::select! {
        r = accept => r,
        () = shutdown() => Ok(()),
    };
    let leader = leader.borrow();
    eprintln!(
        "{PROGRAM} leader ({groups_in_flight} groups, {writes_in_flight} writes in flight): \
         {} writes, {} own durable writes, groups sent {} and {}",
        leader.appended,
        leader.log.borrow().writes,
        leader.links[0].groups,
        leader.links[1].groups
    );
    result
}

// ---------------------------------------------------------------------------------------------
// Follower

async fn run_follower(addr: &str, path: &str, settings: Settings) -> std::io::Result<()> {
    let (log, eventfd) = DiskLog::open(path, settings.writes_in_flight)?;
    let log = Rc::new(RefCell::new(log));
    let listener = TcpListener::bind(addr).await?;
    let stream = tokio::select! {
        r = listener.accept() => r?.0,
        () = shutdown() => return Ok(()),
    };
    drop(listener);
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let durable = Rc::new(watch::channel(0u64).0);
    let on_durable = {
        let (log, durable) = (log.clone(), durable.clone());
        move || {
            durable.send_replace(log.borrow().durable);
        }
    };
    tokio::task::spawn_local(reap_loop(eventfd, log.clone(), on_durable));
    tokio::task::spawn_local(send_acks(write, durable.subscribe()));
    let result = tokio::select! {
        r = receive_groups(read, log.clone(), settings.busy) => r,
        () = shutdown() => Ok(()),
    };
    eprintln!("{PROGRAM} follower: {} durable writes", log.borrow().writes);
    result
}

/// Reads the leader's groups, each as it comes, and submits them (merged while the ring is full).
async fn receive_groups(
    mut stream: OwnedReadHalf,
    log: Rc<RefCell<DiskLog>>,
    busy: Duration,
) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut last_target = 0;
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            eprintln!("{PROGRAM} follower: the leader closed the link");
            return Ok(());
        }
        loop {
            let (target, length) = match next_group(&input, last_target)? {
                Group::Whole { target, length } => (target, length),
                Group::Partial { needs } => {
                    input.reserve(needs.saturating_sub(input.len()));
                    break;
                }
            };
            burn(busy * (target - last_target).min(1 << 20) as u32);
            last_target = target;
            let mut log = log.borrow_mut();
            log.pending
                .extend_from_slice(&input[HEADER..HEADER + length]);
            log.pending_target = target;
            input.advance(HEADER + length);
        }
        log.borrow_mut().submit();
    }
}

/// What the start of a follower's input holds.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// A whole group: its target and its length (after the header).
    Whole { target: u64, length: usize },
    /// Not yet a whole group: `needs` bytes make the next one (at least a header's).
    Partial { needs: usize },
}

/// Reads the group at the start of `input`, checking its length before anything is allocated
/// for it and that its target is past `last_target`.
fn next_group(input: &[u8], last_target: u64) -> std::io::Result<Group> {
    let Some(header) = input.get(..HEADER) else {
        return Ok(Group::Partial { needs: HEADER });
    };
    let mut length = [0u8; 4];
    length.copy_from_slice(&header[..4]);
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_GROUP {
        return Err(std::io::Error::other(format!(
            "a group of {length} bytes is over the link's {MAX_GROUP}"
        )));
    }
    let mut target = [0u8; 8];
    target.copy_from_slice(&header[4..]);
    let target = u64::from_le_bytes(target);
    if target <= last_target {
        return Err(std::io::Error::other(format!(
            "group target {target} is not past the last one, {last_target}"
        )));
    }
    if input.len() < HEADER + length {
        return Ok(Group::Partial {
            needs: HEADER + length,
        });
    }
    Ok(Group::Whole { target, length })
}

async fn send_acks(mut stream: OwnedWriteHalf, mut durable: watch::Receiver<u64>) {
    while durable.changed().await.is_ok() {
        let target = *durable.borrow_and_update();
        if let Err(e) = stream.write_all(&target.to_le_bytes()).await {
            fatal(format_args!("acking to the leader: {e}"));
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        fatal("cannot install the signal handlers")
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The device alone

/// WRITERS threads, each writing `bytes` with `O_DIRECT` + `RWF_DSYNC` to its own file, one
/// write at a time, for `seconds`.
fn disk(prefix: &str, writers: usize, seconds: f64, bytes: usize) -> std::io::Result<()> {
    let blocks = bytes.div_ceil(uring::BLOCK).max(1);
    let files: Vec<File> = (0..writers)
        .map(|i| uring::open_zeroed(&format!("{prefix}.{i}"), FILE_BYTES))
        .collect::<std::io::Result<_>>()?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = files
        .into_iter()
        .map(|file| std::thread::spawn(move || disk_writer(&file, blocks, until)))
        .collect();
    let mut total = 0;
    for (i, thread) in threads.into_iter().enumerate() {
        let mut latencies = thread
            .join()
            .map_err(|_| std::io::Error::other("a writer thread panicked"))??;
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        total += latencies.len();
        println!(
            "writer {i}: {:.0} writes/s of {} bytes, p50 {} us, p99 {} us",
            latencies.len() as f64 / seconds,
            blocks * uring::BLOCK,
            at(0.5),
            at(0.99)
        );
    }
    println!(
        "{writers} writers: {:.0} durable writes/s in all",
        total as f64 / seconds
    );
    Ok(())
}

fn disk_writer(file: &File, blocks: usize, until: Instant) -> std::io::Result<Vec<u64>> {
    use std::os::unix::io::AsRawFd;
    let buffer = vec![uring::Block([7; uring::BLOCK]); blocks];
    let len = blocks * uring::BLOCK;
    let iov = libc::iovec {
        iov_base: buffer.as_ptr() as *mut libc::c_void,
        iov_len: len,
    };
    let mut latencies = Vec::new();
    let mut offset = 0u64;
    while Instant::now() < until {
        if offset + len as u64 > FILE_BYTES {
            offset = 0;
        }
        let start = Instant::now();
        // SAFETY: one iovec over `buffer`, which lives (block-aligned) across the call.
        let written =
            unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_DSYNC) };
        if written != len as isize {
            return Err(std::io::Error::last_os_error());
        }
        latencies.push(start.elapsed().as_micros() as u64);
        offset += len as u64;
    }
    if latencies.is_empty() {
        return Err(std::io::Error::other("no write finished in time"));
    }
    Ok(latencies)
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Settings {
    groups_in_flight: usize,
    writes_in_flight: usize,
    /// CPU burnt per write taken.
    busy: Duration,
}

/// Burns `cpu` of this thread's CPU time (time preempted does not count).
fn burn(cpu: Duration) {
    if cpu.is_zero() {
        return;
    }
    let now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let until = now() + cpu;
    while now() < until {
        std::hint::spin_loop();
    }
}

/// The value of `--busy-us-per-write US` in `args` (0 if absent), at most 1 000 µs.
fn busy_flag(args: &[String]) -> Duration {
    let name = "--busy-us-per-write";
    let Some(at) = args.iter().position(|a| a == name) else {
        return Duration::ZERO;
    };
    match args.get(at + 1).and_then(|v| v.parse::<f64>().ok()) {
        Some(us) if (0.0..=1000.0).contains(&us) => Duration::from_secs_f64(us / 1e6),
        _ => fatal(format_args!("{name} takes microseconds from 0 to 1000")),
    }
}

/// The value of `--NAME N` in `args` (1 if absent), checked to be 1..=MAX_IN_FLIGHT.
fn in_flight_flag(args: &[String], name: &str) -> usize {
    let Some(at) = args.iter().position(|a| a == name) else {
        return 1;
    };
    match args.get(at + 1).and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if (1..=uring::MAX_IN_FLIGHT).contains(&n) => n,
        _ => fatal(format_args!(
            "{name} takes a number from 1 to {}",
            uring::MAX_IN_FLIGHT
        )),
    }
}

const USAGE: &str = "usage: cluster_floor leader ADDR FILE FOLLOWER FOLLOWER \
[--groups-in-flight N] [--writes-in-flight N] [--busy-us-per-write US]
       cluster_floor follower ADDR FILE [--writes-in-flight N] [--busy-us-per-write US]
       cluster_floor disk FILE_PREFIX WRITERS SECONDS [BYTES]";

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    if arg(0) == Some("disk") {
        let (Some(prefix), Some(Ok(writers)), Some(Ok(seconds))) = (
            arg(1),
            arg(2).map(str::parse::<usize>),
            arg(3).map(str::parse::<f64>),
        ) else {
            fatal(USAGE)
        };
        let bytes = match arg(4).map(str::parse::<usize>) {
            None => uring::BLOCK,
            Some(Ok(n)) if n > 0 && n <= 1 << 20 => n,
            Some(_) => fatal("BYTES must be from 1 to 1048576"),
        };
        if writers == 0 || writers > 64 || !(seconds > 0.0 && seconds <= 600.0) {
            fatal("WRITERS must be 1 to 64 and SECONDS above 0, at most 600");
        }
        return disk(prefix, writers, seconds, bytes);
    }
    let settings = Settings {
        groups_in_flight: in_flight_flag(&args, "--groups-in-flight"),
        writes_in_flight: in_flight_flag(&args, "--writes-in-flight"),
        busy: busy_flag(&args),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match (arg(0), arg(1), arg(2), arg(3), arg(4)) {
        (Some("leader"), Some(addr), Some(path), Some(f1), Some(f2)) => {
            local.block_on(&runtime, run_leader(addr, path, [f1, f2], settings))
        }
        (Some("follower"), Some(addr), Some(path), ..) => {
            local.block_on(&runtime, run_follower(addr, path, settings))
        }
        _ => fatal(USAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(length: u32, target: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = length.to_le_bytes().to_vec();
        bytes.extend_from_slice(&target.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_whole_group_is_read_with_its_target_and_length() {
        let bytes = frame(3, 7, b"abcXYZ");
        let group = next_group(&bytes, 4).expect("a valid group");
        assert_eq!(
            group,
            Group::Whole {
                target: 7,
                length: 3
            }
        );
    }

    #[test]
    fn a_partial_group_asks_for_the_bytes_it_lacks() {
        assert_eq!(
            next_group(&[1, 0], 0).expect("valid so far"),
            Group::Partial { needs: HEADER }
        );
        let bytes = frame(100, 1, b"only part");
        assert_eq!(
            next_group(&bytes, 0).expect("valid so far"),
            Group::Partial {
                needs: HEADER + 100
            }
        );
    }

    #[test]
    fn an_oversized_group_is_refused_from_its_header_alone() {
        let bytes = frame(MAX_GROUP as u32 + 1, 1, b"");
        let error = next_group(&bytes, 0).expect_err("over the limit");
        assert!(error.to_string().contains("over the link's"), "{error}");
    }

    #[test]
    fn a_group_that_does_not_move_the_target_is_refused() {
        let bytes = frame(1, 5, b"x");
        let error = next_group(&bytes, 5).expect_err("not past the last target");
        assert!(error.to_string().contains("not past"), "{error}");
    }
}
