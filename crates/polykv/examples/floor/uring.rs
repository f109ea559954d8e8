//! The io_uring write shape the floors share (`durable_floor`, `cluster_floor`): a file opened
//! with `O_DIRECT`, written in whole 4 KiB blocks, each write carrying `RWF_DSYNC` (the shape
//! polykv's log mirror uses), its completion read from an eventfd on the serving thread's own
//! event loop. With one write in flight the partial last block is written again, with more in
//! it, by the next write; with more, each write starts at a block of its own (no partial block is
//! rewritten while an earlier write may still carry it).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

use io_uring::{opcode, types, IoUring};

pub const BLOCK: usize = 4096;
/// Most writes in flight a ring takes.
pub const MAX_IN_FLIGHT: usize = 8;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
pub struct Block(pub [u8; BLOCK]);

/// Prints the error and ends the process: what a floor does when its disk or a peer fails.
pub fn fatal(program: &str, what: impl std::fmt::Display) -> ! {
    eprintln!("{program}: {what}");
    std::process::exit(1)
}

/// Creates `path` filled with `bytes` of zeros (so that a direct write never lands on an
/// unwritten extent, whose conversion would need the journal), synced, and opens it again with
/// `O_DIRECT` for writing.
pub fn open_zeroed(path: &str, bytes: u64) -> std::io::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..bytes.div_ceil(1 << 20) {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

pub struct Ring {
    ring: IoUring,
    /// The writes in flight, oldest first: the target each covers, whether it completed,
    /// and its blocks (they must live until it completes).
    in_flight: VecDeque<(u64, bool, Vec<Block>)>,
    /// Most writes in flight at once.
    max_in_flight: usize,
    /// Bytes of the last, partial block already written: the next write starts with them.
    tail: Vec<u8>,
    /// File offset of the block the next write starts at.
    offset: u64,
    /// Size of the file: writes wrap around at its end (a floor keeps nothing).
    file_bytes: u64,
    /// `O_DIRECT` writes (else page-cache writes and an fdatasync each).
    direct: bool,
    /// Direct writes carry `RWF_DSYNC`.
    dsync: bool,
}

/// A zero-filled file of `file_bytes` at `path` and a ring writing it directly, each write
/// durable if `dsync`.
pub fn open(
    path: &str,
    file_bytes: u64,
    dsync: bool,
    max_in_flight: usize,
) -> std::io::Result<(File, Ring)> {
    let file = open_zeroed(path, file_bytes)?;
    let mut ring = Ring::new(true, max_in_flight)?;
    ring.dsync = dsync;
    ring.file_bytes = file_bytes;
    Ok((file, ring))
}

impl Ring {
    /// `direct`: the file was opened with `O_DIRECT` and each group is written with
    /// `RWF_DSYNC` ([`Ring::write`]); else it is written through the page cache and synced
    /// with [`Ring::fsync`]. `max_in_flight` is clamped to 1..=[`MAX_IN_FLIGHT`].
    pub fn new(direct: bool, max_in_flight: usize) -> std::io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(2 * MAX_IN_FLIGHT as u32)?,
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.clamp(1, MAX_IN_FLIGHT),
            tail: Vec::new(),
            offset: 0,
            file_bytes: 256 << 20,
            direct,
            dsync: direct,
        })
    }

    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Submits an fdatasync of `file` covering `target`.
    pub fn fsync(&mut self, file: &File, target: u64) -> std::io::Result<()> {
        let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(target);
        // SAFETY: the entry refers to no memory; the file outlives the ring.
        unsafe { self.ring.submission().push(&sync) }.map_err(|_| full())?;
        self.ring.submit()?;
        self.in_flight.push_back((target, false, Vec::new()));
        Ok(())
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

    /// Submits `data` (appended after the tail) as one write covering `target`.
    pub fn write(&mut self, file: &File, data: &[u8], target: u64) -> std::io::Result<()> {
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(data);
        let blocks = bytes.len().div_ceil(BLOCK);
        if (blocks * BLOCK) as u64 > self.file_bytes {
            return Err(std::io::Error::other(format!(
                "a write of {} bytes does not fit the {}-byte file",
                bytes.len(),
                self.file_bytes
            )));
        }
        if self.offset + (blocks * BLOCK) as u64 > self.file_bytes {
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
        unsafe { self.ring.submission().push(&write) }.map_err(|_| full())?;
        self.ring.submit()?;
        self.in_flight.push_back((target, false, buffer));
        if self.max_in_flight == 1 {
            // The next write rewrites the partial last block with more in it.
            let whole = bytes.len() / BLOCK;
            self.tail = bytes[whole * BLOCK..].to_vec();
            self.offset += (whole * BLOCK) as u64;
        } else {
            self.offset += (blocks * BLOCK) as u64;
        }
        Ok(())
    }

    /// The highest target every write up to which has completed, if a completion moved it.
    pub fn reap(&mut self) -> std::io::Result<Option<u64>> {
        let mut failed = None;
        let finished: Vec<u64> = self
            .ring
            .completion()
            .map(|entry| {
                if entry.result() < 0 {
                    failed = Some(entry.result());
                }
                entry.user_data()
            })
            .collect();
        if let Some(errno) = failed {
            return Err(std::io::Error::from_raw_os_error(-errno));
        }
        for target in finished {
            if let Some(write) = self.in_flight.iter_mut().find(|w| w.0 == target) {
                write.1 = true;
            }
        }
        let mut done = None;
        while self.in_flight.front().is_some_and(|w| w.1) {
            done = self.in_flight.pop_front().map(|w| w.0);
        }
        Ok(done)
    }
}

fn full() -> std::io::Error {
    std::io::Error::other("io_uring submission queue full")
}

/// Reads the eventfd's counter (resetting it) after the ring signalled it.
pub fn drain_eventfd(eventfd: &OwnedFd) {
    let mut count = [0u8; 8];
    // SAFETY: reading the eventfd's 8-byte counter into a buffer of 8 bytes.
    unsafe { libc::read(eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
}
