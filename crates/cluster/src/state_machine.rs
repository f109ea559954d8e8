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
use std::time::Instant;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use polykv_engine::cache::PREFETCH_MAX;
use polykv_engine::{Engine, Proposal, INSTALLING};
use serde::{Deserialize, Serialize};

use crate::snapshot::{self, Reader, Writer};
use crate::timing::{self, Hop};
use crate::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The clock was added as the last field without a new format: postcard writes a struct's
/// fields one after the other, so a binary from before it reads a marker with the clock as
/// one without (the clock, trailing, is ignored), and this one reads an older marker with a
/// clock of 0.
const MARKER_FORMAT: u8 = 1;

/// The position the engine holds: the last entry applied whole, and, while an entry's
/// proposals are being applied one engine batch at a time, that entry and how many of its
/// proposals are done (a restart in the middle applies only the rest).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Marker {
    applied: Option<LogId>,
    membership: StoredMembership,
    partial: Option<(LogId, u32)>,
    /// The replicated clock: the latest time (ms) an applied proposal carried. Every proposal
    /// is applied at no earlier time than this, and the engine's expiry reaper is held at it,
    /// so an entry with a TTL is alive or expired for a proposal alike on every node.
    clock: u64,
}

/// The encoding of the membership last written in a marker.
#[derive(Clone, Default)]
struct MembershipEncoding {
    membership: Option<StoredMembership>,
    bytes: Vec<u8>,
}

/// A marker as written before the clock.
#[derive(Serialize, Deserialize)]
struct MarkerWithoutClock {
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

    /// The same bytes as [`Marker::encode`], with the membership's encoding taken from
    /// `cache` (made again only when the membership changed). A marker is written with every
    /// applied proposal, and encoding the membership (every member's address) each time was
    /// about 6 % of a follower's CPU. postcard writes a struct as its fields one after the
    /// other, so the fields may be encoded apart.
    fn encode_cached(&self, cache: &mut MembershipEncoding) -> Bytes {
        if cache.membership.as_ref() != Some(&self.membership) {
            cache.bytes = postcard::to_stdvec(&self.membership).unwrap_or_default();
            cache.membership = Some(self.membership.clone());
        }
        let mut out = Vec::with_capacity(cache.bytes.len() + 48);
        out.push(MARKER_FORMAT);
        // Serializing plain data into a Vec cannot fail.
        out = postcard::to_extend(&self.applied, out).unwrap_or_default();
        out.extend_from_slice(&cache.bytes);
        out = postcard::to_extend(&self.partial, out).unwrap_or_default();
        out = postcard::to_extend(&self.clock, out).unwrap_or_default();
        Bytes::from(out)
    }

    fn decode(raw: &[u8]) -> Option<Marker> {
        match raw.split_first() {
            Some((&MARKER_FORMAT, body)) => postcard::from_bytes(body).ok().or_else(|| {
                let old: MarkerWithoutClock = postcard::from_bytes(body).ok()?;
                Some(Marker {
                    applied: old.applied,
                    membership: old.membership,
                    partial: old.partial,
                    clock: 0,
                })
            }),
            _ => None,
        }
    }
}

/// A snapshot's id: `{term}-{index}-{n}-{clock}`, the replicated clock last, so that a node
/// that installs it takes the clock with the data (ids without it give a clock of 0).
fn snapshot_id(applied: Option<LogId>, n: u64, clock: u64) -> String {
    format!(
        "{}-{}-{n}-{clock}",
        applied.map_or(0, |l| l.leader_id.term),
        applied.map_or(0, |l| l.index),
    )
}

fn clock_of_snapshot(id: &str) -> u64 {
    let parts: Vec<&str> = id.split('-').collect();
    match parts.as_slice() {
        [_, _, _, clock] => clock.parse().unwrap_or(0),
        _ => 0,
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
    membership_encoding: MembershipEncoding,
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
        clock: clock_of_snapshot(&meta.snapshot_id),
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
                    clock: clock_of_snapshot(&meta.snapshot_id),
                }
            }
            Some(raw) => Marker::decode(raw)
                .ok_or_else(|| sm_err(Message("the applied position is unreadable".into())))?,
        };
        applied_index.store(
            marker.applied.map_or(0, |id| id.index + 1),
            Ordering::SeqCst,
        );
        engine.hold_reaper_at(marker.clock);
        Ok(StateMachine {
            engine,
            dir: dir.to_path_buf(),
            marker,
            membership_encoding: MembershipEncoding::default(),
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
        self.engine.hold_reaper_at(self.marker.clock);
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
            let id = snapshot_id(marker.applied, n, marker.clock);
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
        let since = Instant::now();
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
                    .apply_committed(
                        None,
                        self.marker.encode_cached(&mut self.membership_encoding),
                    )
                    .map_err(|e| StorageIOError::apply(log_id, &e))?;
            }
            let mut remaining = proposals.into_iter();
            for i in 0..count {
                // The memory the next proposals touch is loaded at once, so that their cache
                // misses overlap (as a pipelined batch's do on the request path).
                if i >= done && (i - done) % PREFETCH_MAX == 0 {
                    self.engine.prefetch_proposals(remaining.as_slice());
                }
                let Some(mut proposal) = remaining.next() else {
                    break;
                };
                if i < done {
                    outcomes.push(None);
                    continue;
                }
                // Proposals carry the clock of the node that took them: applied at no earlier
                // time than any before them, the same on every node.
                proposal.at_ms = proposal.at_ms.max(self.marker.clock);
                self.marker.clock = proposal.at_ms;
                if i + 1 == count {
                    self.marker.applied = Some(log_id);
                    self.marker.partial = None;
                } else {
                    self.marker.partial = Some((log_id, i as u32 + 1));
                }
                let outcome = self
                    .engine
                    .apply_committed(
                        Some(proposal),
                        self.marker.encode_cached(&mut self.membership_encoding),
                    )
                    .map_err(|e| StorageIOError::apply(log_id, &e))?;
                outcomes.push(outcome);
            }
            out.push(Response { outcomes });
        }
        self.publish_applied();
        timing::record(Hop::Apply, since);
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
            clock: clock_of_snapshot(&meta.snapshot_id),
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
    use polykv_engine::clock::ManualClock;
    use polykv_engine::{Command, EngineConfig, Outcome, Value};

    use super::*;
    use crate::Request;

    fn put(value: i64) -> Proposal {
        Proposal {
            at_ms: 1,
            command: Command::put(0, "k", Value::I64(value)),
        }
    }

    #[test]
    fn a_marker_encoded_with_the_cached_membership_is_the_same_bytes() {
        let members = |ids: &[u64]| {
            let nodes: std::collections::BTreeMap<u64, crate::Member> = ids
                .iter()
                .map(|id| {
                    let addr = format!("127.0.0.{id}:7000");
                    (*id, crate::Member { addr })
                })
                .collect();
            let config = vec![ids.iter().copied().collect()];
            let membership = openraft::Membership::new(config, nodes);
            let at = LogId::new(CommittedLeaderId::new(1, 1), ids.len() as u64);
            StoredMembership::new(Some(at), membership)
        };
        let mut cache = MembershipEncoding::default();
        let mut marker = Marker::default();
        assert_eq!(marker.encode_cached(&mut cache), marker.encode());
        marker.membership = members(&[1, 2, 3]);
        marker.applied = Some(LogId::new(CommittedLeaderId::new(2, 1), 70_000));
        marker.partial = Some((LogId::new(CommittedLeaderId::new(2, 1), 70_001), 3));
        marker.clock = 1_764_547_200_000;
        assert_eq!(marker.encode_cached(&mut cache), marker.encode());
        // A membership change is seen: the cache is not written stale.
        marker.membership = members(&[1, 2]);
        marker.partial = None;
        let encoded = marker.encode_cached(&mut cache);
        assert_eq!(encoded, marker.encode());
        let decoded = Marker::decode(&encoded).expect("decodes");
        assert_eq!(decoded.membership, members(&[1, 2]));
        assert_eq!(decoded.clock, 1_764_547_200_000);
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

    /// Each node's expiry reaper runs on its own clock. A node whose clock runs ahead must not
    /// delete an entry that a later proposal still sees alive, or a conditional write on it
    /// comes out differently there.
    #[tokio::test]
    async fn a_conditional_write_on_a_key_with_a_ttl_is_the_same_on_a_node_whose_clock_runs_ahead()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            reaper_interval: std::time::Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        let mut nodes = Vec::new();
        for (name, now) in [("behind", 1_000), ("ahead", 100_000)] {
            let store = Arc::new(polykv_engine::store::MemoryStore::new());
            let clock = Arc::new(ManualClock::new(now));
            let engine = Engine::open(store, config.clone(), clock).unwrap();
            let applied = Arc::new(AtomicU64::new(0));
            let sm = StateMachine::open(engine.clone(), &dir.path().join(name), applied).unwrap();
            nodes.push((engine, sm));
        }
        let entry = |index: u64, at_ms: u64, command: Command| RaftEntry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                proposals: vec![Proposal { at_ms, command }],
                sync: true,
            }),
        };
        let with_ttl = Command::Put {
            ks: 0,
            key: "k".into(),
            value: Value::I64(1),
            expires_at: Some(5_000),
            owner: None,
            label: None,
            condition: polykv_engine::Condition::Always,
        };
        let only_if_version_1 = Command::Put {
            ks: 0,
            key: "k".into(),
            value: Value::I64(2),
            expires_at: None,
            owner: None,
            label: None,
            condition: polykv_engine::Condition::VersionIs(1),
        };
        let mut outcomes = Vec::new();
        for (engine, sm) in &mut nodes {
            let create = Command::CreateKeyspace { name: "t".into() };
            sm.apply(vec![entry(1, 1_000, create)]).await.unwrap();
            sm.apply(vec![entry(2, 1_000, with_ttl.clone())])
                .await
                .unwrap();
            // The reaper passes between the two entries, each node on its own clock.
            engine.reap_expired().unwrap();
            // Taken by a node whose clock said 4 000: the entry is alive until 5 000.
            let conditional = entry(3, 4_000, only_if_version_1.clone());
            outcomes.push(sm.apply(vec![conditional]).await.unwrap());
        }
        assert_eq!(
            outcomes[0][0].outcomes,
            vec![Some(Outcome::Written { version: 2 })]
        );
        assert_eq!(outcomes[0], outcomes[1], "the nodes disagree");
        for (engine, _) in &nodes {
            let got = engine.get(0, b"k").unwrap().unwrap().entry;
            assert_eq!(got.value, Value::I64(2));
        }
    }

    #[test]
    fn a_marker_written_before_the_clock_reads_with_a_clock_of_0_and_an_older_binary_reads_a_new_one(
    ) {
        let applied = Some(LogId::new(CommittedLeaderId::new(2, 1), 9));
        let old = MarkerWithoutClock {
            applied,
            membership: StoredMembership::default(),
            partial: None,
        };
        let mut raw = vec![MARKER_FORMAT];
        raw.extend(postcard::to_stdvec(&old).unwrap());
        let back = Marker::decode(&raw).unwrap();
        assert_eq!((back.applied, back.clock), (applied, 0));

        let new = Marker {
            applied,
            clock: 77,
            ..Marker::default()
        };
        let raw = new.encode();
        assert_eq!(Marker::decode(&raw).unwrap().clock, 77);
        let older: MarkerWithoutClock = postcard::from_bytes(&raw[1..]).unwrap();
        assert_eq!(older.applied, applied);
        assert_eq!(clock_of_snapshot(&snapshot_id(applied, 3, 77)), 77);
        assert_eq!(clock_of_snapshot("2-9-3"), 0);
    }
}
