//! The cluster id: 16 random bytes drawn when a cluster is founded and kept in every member's
//! Raft directory (`cluster-id`). Peers exchange it in the cluster port's handshake
//! ([`crate::auth`]), so a node whose data belongs to another cluster is refused before any
//! entry crosses, even when the two clusters' histories match entry for entry.
//!
//! A node with no id yet (an empty data directory, or data written before ids existed) takes
//! the id of the first peer that proves it holds one; once it has an id it keeps it.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rand::RngCore;

/// Bytes of a cluster id.
pub const LEN: usize = 16;
/// Longest `cluster-id` file read back (32 hex digits and a newline).
const MAX_FILE: u64 = 64;

/// A cluster's id. Never all zeros: zeros mean "no id" on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; LEN]);

impl ClusterId {
    /// A fresh random id.
    pub fn random() -> ClusterId {
        loop {
            let mut raw = [0u8; LEN];
            rand::rng().fill_bytes(&mut raw);
            if raw != [0; LEN] {
                return ClusterId(raw);
            }
        }
    }

    /// The id as the wire carries it, zeros for none.
    pub fn to_wire(id: Option<ClusterId>) -> [u8; LEN] {
        id.map_or([0; LEN], |id| id.0)
    }

    pub fn from_wire(raw: [u8; LEN]) -> Option<ClusterId> {
        (raw != [0; LEN]).then_some(ClusterId(raw))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<ClusterId> {
        let text = text.trim();
        if text.len() != 2 * LEN || !text.is_ascii() {
            return None;
        }
        let mut raw = [0u8; LEN];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        ClusterId::from_wire(raw)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cluster id file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster id file {0} is damaged")]
    Damaged(String),
    /// The peer's data belongs to another cluster than this node's.
    #[error("the peer belongs to cluster {theirs}, this node to cluster {ours}")]
    Foreign { ours: ClusterId, theirs: ClusterId },
}

/// This node's cluster id, shared by the node (which draws it when it founds a cluster) and the
/// cluster port (which checks and adopts it).
pub struct Identity {
    path: PathBuf,
    id: Mutex<Option<ClusterId>>,
}

impl Identity {
    /// Reads the id kept in `dir` (none when there is no file yet).
    pub fn open(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join("cluster-id");
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let id = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
            Ok(meta) if meta.len() > MAX_FILE => {
                return Err(IdentityError::Damaged(path.display().to_string()))
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&path).map_err(io)?;
                Some(
                    ClusterId::from_hex(&text)
                        .ok_or_else(|| IdentityError::Damaged(path.display().to_string()))?,
                )
            }
        };
        Ok(Identity {
            path,
            id: Mutex::new(id),
        })
    }

    /// An identity that is never stored (tests, and transports without a handshake).
    pub fn in_memory(id: Option<ClusterId>) -> Identity {
        Identity {
            path: PathBuf::new(),
            id: Mutex::new(id),
        }
    }

    pub fn get(&self) -> Option<ClusterId> {
        *self.id.lock()
    }

    /// The id of the cluster this node founds: the one it has, else a fresh one, stored.
    pub fn draw(&self) -> Result<ClusterId, IdentityError> {
        let mut id = self.id.lock();
        if let Some(id) = *id {
            return Ok(id);
        }
        let drawn = ClusterId::random();
        self.save(drawn)?;
        *id = Some(drawn);
        Ok(drawn)
    }

    /// Checks a peer's id against this node's: refused when both have one and they differ;
    /// taken (and stored) when only the peer has one.
    pub fn admit(&self, theirs: Option<ClusterId>) -> Result<(), IdentityError> {
        let mut id = self.id.lock();
        match (*id, theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                Err(IdentityError::Foreign { ours, theirs })
            }
            (None, Some(theirs)) => {
                self.save(theirs)?;
                *id = Some(theirs);
                tracing::info!(cluster = %theirs, "took the cluster id of a peer");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Writes the id durably: a temporary file, synced, renamed over, the directory synced.
    fn save(&self, id: ClusterId) -> Result<(), IdentityError> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let io = |source| IdentityError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_once_kept_across_a_reopen_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::open(dir.path()).unwrap();
        assert_eq!(identity.get(), None);
        let drawn = identity.draw().unwrap();
        assert_eq!(identity.draw().unwrap(), drawn, "drawn only once");
        let back = Identity::open(dir.path()).unwrap();
        assert_eq!(back.get(), Some(drawn));
        back.admit(None).unwrap();
        back.admit(Some(drawn)).unwrap();
        let other = ClusterId::random();
        assert!(matches!(
            back.admit(Some(other)),
            Err(IdentityError::Foreign { .. })
        ));
        assert_eq!(back.get(), Some(drawn), "a refused id is not taken");
    }

    #[test]
    fn a_node_without_an_id_takes_its_peers_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::open(dir.path()).unwrap();
        let theirs = ClusterId::random();
        identity.admit(Some(theirs)).unwrap();
        assert_eq!(Identity::open(dir.path()).unwrap().get(), Some(theirs));
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cluster-id"),
            "not hex at all, not even close\n",
        )
        .unwrap();
        assert!(matches!(
            Identity::open(dir.path()),
            Err(IdentityError::Damaged(_))
        ));
        std::fs::write(dir.path().join("cluster-id"), "0".repeat(32)).unwrap();
        assert!(Identity::open(dir.path()).is_err(), "zeros are not an id");
    }
}
