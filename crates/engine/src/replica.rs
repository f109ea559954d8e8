//! The engine as the state machine of a replicated log (cluster mode).
//!
//! Every replica applies the same committed [`Proposal`]s in the same order with the same
//! `apply`, and must reach the same entries and versions. Three things make that hold across
//! crashes and restarts:
//!
//! - The log's position of the last applied proposal (the *marker*, opaque bytes chosen by the
//!   caller) is written in the same atomic batch as the proposal's effects, so after a restart
//!   the engine and its marker always agree: nothing is applied twice (a second `Put` would bump
//!   the version again) and nothing is skipped.
//! - Versions are recorded exactly, not reserved a block ahead: a replica that restarts hands
//!   out the next version the others hand out.
//! - A snapshot is exported under the writer lock (one point in time) and imported by replacing
//!   every keyspace's contents, with the marker set to [`INSTALLING`] until the import is
//!   complete, so a crash in the middle is seen at the next start and the import is redone.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::{expiry_key, version_meta_key, Durability, Engine, WriterState, SCAN_PAGE};
use crate::command::{Command, Outcome, Proposal};
use crate::error::{Error, Result, StoreError};
use crate::store::BatchOp;
use crate::value::Entry;
use crate::watch::{Change, Event, Selector};
use crate::KeyspaceId;

/// The metadata key of the marker.
pub(super) const MARKER_KEY: &[u8] = b"replica:applied";

/// The marker while a snapshot import is under way: its contents cannot be trusted.
pub const INSTALLING: &[u8] = b"installing";

/// One item of an exported snapshot, in order: every keyspace first (by id), then the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    Keyspace {
        id: KeyspaceId,
        name: String,
        /// The last version handed out in the keyspace.
        version: u64,
    },
    /// A stored entry as the store holds it (encoded).
    Entry {
        ks: KeyspaceId,
        key: Bytes,
        raw: Bytes,
    },
}

/// Stored entries (encoded) by keyspace and key.
type WatchedState = BTreeMap<(KeyspaceId, Bytes), Bytes>;

/// Most entries written in one batch while importing.
const IMPORT_BATCH: usize = 512;

impl Engine {
    /// Switches to replicated mode: versions are recorded exactly from now on. Call once, before
    /// the first [`Engine::apply_committed`], on an engine opened for a replica.
    pub fn enable_replication(&self) {
        self.inner.writer.lock().exact_versions = true;
    }

    /// Holds the expiry reaper at `ms`: it deletes only entries that expired at or before it.
    /// A replica passes the replicated clock (the latest time its applied proposals carry), so
    /// that no node deletes an entry a later proposal could still see alive: a conditional
    /// write then comes out the same on every node, whatever each node's own clock says.
    pub fn hold_reaper_at(&self, ms: u64) {
        self.inner
            .reap_until
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Applies a committed proposal (or, with `None`, only moves the marker: a log entry that
    /// changes no data) and records `marker` with its effects, atomically. The effects reach
    /// the engine's journal as an Async write: the replicated log is what makes them durable.
    pub fn apply_committed(
        &self,
        proposal: Option<Proposal>,
        marker: Bytes,
    ) -> Result<Option<Outcome>> {
        let mut writer = self.lock_writer()?;
        writer.exact_versions = true;
        writer.marker = Some(marker);
        let outcome = match proposal {
            Some(proposal) => {
                let result = self.apply_locked(&mut writer, proposal, Durability::Async);
                match result {
                    Ok((outcome, _)) => Some(outcome),
                    // A command the engine refuses (an unknown keyspace, a key too long) is
                    // refused the same way on every replica: it is an outcome, not a failure.
                    Err(Error::Invalid(_) | Error::UnknownKeyspace(_)) => None,
                    Err(e) => {
                        writer.marker = None;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        // Commands that wrote nothing (a failed condition, a lock) still move the marker.
        if writer.marker.is_some() {
            self.commit(&mut writer, Vec::new())?;
        }
        Ok(outcome)
    }

    /// The marker recorded with the last applied proposal, if any.
    pub fn committed_marker(&self) -> Result<Option<Bytes>> {
        Ok(self.inner.store.get(self.inner.meta, MARKER_KEY)?)
    }

    /// Calls `each` with every keyspace, then every stored entry, at one point in time (writes
    /// wait until it returns), and returns the marker of that point.
    pub fn export(&self, mut each: impl FnMut(Exported) -> Result<()>) -> Result<Option<Bytes>> {
        let writer = self.lock_writer()?;
        let keyspaces = &self.inner.keyspaces;
        for (id, info) in keyspaces.iter() {
            each(Exported::Keyspace {
                id: id as KeyspaceId,
                name: info.name.clone(),
                version: writer.versions.get(id).map_or(0, |v| v.0),
            })?;
        }
        for (id, info) in keyspaces.iter() {
            let mut after: Option<Bytes> = None;
            loop {
                let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                let page =
                    self.inner
                        .store
                        .range(info.space, start, Bound::Unbounded, SCAN_PAGE)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, raw) in page {
                    each(Exported::Entry {
                        ks: id as KeyspaceId,
                        key,
                        raw,
                    })?;
                }
            }
        }
        self.committed_marker()
    }

    /// Replaces every keyspace's contents with an exported snapshot, read item by item from
    /// `next` (keyspaces first, as [`Engine::export`] gives them), and records `marker`. A
    /// keyspace the snapshot has under another id than this engine is refused (the data
    /// belongs to another history). Writes wait until it returns.
    pub fn import(
        &self,
        mut next: impl FnMut() -> Result<Option<Exported>>,
        marker: Bytes,
    ) -> Result<()> {
        let mut writer = self.lock_writer()?;
        writer.exact_versions = true;
        // What subscribers watch, as it was: they are told what the snapshot changed.
        let watched = self.inner.hub.selectors();
        let before = self.watched_state(&watched)?;
        // From here until the end the contents are neither the old state nor the new one.
        writer.marker = Some(Bytes::from_static(INSTALLING));
        self.commit(&mut writer, Vec::new())?;
        self.clear_all(&mut writer)?;
        let mut batch = Vec::with_capacity(IMPORT_BATCH * 2);
        let mut keyspaces = 0usize;
        while let Some(item) = next()? {
            match item {
                Exported::Keyspace { id, name, version } => {
                    self.import_keyspace(&mut writer, id, &name, version)?;
                    keyspaces += 1;
                }
                Exported::Entry { ks, key, raw } => {
                    let info = self.info(ks)?;
                    let entry = Entry::decode(&raw)?;
                    if let Some(at) = entry.expires_at {
                        batch.push(BatchOp::Put {
                            space: self.inner.expiry,
                            key: expiry_key(at, ks, &key),
                            value: Bytes::new(),
                        });
                    }
                    self.inner.cache.remove(ks, &key);
                    batch.push(BatchOp::Put {
                        space: info.space,
                        key,
                        value: raw,
                    });
                    if batch.len() >= IMPORT_BATCH {
                        self.commit(&mut writer, std::mem::take(&mut batch))?;
                    }
                }
            }
        }
        let local = self.inner.keyspaces.count();
        if local > keyspaces {
            return Err(StoreError::Corrupt(format!(
                "this node has {local} keyspaces, the snapshot {keyspaces}: \
                 the data belongs to another cluster"
            ))
            .into());
        }
        writer.marker = Some(marker);
        self.commit(&mut writer, batch)?;
        let after = self.watched_state(&watched)?;
        self.publish_difference(&writer, before, after);
        Ok(())
    }

    /// The stored entries of every watched key and prefix, by keyspace and key.
    fn watched_state(&self, watched: &[(KeyspaceId, Selector)]) -> Result<WatchedState> {
        let mut out = BTreeMap::new();
        for (ks, selector) in watched {
            let Ok(info) = self.info(*ks) else { continue };
            match selector {
                Selector::Key(key) => {
                    if let Some(raw) = self.inner.store.get(info.space, key)? {
                        out.insert((*ks, key.clone()), raw);
                    }
                }
                Selector::Prefix(prefix) => {
                    let mut after: Option<Bytes> = None;
                    'pages: loop {
                        let start = match &after {
                            Some(last) => Bound::Excluded(last.as_ref()),
                            None => Bound::Included(prefix.as_ref()),
                        };
                        let page = self.inner.store.range(
                            info.space,
                            start,
                            Bound::Unbounded,
                            SCAN_PAGE,
                        )?;
                        if page.is_empty() {
                            break;
                        }
                        for (key, raw) in page {
                            if !key.starts_with(prefix) {
                                break 'pages;
                            }
                            after = Some(key.clone());
                            out.insert((*ks, key), raw);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Publishes, in key order, a change for every watched key the snapshot changed: its new
    /// entry, or its deletion (with the keyspace's last version), so a subscriber on a node
    /// that caught up by snapshot misses no change of state.
    fn publish_difference(&self, writer: &WriterState, before: WatchedState, after: WatchedState) {
        let mut keys: Vec<&(KeyspaceId, Bytes)> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (ks, name) = key;
            let change = match (before.get(key), after.get(key)) {
                (old, Some(new)) if old != Some(new) => match Entry::decode(new) {
                    Ok(entry) => (entry.version, Change::Set(entry)),
                    Err(_) => continue,
                },
                (Some(_), None) => (
                    writer.versions.get(*ks as usize).map_or(0, |v| v.0),
                    Change::Deleted,
                ),
                _ => continue,
            };
            self.inner.hub.publish(Event {
                keyspace: *ks,
                key: name.clone(),
                version: change.0,
                change: change.1,
            });
        }
    }

    /// Deletes every stored entry of every keyspace and the whole expiry index.
    fn clear_all(&self, writer: &mut WriterState) -> Result<()> {
        let mut spaces: Vec<(Option<KeyspaceId>, u32)> = self
            .inner
            .keyspaces
            .iter()
            .map(|(id, info)| (Some(id as KeyspaceId), info.space))
            .collect();
        spaces.push((None, self.inner.expiry));
        for (ks, space) in spaces {
            loop {
                let page =
                    self.inner
                        .store
                        .range(space, Bound::Unbounded, Bound::Unbounded, SCAN_PAGE)?;
                if page.is_empty() {
                    break;
                }
                let mut ops = Vec::with_capacity(page.len());
                for (key, _) in page {
                    if let Some(ks) = ks {
                        self.inner.cache.remove(ks, &key);
                    }
                    ops.push(BatchOp::Delete { space, key });
                }
                self.commit(writer, ops)?;
            }
        }
        Ok(())
    }

    /// Makes keyspace `id` exist under `name` with `version` as its last version.
    fn import_keyspace(
        &self,
        writer: &mut WriterState,
        id: KeyspaceId,
        name: &str,
        version: u64,
    ) -> Result<()> {
        let existing = self.inner.names.read().get(name).copied();
        match existing {
            Some(local) if local != id => {
                return Err(StoreError::Corrupt(format!(
                    "snapshot has keyspace {name} as {id}, this node as {local}: \
                     the data belongs to another cluster"
                ))
                .into())
            }
            Some(_) => {}
            None => {
                if self.inner.keyspaces.count() != id as usize {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot keyspace {name} ({id}) does not follow this node's keyspaces: \
                         the data belongs to another cluster"
                    ))
                    .into());
                }
                let proposal = Proposal {
                    at_ms: 0,
                    command: Command::CreateKeyspace { name: name.into() },
                };
                self.apply_locked(writer, proposal, Durability::Async)?;
            }
        }
        if let Some(slot) = writer.versions.get_mut(id as usize) {
            *slot = (version, version);
        }
        self.commit(
            writer,
            vec![BatchOp::Put {
                space: self.inner.meta,
                key: version_meta_key(id),
                value: Bytes::copy_from_slice(&version.to_be_bytes()),
            }],
        )?;
        Ok(())
    }
}
