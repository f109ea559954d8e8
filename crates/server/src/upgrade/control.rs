//! How `polykv upgrade` asks the running server for an upgrade and learns the result: a request
//! file in the data directory, SIGUSR2 to the pid in the lock file, and a status file the server
//! writes when the upgrade has committed or rolled back. Files, not the admin API: the admin
//! listener itself is handed over during the upgrade, and the data directory is where the
//! operator already points both processes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const REQUEST_FILE: &str = "upgrade.request";
pub const STATUS_FILE: &str = "upgrade.status";
/// Both files are one small JSON object.
const MAX_FILE_BYTES: u64 = 8192;

/// What `polykv upgrade` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Matches the status to the request.
    pub id: String,
    /// The binary to start; the running one's path if absent.
    pub binary: Option<PathBuf>,
}

/// How the last upgrade ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub id: Option<String>,
    pub ok: bool,
    pub message: String,
    /// The pid serving afterwards.
    pub pid: u32,
}

/// Reads a small JSON file owned by this user; anything else is ignored (and logged).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: getuid cannot fail.
    let ours = unsafe { libc::getuid() };
    if meta.uid() != ours || meta.len() > MAX_FILE_BYTES {
        tracing::warn!(file = %path.display(), "ignored: not ours or too large");
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .map_err(|e| tracing::warn!(file = %path.display(), error = %e, "ignored: unreadable"))
        .ok()
}

/// Takes the pending request (removing it), if there is one.
pub fn take_request(dir: &Path) -> Option<Request> {
    let path = dir.join(REQUEST_FILE);
    let request = read_json(&path);
    let _ = std::fs::remove_file(&path);
    request
}

pub fn read_status(dir: &Path) -> Option<Status> {
    read_json(&dir.join(STATUS_FILE))
}

/// Writes a small JSON file mode 0600, atomically (written aside and renamed).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let staging = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)?;
    file.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    drop(file);
    std::fs::rename(&staging, dir.join(name))
}

pub fn write_status(dir: &Path, status: &Status) {
    if let Err(e) = write_json(dir, STATUS_FILE, status) {
        tracing::error!(error = %e, "cannot write the upgrade status file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_taken_once_and_status_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take_request(dir.path()), None);
        let request = Request {
            id: "a".into(),
            binary: Some("/bin/x".into()),
        };
        write_json(dir.path(), REQUEST_FILE, &request).unwrap();
        assert_eq!(take_request(dir.path()), Some(request));
        assert_eq!(take_request(dir.path()), None);
        std::fs::write(dir.path().join(REQUEST_FILE), "{not json").unwrap();
        assert_eq!(take_request(dir.path()), None);
        let status = Status {
            id: Some("a".into()),
            ok: false,
            message: "why".into(),
            pid: 7,
        };
        write_status(dir.path(), &status);
        assert_eq!(read_status(dir.path()), Some(status));
    }
}
