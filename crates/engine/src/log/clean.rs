//! The clean-close mark: `<dir>/CLEAN` holds where the log ended when it was closed cleanly
//! (the newest segment's first sequence and its used length). Opening reads only that much of
//! the newest segment instead of all of its preallocated size: a hot upgrade reopens the store
//! at once, and reading 64 MiB of zeros was most of its pause.
//!
//! The mark is removed (and the removal made durable) when the log is opened, before anything
//! is written, so a crash later can never make a stale mark hide records. Writing it needs no
//! sync: a mark lost or left empty by a power failure only means the next open reads the whole
//! segment, as after a crash.

use std::io::Write;
use std::path::Path;

use super::{io_error, sync_dir};
use crate::error::StoreError;

const FILE: &str = "CLEAN";
/// Two numbers on one line.
const MAX_BYTES: u64 = 64;

/// Where the log ended at a clean close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub first_seq: u64,
    pub len: u64,
}

/// Records a clean close (after the last sync of the log).
pub(super) fn write(dir: &Path, mark: Mark) -> Result<(), StoreError> {
    let path = dir.join(FILE);
    let staging = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&staging).map_err(|e| io_error("create", &staging, e))?;
    writeln!(file, "{} {}", mark.first_seq, mark.len)
        .map_err(|e| io_error("write", &staging, e))?;
    std::fs::rename(&staging, &path).map_err(|e| io_error("rename", &path, e))
}

/// Takes the mark: returns it if it is there and well-formed, and removes it for good. A
/// malformed mark is ignored (the log is then read in full, as after a crash).
pub(super) fn take(dir: &Path) -> Result<Option<Mark>, StoreError> {
    let path = dir.join(FILE);
    let mark = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() <= MAX_BYTES => std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse(&text)),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
    sync_dir(dir)?;
    Ok(mark)
}

/// Whether a well-formed mark is there (without taking it).
pub(super) fn is_marked(dir: &Path) -> bool {
    let path = dir.join(FILE);
    std::fs::metadata(&path).is_ok_and(|meta| meta.len() <= MAX_BYTES)
        && std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| parse(&text))
            .is_some()
}

fn parse(text: &str) -> Option<Mark> {
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    let mark = Mark {
        first_seq: numbers.next()?.ok()?,
        len: numbers.next()?.ok()?,
    };
    numbers.next().is_none().then_some(mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()).unwrap(), None);
        let mark = Mark {
            first_seq: 7,
            len: 4096,
        };
        write(dir.path(), mark).unwrap();
        assert_eq!(take(dir.path()).unwrap(), Some(mark));
        assert_eq!(take(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FILE), "7 x\n").unwrap();
        assert_eq!(take(dir.path()).unwrap(), None, "malformed: ignored");
        assert!(!dir.path().join(FILE).exists());
    }
}
