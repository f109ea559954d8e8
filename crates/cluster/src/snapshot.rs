//! The snapshot file: the engine's contents, streamed out of the store item by item and back.
//!
//! ```text
//! "PKVSNAP" 0x01 | frame* | End frame
//! frame = [body length: u32 LE][crc32c of body: u32 LE][body: postcard(Item)]
//! ```
//!
//! Every length is checked against the limit before anything is allocated; a file without its
//! End frame (cut short) is refused. The snapshot's metadata (last log id, membership) lives in
//! a small `.meta` file beside it, written once the data is complete and synced, so the newest
//! `.meta` always names a whole snapshot.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use polykv_engine::{Exported, KeyspaceId};
use serde::{Deserialize, Serialize};

use crate::SnapshotMeta;

const MAGIC: &[u8; 8] = b"PKVSNAP\x01";
/// Longest frame body: the longest log record plus room for the item's own fields.
pub const MAX_FRAME: usize = polykv_engine::log::MAX_PAYLOAD + 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Item {
    Keyspace {
        id: KeyspaceId,
        name: String,
        version: u64,
    },
    Entry {
        ks: KeyspaceId,
        key: Bytes,
        raw: Bytes,
    },
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot {path} is damaged: {why}")]
    Damaged { path: String, why: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a snapshot file item by item.
pub struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer, SnapshotError> {
        let file = File::create(path).map_err(io(path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io(path))?;
        Ok(Writer {
            out,
            path: path.to_path_buf(),
        })
    }

    pub fn item(&mut self, exported: Exported) -> Result<(), SnapshotError> {
        let item = match exported {
            Exported::Keyspace { id, name, version } => Item::Keyspace { id, name, version },
            Exported::Entry { ks, key, raw } => Item::Entry { ks, key, raw },
        };
        self.frame(&item)
    }

    fn frame(&mut self, item: &Item) -> Result<(), SnapshotError> {
        // Serializing plain data into a Vec cannot fail.
        let body = postcard::to_stdvec(item).unwrap_or_default();
        let path = self.path.clone();
        self.out
            .write_all(&(body.len() as u32).to_le_bytes())
            .and_then(|()| self.out.write_all(&crc32c::crc32c(&body).to_le_bytes()))
            .and_then(|()| self.out.write_all(&body))
            .map_err(io(&path))
    }

    /// Writes the End frame and syncs the file.
    pub fn finish(mut self) -> Result<(), SnapshotError> {
        self.frame(&Item::End)?;
        let path = self.path.clone();
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&path)(e.into_error()))?;
        file.sync_all().map_err(io(&path))
    }
}

/// Reads a snapshot file item by item.
pub struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    ended: bool,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, SnapshotError> {
        let file = File::open(path).map_err(io(path))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(io(path))?;
        let mut reader = Reader {
            input,
            path: path.to_path_buf(),
            ended: false,
        };
        if &magic != MAGIC {
            return Err(reader.damaged("not a polykv snapshot"));
        }
        reader.ended = false;
        Ok(reader)
    }

    fn damaged(&self, why: &str) -> SnapshotError {
        SnapshotError::Damaged {
            path: self.path.display().to_string(),
            why: why.into(),
        }
    }

    /// The next item, or None after the End frame.
    pub fn next_item(&mut self) -> Result<Option<Exported>, SnapshotError> {
        if self.ended {
            return Ok(None);
        }
        let mut header = [0u8; 8];
        if self.input.read_exact(&mut header).is_err() {
            return Err(self.damaged("ends before its End frame"));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_FRAME {
            return Err(self.damaged("frame longer than the limit"));
        }
        let mut body = vec![0u8; len];
        if self.input.read_exact(&mut body).is_err() {
            return Err(self.damaged("ends inside a frame"));
        }
        if crc32c::crc32c(&body) != crc {
            return Err(self.damaged("checksum mismatch"));
        }
        let item: Item = postcard::from_bytes(&body).map_err(|e| self.damaged(&e.to_string()))?;
        Ok(match item {
            Item::Keyspace { id, name, version } => Some(Exported::Keyspace { id, name, version }),
            Item::Entry { ks, key, raw } => Some(Exported::Entry { ks, key, raw }),
            Item::End => {
                self.ended = true;
                None
            }
        })
    }
}

/// Writes `meta` durably as `<dir>/<id>.meta` (temporary file, sync, rename, directory sync).
pub fn save_meta(dir: &Path, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
    let path = meta_path(dir, &meta.snapshot_id);
    let tmp = path.with_extension("meta-tmp");
    // Serializing plain data into a Vec cannot fail.
    let body = postcard::to_stdvec(meta).unwrap_or_default();
    let mut raw = crc32c::crc32c(&body).to_le_bytes().to_vec();
    raw.extend_from_slice(&body);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&raw)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

pub fn data_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.snap"))
}

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.meta"))
}

/// The newest whole snapshot in `dir` (its `.meta` and its data file), and removes every older
/// one and every leftover of an unfinished one.
pub fn newest(dir: &Path) -> Result<Option<SnapshotMeta>, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut metas = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("meta") {
            continue;
        }
        let raw = std::fs::read(&path).map_err(io(&path))?;
        let meta = raw
            .get(4..)
            .filter(|body| raw.len() < 1 << 20 && crc32c::crc32c(body).to_le_bytes() == raw[..4])
            .and_then(|body| postcard::from_bytes::<SnapshotMeta>(body).ok());
        match meta {
            Some(meta) if data_path(dir, &meta.snapshot_id).exists() => metas.push(meta),
            _ => tracing::warn!(file = %path.display(), "ignoring a damaged snapshot meta file"),
        }
    }
    metas.sort_by_key(|m| m.last_log_id);
    let newest = metas.pop();
    remove_files(dir, newest.as_ref().map(|m| m.snapshot_id.as_str()), true)?;
    Ok(newest)
}

/// Removes every snapshot in `dir` except snapshot `keep`.
pub fn remove_all_but(dir: &Path, keep: Option<&str>) -> Result<(), SnapshotError> {
    remove_files(dir, keep, false)
}

/// Removes the files of every snapshot but `keep`, and with `leftovers` the temporary files
/// of snapshots being built or received (only at start: later they may be in use).
fn remove_files(dir: &Path, keep: Option<&str>, leftovers: bool) -> Result<(), SnapshotError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let ext = path
            .extension()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let doomed = match ext {
            "snap" | "meta" => Some(stem) != keep,
            _ => leftovers,
        };
        if doomed {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_a_cut_or_flipped_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let items = vec![
            Exported::Keyspace {
                id: 0,
                name: "a".into(),
                version: 7,
            },
            Exported::Entry {
                ks: 0,
                key: "k".into(),
                raw: "raw entry".into(),
            },
        ];
        let mut writer = Writer::create(&path).unwrap();
        for item in items.clone() {
            writer.item(item).unwrap();
        }
        writer.finish().unwrap();
        let mut reader = Reader::open(&path).unwrap();
        let mut back = Vec::new();
        while let Some(item) = reader.next_item().unwrap() {
            back.push(item);
        }
        assert_eq!(back, items);
        let full = std::fs::read(&path).unwrap();
        for cut in 8..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let mut reader = Reader::open(&path).unwrap();
            let result = (0..4).try_for_each(|_| reader.next_item().map(|_| ()));
            assert!(result.is_err(), "cut at {cut}");
        }
        let mut flipped = full.clone();
        flipped[20] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let mut reader = Reader::open(&path).unwrap();
        assert!((0..4)
            .try_for_each(|_| reader.next_item().map(|_| ()))
            .is_err());
        let mut huge = full;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(Reader::open(&path).unwrap().next_item().is_err());
    }
}
