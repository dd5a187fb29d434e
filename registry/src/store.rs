//! openraft storage (the `storage-v2` API) on sled.
//!
//! One sled database holds three trees: `logs` (log index, big-endian u64 →
//! postcard-encoded entry), `meta` (vote, committed log id, last purged log
//! id) and `snapshot` (the current snapshot: meta and data). An append, a
//! vote or a snapshot is reported durable only after `flush_async` returns,
//! so an acknowledged write survives `kill -9`.
//!
//! The state machine ([`crate::state::Registry`]) lives in memory and is
//! made durable by the log plus snapshots: on start it is restored from the
//! current snapshot and openraft re-applies the committed log after it.

// openraft's `StorageError` is large and its signatures are fixed by the
// storage traits; boxing it here would only move the copy.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::{Command, CommandResponse};
use crate::state::{Registry, RegistrySnapshot};

/// Raft node id.
pub type NodeId = u64;

/// A member of the cluster as recorded in the Raft membership: where peers
/// reach it and where clients should be sent when it leads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Raft peer address (`raft_addr`).
    pub raft_addr: String,
    /// gRPC API address (`grpc_addr`).
    pub grpc_addr: String,
    /// HTTP API address (`http_addr`).
    pub http_addr: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "raft={} grpc={} http={}",
            self.raft_addr, self.grpc_addr, self.http_addr
        )
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration: registry commands in, command responses out.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = MemberNode,
);

/// The Raft handle of a registry node.
pub type Raft = openraft::Raft<TypeConfig>;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn logs_read_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn logs_write_err(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn store_err(verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    io_err(ErrorSubject::Store, verb, e)
}

/// Opens (creating if needed) the sled database under `dir`.
///
/// # Errors
/// The sled error, when the directory cannot be opened or is locked by
/// another process.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
}

/// Opens the log store and the state machine over one sled database.
///
/// # Errors
/// A [`StorageError`] when a tree cannot be opened or the stored snapshot
/// cannot be decoded.
pub fn open(db: sled::Db, feed_capacity: usize) -> StorageResult<(LogStore, StateMachineStore)> {
    let logs = db
        .open_tree("logs")
        .map_err(|e| store_err(ErrorVerb::Read, &e))?;
    let meta = db
        .open_tree("meta")
        .map_err(|e| store_err(ErrorVerb::Read, &e))?;
    let snapshot = db
        .open_tree("snapshot")
        .map_err(|e| store_err(ErrorVerb::Read, &e))?;
    let log_store = LogStore {
        db: db.clone(),
        logs,
        meta,
    };
    let sm = StateMachineStore::restore(db, snapshot, feed_capacity)?;
    Ok((log_store, sm))
}

// ---------------------------------------------------------------- log store

/// The Raft log and vote, in sled.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
}

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

impl LogStore {
    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> StorageResult<Option<T>> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(|e| store_err(ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| store_err(ErrorVerb::Read, &e))
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> StorageResult<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| store_err(ErrorVerb::Write, &e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| store_err(ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))
    }

    /// Removes the log entries with index in `[from, to)`.
    fn remove_range(&self, from: u64, to: Option<u64>) -> StorageResult<()> {
        let start = from.to_be_bytes();
        let iter = match to {
            Some(t) => self.logs.range(start..t.to_be_bytes()),
            None => self.logs.range(start..),
        };
        let mut batch = sled::Batch::default();
        for kv in iter {
            let (k, _) = kv.map_err(|e| logs_read_err(&e))?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch).map_err(|e| logs_write_err(&e))
    }
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    postcard::from_bytes(bytes).map_err(|e| logs_read_err(&e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.logs.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(|e| logs_read_err(&e))?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(|e| logs_read_err(&e))?);
            if !range.contains(&idx) {
                break;
            }
            out.push(decode_entry(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let last = match self.logs.last().map_err(|e| logs_read_err(&e))? {
            Some((_, v)) => Some(decode_entry(&v)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: losing it only means re-applying from the snapshot,
        // and openraft re-commits on the next election.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(|e| logs_write_err(&e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| logs_write_err(&e))?;
        // Durable before acknowledged.
        let res = self.flush(ErrorSubject::Logs).await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index, None)?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: entries at or before it are ignored
        // by openraft, so a crash between the two steps is harmless.
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.remove_range(0, Some(log_id.index.saturating_add(1)))?;
        self.flush(ErrorSubject::Logs).await
    }
}

// ---------------------------------------------------------- state machine

/// The applied state: the registry plus what openraft needs to know about it.
#[derive(Debug)]
pub struct SmState {
    /// The registry.
    pub registry: Registry,
    /// Last log id applied to it.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last membership applied.
    pub membership: StoredMembership<NodeId, MemberNode>,
}

/// State shared between the state machine and the API: the applied state
/// behind a lock, and a watch channel carrying the applied revision.
#[derive(Debug)]
pub struct Shared {
    state: RwLock<SmState>,
    revision_tx: watch::Sender<u64>,
    snapshots_built: std::sync::atomic::AtomicU64,
    last_snapshot_ms: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Read access to the applied state.
    pub fn read(&self) -> RwLockReadGuard<'_, SmState> {
        // A panic while holding the lock would be a bug in `Registry::apply`;
        // the state is still the last consistent one, so keep serving it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees every new applied revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// The applied registry revision.
    pub fn revision(&self) -> u64 {
        *self.revision_tx.borrow()
    }

    /// Snapshots built since start.
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots_built
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Duration of the last snapshot build, ms.
    pub fn last_snapshot_ms(&self) -> u64 {
        self.last_snapshot_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A snapshot as stored in sled.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

const KEY_SNAPSHOT: &str = "current";

/// openraft's view of the registry state machine.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    db: sled::Db,
    snapshots: sled::Tree,
    feed_capacity: usize,
}

impl StateMachineStore {
    fn restore(db: sled::Db, snapshots: sled::Tree, feed_capacity: usize) -> StorageResult<Self> {
        let mut state = SmState {
            registry: Registry::new(feed_capacity),
            last_applied: None,
            membership: StoredMembership::default(),
        };
        if let Some(bytes) = snapshots
            .get(KEY_SNAPSHOT)
            .map_err(|e| store_err(ErrorVerb::Read, &e))?
        {
            let stored: StoredSnapshot = postcard::from_bytes(&bytes)
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
            let snap = RegistrySnapshot::decode(&stored.data)
                .map_err(|e| StorageIOError::read_snapshot(Some(stored.meta.signature()), &e))?;
            state.registry = Registry::from_snapshot(snap, feed_capacity);
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership;
        }
        let (revision_tx, _) = watch::channel(state.registry.revision());
        Ok(Self {
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                revision_tx,
                snapshots_built: Default::default(),
                last_snapshot_ms: Default::default(),
            }),
            db,
            snapshots,
            feed_capacity,
        })
    }

    /// The state shared with the API layer.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        data: Vec<u8>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = postcard::to_stdvec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.snapshots
            .insert(KEY_SNAPSHOT, bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        // Capture under the read lock (cheap: instances are shared Arcs),
        // encode outside it so applies are not blocked.
        let (snap, last_applied, membership) = {
            let s = self.shared.read();
            (
                s.registry.to_snapshot(),
                s.last_applied,
                s.membership.clone(),
            )
        };
        let revision = snap.revision;
        let data = tokio::task::spawn_blocking(move || postcard::to_stdvec(&snap))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e))?
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match last_applied {
            Some(l) => format!(
                "{}-{}-{}-r{revision}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("empty-r{revision}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, data.clone()).await?;
        self.shared
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.last_snapshot_ms.store(
            started.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>)> {
        let s = self.shared.read();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let revision = {
            let mut s = self.shared.write();
            let mut out = Vec::new();
            for entry in entries {
                s.last_applied = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => CommandResponse::Noop,
                    EntryPayload::Normal(cmd) => s.registry.apply_owned(cmd),
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::Noop
                    }
                };
                out.push(resp);
            }
            (s.registry.revision(), out)
        };
        self.shared.revision_tx.send_replace(revision.0);
        Ok(revision.1)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let snap = RegistrySnapshot::decode(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let feed_capacity = self.feed_capacity;
        let registry =
            tokio::task::spawn_blocking(move || Registry::from_snapshot(snap, feed_capacity))
                .await
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.save_snapshot(meta, data).await?;
        let revision = {
            let mut s = self.shared.write();
            s.registry = registry;
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
            s.registry.revision()
        };
        self.shared.revision_tx.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self
            .snapshots
            .get(KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests;
