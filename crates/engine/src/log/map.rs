//! The active segment, mapped: a flush copies the buffered records into the segment's pages in
//! the OS page cache instead of making a `write(2)`.
//!
//! A page of a shared file mapping is the page cache's own page, so a record copied into it is
//! where a `write(2)` would have put it: it survives a kill of the process and reaches the disk
//! with the next fdatasync or the kernel's writeback. What the copy saves is the system call,
//! and with it the reason to gather an event loop's Async writes into one flush (one more poll
//! of every writing session).
//!
//! A fault on a shared file mapping turns an I/O error or a full disk into SIGBUS, so a segment
//! is mapped only where neither can happen on the write path: the file is at least as long as
//! the mapping and its blocks are allocated (a segment is created with `posix_fallocate`), and
//! the log never shortens a mapped file (it drops the map first). Pages behind the write
//! position are let go (`MADV_DONTNEED`: the mapping forgets them, the page cache keeps them and
//! their data), so the mapping never holds more than a few pages of resident memory.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use memmap2::{Advice, MmapMut, MmapOptions, UncheckedAdvice};

/// The pages behind the write position are let go in steps of this many bytes.
const RELEASE_STEP: usize = 1 << 20;

pub(super) const PAGE: usize = 4096;

/// A segment file mapped for writing.
pub(super) struct SegmentMap {
    map: MmapMut,
    /// Whole pages before this offset have been let go.
    released: usize,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file` (a segment opened for reading and writing), or
    /// `None` where that would not be safe (the file shorter than `len`, or not allocated on
    /// disk: a write fault would have to allocate, and fails with SIGBUS on a full disk) or the
    /// mapping fails. `written` is where the records end: the pages before it are not kept.
    pub(super) fn new(file: &File, len: u64, written: u64) -> Option<SegmentMap> {
        let meta = file.metadata().ok()?;
        let allocated = meta.blocks().saturating_mul(512);
        if meta.len() < len || allocated < len || len == 0 {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        // SAFETY: the log is the only writer of its segment files and never shortens one while
        // it is mapped (every cut drops the map first); the file is allocated over the whole
        // mapping, so no fault on it needs a block from the disk.
        let map = unsafe { MmapOptions::new().len(len).map_mut(file) }.ok()?;
        let released = usize::try_from(written).map_or(0, |w| w.min(len) / PAGE * PAGE);
        Some(SegmentMap { map, released })
    }

    /// Copies `bytes` into the segment at `offset`; false (and nothing copied) where they do
    /// not fit in the mapping: the caller writes them with `write(2)` instead.
    pub(super) fn write_at(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        let Some(end) = start.checked_add(bytes.len()) else {
            return false;
        };
        let Some(target) = self.map.get_mut(start..end) else {
            return false;
        };
        target.copy_from_slice(bytes);
        if end - self.released >= RELEASE_STEP {
            self.release_upto(end / PAGE * PAGE);
        }
        true
    }

    /// Lets the mapping forget the pages before `upto` (a page boundary).
    fn release_upto(&mut self, upto: usize) {
        if upto <= self.released {
            return;
        }
        // SAFETY: on a shared file mapping MADV_DONTNEED only drops this process's page table
        // entries: the pages, dirty or not, stay in the page cache with their data, and a later
        // access maps them again. Nothing holds a reference into the range.
        let result = unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                self.released,
                upto - self.released,
            )
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "log: could not release the mapped pages behind the writes");
        }
        self.released = upto;
    }
}

/// Brings `len` bytes of `file` from `offset` (a page boundary) into the page cache now, so that
/// a writer's fault there finds its page. A read fault's read-ahead (`MADV_POPULATE_READ` on a
/// mapping of the range, dropped at once) fills the page cache with large folios, as the
/// writer's own fault would have, and a write fault maps a whole folio. `POSIX_FADV_WILLNEED`,
/// the fallback before Linux 5.14, fills it with single pages, which cost the writer a fault
/// each. Only advice: a failure leaves the writer's faults to do it.
pub(super) fn warm(file: &File, offset: u64, len: u64) {
    let Ok(len_bytes) = usize::try_from(len) else {
        return;
    };
    // SAFETY: nothing reads or writes through this mapping: it only has the kernel fault the
    // range in, and MADV_POPULATE_READ reports a page past the end of the file (cut meanwhile)
    // as an error, not as SIGBUS.
    let populated = unsafe { MmapOptions::new().offset(offset).len(len_bytes).map(file) }
        .and_then(|map| map.advise(Advice::PopulateRead));
    if populated.is_ok() {
        return;
    }
    // SAFETY: fadvise on a file descriptor the caller holds open; no pointers.
    let result = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    if result != 0 {
        tracing::debug!(
            error = result,
            "log: could not bring the pages ahead into the page cache"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn new_file(dir: &tempfile::TempDir, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    fn allocated(len: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = new_file(&dir, "segment");
        // SAFETY: a file descriptor this test owns.
        let result =
            unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len as i64) };
        assert_eq!(result, 0);
        (dir, file)
    }

    #[test]
    fn copies_land_in_the_file_and_what_does_not_fit_is_refused() {
        let len = 3 * RELEASE_STEP as u64;
        let (_dir, file) = allocated(len);
        let mut map = SegmentMap::new(&file, len, 0).unwrap();
        let chunk = vec![7u8; 64 << 10];
        let mut offset = 0u64;
        while map.write_at(offset, &chunk) {
            offset += chunk.len() as u64;
        }
        assert_eq!(offset, len, "every chunk that fits is taken");
        assert!(map.released >= 2 * RELEASE_STEP, "pages behind are let go");
        assert!(
            !map.write_at(len - 1, b"ab"),
            "a write past the end is refused"
        );
        assert!(map.write_at(len - 2, b"ab"));
        drop(map);
        let mut back = vec![0u8; 4];
        file.read_exact_at(&mut back, len - 4).unwrap();
        assert_eq!(back, [7, 7, b'a', b'b']);
        let mut early = vec![0u8; 16];
        file.read_exact_at(&mut early, 100).unwrap();
        assert_eq!(early, [7u8; 16], "released pages keep their data");
    }

    #[test]
    fn a_sparse_or_short_file_is_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = new_file(&dir, "sparse");
        sparse.set_len(1 << 20).unwrap();
        assert!(SegmentMap::new(&sparse, 1 << 20, 0).is_none());
        let (_dir, short) = allocated(4096);
        assert!(SegmentMap::new(&short, 8192, 0).is_none());
    }
}
