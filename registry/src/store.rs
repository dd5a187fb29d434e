//! openraft storage (the `storage-v2` API) on sled.
//!
//! One sled database holds three trees: `logs` (log index, big-endian u64 →
//! postcard-encoded entry), `meta` (vote, committed log id, last purged log
//! id) and `snapshot` (the current snapshot: meta and data). An append, a
//! vote or a snapshot is reported durable only after sled's flush returns,
//! so an acknowledged write survives `kill -9`. Appends are group-committed:
//! `append` writes the entries and returns, and one flusher thread flushes
//! everything written so far and then reports every append that was
//! waiting, in order (openraft's `LogFlushed` callback), so Raft keeps
//! replicating and accepting writes while an fsync is in progress and
//! appends that arrive during one share the next.
//!
//! Entries carry their command behind an `Arc` (serialized exactly as the
//! command itself, so the bytes on disk and on the wire are unchanged), and
//! the log store keeps the last [`TAIL_ENTRIES`] it appended (at most
//! [`TAIL_BYTES`]) in memory with their encoding: a leader replicates them
//! to every follower without decoding them from sled, nor encoding them
//! again, once per follower ([`crate::network`]); the state machine takes
//! each command out of its entry when it applies it (moving it, not
//! copying it), leaving the encoding for followers that are behind.
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
        D = Arc<Command>,
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
    let tail = Tail::default();
    let log_store = LogStore {
        db: db.clone(),
        logs,
        meta,
        tail: tail.clone(),
        flusher: Arc::default(),
    };
    let sm = StateMachineStore::restore(db, snapshot, feed_capacity, tail)?;
    Ok((log_store, sm))
}

// ---------------------------------------------------------------- log store

/// The Raft log and vote, in sled.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// The last entries appended (at most [`TAIL_ENTRIES`]), exactly as
    /// they are in `logs`; shared by every clone of the store, with the
    /// state machine and with the Raft network.
    tail: Tail,
    /// The group-commit flusher, started by the first append.
    flusher: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>>,
}

/// Flushes sled for every batch of waiting appends and reports them
/// durable (or the flush error) in the order they were appended. Runs on
/// its own thread and calls sled's blocking `flush`: `flush_async` would
/// hand every flush to sled's thread pool first, one more wake-up per
/// append when writes arrive one at a time.
fn group_commit(db: sled::Db, waiting: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        // Every append in `batch` was written before it was queued, so this
        // flush covers all of them.
        let res = db.flush();
        for callback in batch {
            report_flushed(callback, &res);
        }
    }
}

/// Tells openraft that an append is durable, or why it is not.
fn report_flushed<T, E: std::fmt::Display>(callback: LogFlushed<TypeConfig>, res: &Result<T, E>) {
    callback.log_io_completed(match res {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    });
}

/// The most entries the log store keeps in memory beside sled; older ones
/// are read back from sled when a lagging follower needs them.
pub const TAIL_ENTRIES: usize = 1024;

/// The most encoded bytes the in-memory tail holds (the newest entry is
/// kept whatever its size).
pub const TAIL_BYTES: usize = 32 * 1024 * 1024;

/// One log entry kept in memory: its postcard encoding (what sled holds)
/// and, until the state machine applies it, the entry itself.
#[derive(Debug)]
pub(crate) struct TailEntry {
    pub(crate) log_id: LogId<NodeId>,
    pub(crate) entry: Option<Entry<TypeConfig>>,
    pub(crate) bytes: Arc<[u8]>,
}

/// Log index → the entry kept in memory.
pub(crate) type Tail = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, TailEntry>>>;

pub(crate) fn lock_tail(
    tail: &Tail,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, TailEntry>> {
    tail.lock().unwrap_or_else(|p| p.into_inner())
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
        {
            let mut tail = lock_tail(&self.tail);
            match to {
                Some(t) => tail.retain(|i, _| *i < from || *i >= t),
                None => {
                    tail.split_off(&from);
                }
            }
        }
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

impl LogStore {
    /// The in-memory tail, for the Raft network.
    pub(crate) fn tail(&self) -> Tail {
        self.tail.clone()
    }

    /// The entries `[start, end)` from the in-memory tail when it holds
    /// every one of them (a cheap clone each: the command is shared).
    fn read_tail(&self, start: u64, end: Bound<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let end = match end {
            Bound::Included(x) => x.checked_add(1)?,
            Bound::Excluded(x) => x,
            Bound::Unbounded => return None,
        };
        if end <= start {
            return Some(Vec::new());
        }
        let tail = lock_tail(&self.tail);
        let out: Vec<Entry<TypeConfig>> = tail
            .range(start..end)
            .map_while(|(_, t)| t.entry.clone())
            .collect();
        (out.len() as u64 == end - start).then_some(out)
    }
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
        if let Some(hit) = self.read_tail(start, range.end_bound().cloned()) {
            return Ok(hit);
        }
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
        let mut appended = Vec::new();
        for entry in entries {
            let bytes: Arc<[u8]> = postcard::to_stdvec(&entry)
                .map_err(|e| logs_write_err(&e))?
                .into();
            batch.insert(&entry.log_id.index.to_be_bytes(), &*bytes);
            appended.push(TailEntry {
                log_id: entry.log_id,
                entry: Some(entry),
                bytes,
            });
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| logs_write_err(&e))?;
        {
            let mut tail = lock_tail(&self.tail);
            for t in appended {
                tail.insert(t.log_id.index, t);
            }
            let mut bytes: usize = tail.values().map(|t| t.bytes.len()).sum();
            while tail.len() > 1 && (tail.len() > TAIL_ENTRIES || bytes > TAIL_BYTES) {
                if let Some((_, oldest)) = tail.pop_first() {
                    bytes -= oldest.bytes.len();
                }
            }
        }
        // Durable before acknowledged: openraft counts the entries as
        // persisted only when the flusher reports them.
        let flusher = self.flusher.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let db = self.db.clone();
            let spawned = std::thread::Builder::new()
                .name("meshreg-log-flush".into())
                .spawn(move || group_commit(db, rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the log flusher thread; flushing inline");
            }
            tx
        });
        let sent = flusher.send(callback);
        if let Err(e) = sent {
            // No flusher thread (it could not be started, or it is gone):
            // flush here.
            let res = self.flush(ErrorSubject::Logs).await;
            report_flushed(e.0, &res);
            return res;
        }
        Ok(())
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
    /// The log store's in-memory tail; applied entries are taken out of it.
    tail: Tail,
}

impl StateMachineStore {
    fn restore(
        db: sled::Db,
        snapshots: sled::Tree,
        feed_capacity: usize,
        tail: Tail,
    ) -> StorageResult<Self> {
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
            tail,
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
                    EntryPayload::Normal(cmd) => {
                        // The log store's copy of the entry is no longer
                        // needed (its encoding stays for followers): with it
                        // gone, the command is usually ours alone to move.
                        let kept = lock_tail(&self.tail)
                            .get_mut(&entry.log_id.index)
                            .and_then(|t| t.entry.take());
                        drop(kept);
                        s.registry
                            .apply_owned(Arc::try_unwrap(cmd).unwrap_or_else(|c| (*c).clone()))
                    }
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
