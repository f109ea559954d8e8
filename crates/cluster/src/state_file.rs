//! Small state that must survive a crash exactly: the vote and the last purged log id.
//!
//! Written whole to a temporary file, fdatasynced, renamed over the old one and the directory
//! synced: a crash leaves the old state or the new one, never a mix. A format byte and a
//! checksum guard the contents.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{LogId, Vote};

const FORMAT: u8 = 1;
/// Longest state file read back (it holds two small ids).
const MAX_LEN: u64 = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub vote: Option<Vote>,
    pub last_purged: Option<LogId>,
    /// The id of the cluster this node's data belongs to (the first leader's first log id,
    /// recorded when the node first accepted an entry): a node refuses a leader of another.
    pub cluster: Option<LogId>,
}

pub struct StateFile {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("raft state file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("raft state file {0} is damaged")]
    Damaged(String),
}

impl StateFile {
    /// Opens the state file in `dir` and reads it (default state when there is none).
    pub fn open(dir: &Path) -> Result<(StateFile, HardState), StateError> {
        let path = dir.join("raft-state");
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let state = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HardState::default(),
            Err(e) => return Err(io(e)),
            Ok(meta) if meta.len() > MAX_LEN => {
                return Err(StateError::Damaged(path.display().to_string()))
            }
            Ok(_) => decode(&std::fs::read(&path).map_err(io)?)
                .ok_or_else(|| StateError::Damaged(path.display().to_string()))?,
        };
        Ok((StateFile { path }, state))
    }

    /// Replaces the state durably.
    pub fn save(&self, state: &HardState) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&encode(state)).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

fn encode(state: &HardState) -> Vec<u8> {
    // Serializing ids and integers into a Vec cannot fail.
    let body = postcard::to_stdvec(state).unwrap_or_default();
    let mut out = vec![FORMAT];
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode(raw: &[u8]) -> Option<HardState> {
    let (&format, rest) = raw.split_first()?;
    if format != FORMAT || rest.len() < 4 {
        return None;
    }
    let (crc, body) = rest.split_at(4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    postcard::from_bytes(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    #[test]
    fn state_survives_a_reopen_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (file, state) = StateFile::open(dir.path()).unwrap();
        assert_eq!(state, HardState::default());
        let state = HardState {
            vote: Some(Vote::new(3, 2)),
            last_purged: Some(LogId::new(CommittedLeaderId::new(3, 2), 40)),
            cluster: None,
        };
        file.save(&state).unwrap();
        let (_, back) = StateFile::open(dir.path()).unwrap();
        assert_eq!(back, state);
        let path = dir.path().join("raft-state");
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(StateFile::open(dir.path()).is_err());
    }
}
