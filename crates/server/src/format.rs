//! The data directory's format version, kept in `<data dir>/FORMAT`.
//!
//! Why a file of its own: it is read before anything else in the directory is opened, so a
//! binary that cannot read the data refuses to start without touching it (a downgrade past a
//! format change must fail cleanly, not half-open the store). A newer binary reads every older
//! format and records its own once it has the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The format this binary writes. The test-only `format-next` feature bumps it, so the
/// downgrade path (an older binary meeting newer data) can be tested with two builds.
#[cfg(not(feature = "format-next"))]
pub const DATA_FORMAT: u32 = 1;
#[cfg(feature = "format-next")]
pub const DATA_FORMAT: u32 = 2;

/// The oldest format this binary reads (a directory without the file is format 1: it was
/// written before the file existed).
pub const OLDEST_READABLE: u32 = 1;

const FILE: &str = "FORMAT";
const PREFIX: &str = "polykv data format ";
/// The file is one short line; anything longer is not ours.
const MAX_FILE_BYTES: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "data directory {path} has data format {found}, newer than this binary reads \
         (formats {OLDEST_READABLE}..={DATA_FORMAT}): it needs a polykv that reads data format \
         {found}; nothing was modified"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error(
        "data directory {path} has data format {found}, older than this binary reads \
         (formats {OLDEST_READABLE}..={DATA_FORMAT}); nothing was modified"
    )]
    TooOld { path: PathBuf, found: u32 },
    #[error("unreadable format file {path}: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error("cannot write the format file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The format recorded in `dir`: `None` for a directory (or a missing one) without the file.
pub fn read(dir: &Path) -> Result<Option<u32>, FormatError> {
    let path = dir.join(FILE);
    let unreadable = |why: String| FormatError::Unreadable {
        path: path.clone(),
        why,
    };
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "{} bytes, expected one line",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
    let number = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| unreadable(format!("expected \"{PREFIX}<n>\"")))?;
    number
        .parse()
        .map(Some)
        .map_err(|_| unreadable(format!("bad version {number:?}")))
}

/// Refuses a directory this binary cannot read, before anything in it is touched.
pub fn check(dir: &Path) -> Result<(), FormatError> {
    match read(dir)? {
        Some(found) if found > DATA_FORMAT => Err(FormatError::TooNew {
            path: dir.to_path_buf(),
            found,
        }),
        Some(found) if found < OLDEST_READABLE => Err(FormatError::TooOld {
            path: dir.to_path_buf(),
            found,
        }),
        _ => Ok(()),
    }
}

/// Records this binary's format (once the directory is ours and the store opened): written to
/// a temporary file and renamed, so a crash leaves the old line or the new one.
pub fn record(dir: &Path) -> Result<(), FormatError> {
    if read(dir).ok().flatten() == Some(DATA_FORMAT) {
        return Ok(());
    }
    let path = dir.join(FILE);
    let write = |source| FormatError::Write {
        path: path.clone(),
        source,
    };
    let staging = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&staging).map_err(write)?;
    writeln!(file, "{PREFIX}{DATA_FORMAT}").map_err(write)?;
    file.sync_all().map_err(write)?;
    std::fs::rename(&staging, &path).map_err(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_older_directories_are_accepted_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        check(dir.path()).unwrap();
        record(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(DATA_FORMAT));
        std::fs::write(
            dir.path().join(FILE),
            format!("{PREFIX}{OLDEST_READABLE}\n"),
        )
        .unwrap();
        check(dir.path()).unwrap();
        record(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(DATA_FORMAT));
    }

    #[test]
    fn a_newer_format_is_refused_naming_it_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let newer = format!("{PREFIX}{}\n", DATA_FORMAT + 1);
        std::fs::write(dir.path().join(FILE), &newer).unwrap();
        let err = check(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("data format {}", DATA_FORMAT + 1)),
            "{message}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            newer
        );
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["hello\n", "polykv data format x\n", &"9".repeat(100)] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            assert!(check(dir.path()).is_err(), "{bad:?}");
        }
    }
}
