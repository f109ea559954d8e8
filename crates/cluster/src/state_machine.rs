//! openraft's state machine: the engine's one `apply`.
//!
//! Each committed entry is applied with [`Engine::apply_committed`], which writes the entry's
//! log id and the membership (the *marker*) in the same atomic batch as the effects: after a
//! crash the engine and its applied position always agree.
//!
//! Snapshots are built from the engine at one point in time (applies wait while it is dumped
//! to a file, which is what a single group at this stage can afford) and sent in chunks by
//! openraft; a received one replaces the engine's contents ([`Engine::import`]). A crash during
//! an import leaves the `installing` marker, and the import is redone from the snapshot file
//! at the next start.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use polykv_engine::{Engine, Proposal, INSTALLING};
use serde::{Deserialize, Serialize};

use crate::snapshot::{self, Reader, Writer};
use crate::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const MARKER_FORMAT: u8 = 1;

/// The position the engine holds: the last entry applied whole, and, while an entry's
/// proposals are being applied one engine batch at a time, that entry and how many of its
/// proposals are done (a restart in the middle applies only the rest).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Marker {
    applied: Option<LogId>,
    membership: StoredMembership,
    partial: Option<(LogId, u32)>,
}

impl Marker {
    fn encode(&self) -> Bytes {
        let mut out = vec![MARKER_FORMAT];
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        Bytes::from(out)
    }

    fn decode(raw: &[u8]) -> Option<Marker> {
        match raw.split_first() {
            Some((&MARKER_FORMAT, body)) => postcard::from_bytes(body).ok(),
            _ => None,
        }
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// The state machine (and, cloned, its snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    engine: Engine,
    dir: PathBuf,
    marker: Marker,
    /// The newest snapshot, shared with the builders (they run beside applies).
    current: Arc<parking_lot::Mutex<Option<SnapshotMeta>>>,
    receiving: Option<PathBuf>,
    /// Last applied index, shared with the node for read barriers and status.
    applied_index: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
}

/// Replaces the engine's contents with a snapshot file and records its position.
fn import(engine: &Engine, dir: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let mut reader =
        Reader::open(&snapshot::data_path(dir, &meta.snapshot_id)).map_err(snap_err)?;
    let marker = Marker {
        applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        partial: None,
    };
    engine
        .import(
            || {
                reader.next_item().map_err(|e| {
                    polykv_engine::StoreError::Corrupt(format!("snapshot: {e}")).into()
                })
            },
            marker.encode(),
        )
        .map_err(sm_err)
}

impl StateMachine {
    /// The state machine over `engine`, with snapshots in `dir`. Redoes an import a crash cut
    /// short.
    pub fn open(
        engine: Engine,
        dir: &Path,
        applied_index: Arc<AtomicU64>,
    ) -> Result<StateMachine, StorageError> {
        engine.enable_replication();
        let current = snapshot::newest(dir).map_err(snap_err)?;
        let raw = engine.committed_marker().map_err(sm_err)?;
        let marker = match raw.as_deref() {
            None => Marker::default(),
            Some(INSTALLING) => {
                let Some(meta) = &current else {
                    return Err(sm_err(Message(
                        "a snapshot import was cut short and its snapshot file is gone".into(),
                    )));
                };
                tracing::warn!(snapshot = %meta.snapshot_id, "redoing a snapshot import cut short");
                import(&engine, dir, meta)?;
                Marker {
                    applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    partial: None,
                }
            }
            Some(raw) => Marker::decode(raw)
                .ok_or_else(|| sm_err(Message("the applied position is unreadable".into())))?,
        };
        applied_index.store(
            marker.applied.map_or(0, |id| id.index + 1),
            Ordering::SeqCst,
        );
        Ok(StateMachine {
            engine,
            dir: dir.to_path_buf(),
            marker,
            current: Arc::new(parking_lot::Mutex::new(current)),
            receiving: None,
            applied_index,
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    fn publish_applied(&self) {
        self.applied_index.store(
            self.marker.applied.map_or(0, |id| id.index + 1),
            Ordering::SeqCst,
        );
    }

    async fn open_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let path = snapshot::data_path(&self.dir, &meta.snapshot_id);
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(file),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // The dump holds the engine's writer lock: one point in time.
        let meta = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, StorageError> {
            let tmp = dir.join(format!("building-{n}.tmp"));
            let mut writer = Writer::create(&tmp).map_err(snap_err)?;
            let mut failed = None;
            let raw = engine
                .export(|item| {
                    writer.item(item).map_err(|e| {
                        failed = Some(e.to_string());
                        polykv_engine::Error::ShuttingDown
                    })
                })
                .map_err(|e| snap_err(Message(failed.clone().unwrap_or(e.to_string()))))?;
            writer.finish().map_err(snap_err)?;
            // Everything the snapshot holds is on disk before the log behind it is purged.
            let marker = raw.as_deref().and_then(Marker::decode).unwrap_or_default();
            let id = format!(
                "{}-{}-{n}",
                marker.applied.map_or(0, |l| l.leader_id.term),
                marker.applied.map_or(0, |l| l.index),
            );
            std::fs::rename(&tmp, snapshot::data_path(&dir, &id)).map_err(snap_err)?;
            let meta = SnapshotMeta {
                last_log_id: marker.applied,
                last_membership: marker.membership,
                snapshot_id: id,
            };
            snapshot::save_meta(&dir, &meta).map_err(snap_err)?;
            snapshot::remove_all_but(&dir, Some(&meta.snapshot_id)).map_err(snap_err)?;
            Ok(meta)
        })
        .await
        .map_err(snap_err)??;
        *self.current.lock() = Some(meta.clone());
        self.open_snapshot(&meta).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.marker.applied, self.marker.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let proposals: Vec<Proposal> = match entry.payload {
                EntryPayload::Normal(request) => request.proposals,
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(membership) => {
                    self.marker.membership = StoredMembership::new(Some(log_id), membership);
                    Vec::new()
                }
            };
            // Proposals of this entry applied before a restart are not applied again.
            let done = match self.marker.partial {
                Some((partial, done)) if partial == log_id => done as usize,
                _ => 0,
            };
            let count = proposals.len();
            let mut outcomes = Vec::with_capacity(count);
            if count == 0 {
                self.marker.applied = Some(log_id);
                self.marker.partial = None;
                self.engine
                    .apply_committed(None, self.marker.encode())
                    .map_err(|e| StorageIOError::apply(log_id, &e))?;
            }
            for (i, proposal) in proposals.into_iter().enumerate() {
                if i < done {
                    outcomes.push(None);
                    continue;
                }
                if i + 1 == count {
                    self.marker.applied = Some(log_id);
                    self.marker.partial = None;
                } else {
                    self.marker.partial = Some((log_id, i as u32 + 1));
                }
                let outcome = self
                    .engine
                    .apply_committed(Some(proposal), self.marker.encode())
                    .map_err(|e| StorageIOError::apply(log_id, &e))?;
                outcomes.push(outcome);
            }
            out.push(Response { outcomes });
        }
        self.publish_applied();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("receiving-{n}.tmp"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let Some(received) = self.receiving.take() else {
            return Err(snap_err(Message("no snapshot was being received".into())));
        };
        let mut file = snapshot.into_std().await;
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            file.seek(SeekFrom::Start(0)).map_err(snap_err)?;
            file.sync_all().map_err(snap_err)?;
            drop(file);
            std::fs::rename(
                &received,
                snapshot::data_path(&dir, &meta_owned.snapshot_id),
            )
            .map_err(snap_err)?;
            snapshot::save_meta(&dir, &meta_owned).map_err(snap_err)?;
            import(&engine, &dir, &meta_owned)?;
            snapshot::remove_all_but(&dir, Some(&meta_owned.snapshot_id)).map_err(snap_err)
        })
        .await
        .map_err(snap_err)??;
        self.marker = Marker {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            partial: None,
        };
        *self.current.lock() = Some(meta.clone());
        self.publish_applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock().clone();
        match current {
            Some(meta) => Ok(Some(self.open_snapshot(&meta).await?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry as RaftEntry};
    use polykv_engine::{Command, EngineConfig, Outcome, Value};

    use super::*;
    use crate::Request;

    fn put(value: i64) -> Proposal {
        Proposal {
            at_ms: 1,
            command: Command::put(0, "k", Value::I64(value)),
        }
    }

    #[tokio::test]
    async fn an_entry_cut_short_by_a_crash_applies_only_its_remaining_proposals() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_dir(&dir.path().join("e"), EngineConfig::default()).unwrap();
        engine.enable_replication();
        let create = Proposal {
            at_ms: 1,
            command: Command::CreateKeyspace { name: "t".into() },
        };
        let first = LogId::new(CommittedLeaderId::new(1, 1), 1);
        let whole = Marker {
            applied: Some(first),
            ..Marker::default()
        };
        engine
            .apply_committed(Some(create), whole.encode())
            .unwrap();
        // Entry 2 holds three puts; the crash came after the first was applied.
        let second = LogId::new(CommittedLeaderId::new(1, 1), 2);
        let cut = Marker {
            applied: Some(first),
            partial: Some((second, 1)),
            ..Marker::default()
        };
        engine.apply_committed(Some(put(1)), cut.encode()).unwrap();

        let applied = Arc::new(AtomicU64::new(0));
        let mut sm = StateMachine::open(engine.clone(), &dir.path().join("s"), applied).unwrap();
        let (reported, _) = sm.applied_state().await.unwrap();
        assert_eq!(
            reported,
            Some(first),
            "the cut entry is not reported applied"
        );
        let entry = RaftEntry::<TypeConfig> {
            log_id: second,
            payload: EntryPayload::Normal(Request {
                proposals: vec![put(1), put(2), put(3)],
                sync: true,
            }),
        };
        let responses = sm.apply(vec![entry]).await.unwrap();
        assert_eq!(
            responses[0].outcomes,
            vec![
                None,
                Some(Outcome::Written { version: 2 }),
                Some(Outcome::Written { version: 3 })
            ],
            "the first put is not applied twice"
        );
        let (reported, _) = sm.applied_state().await.unwrap();
        assert_eq!(reported, Some(second));
    }
}
