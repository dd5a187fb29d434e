//! Commands: the payload of the Raft log's normal entries, and what
//! applying one returns. Every state change goes through one of these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{InstanceKey, Registration};

/// A change to the registry, replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a namespace.
    CreateNamespace {
        /// Name.
        name: String,
        /// Labels.
        labels: BTreeMap<String, String>,
    },
    /// Delete an empty namespace.
    DeleteNamespace {
        /// Name.
        name: String,
    },
    /// Register (create or replace) instances. All or nothing.
    Register {
        /// Validated registrations.
        entries: Vec<Registration>,
    },
    /// Remove instances; unknown keys are ignored.
    Deregister {
        /// Instances to remove.
        keys: Vec<InstanceKey>,
    },
    /// Grant a session (lease); the state machine assigns its id.
    GrantSession {
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// [`Command::SyncSourceRanked`] at priority 0: the form written
    /// before sources had priorities, still applied from old Raft logs.
    SyncSource {
        /// Source name; every record's provenance names it.
        source: String,
        /// The source's whole current set, validated.
        records: Vec<Registration>,
    },
    /// Revoke sessions and remove their instances: proposed by a client, or
    /// by the leader, batched, when sessions expire.
    RevokeSessions {
        /// Session ids; unknown ones are ignored.
        ids: Vec<u64>,
    },
    /// Replace everything an external source contributed with `records`
    /// (state of the world per source), merged with the other sources by
    /// priority: each record either backs its instance (created or
    /// replaced) or is kept as a shadowed candidate behind the record that
    /// wins the identity (namespace, app, id); the source's records missing
    /// from `records` are removed, and where one backed an instance the
    /// best shadowed candidate takes its place in the same apply.
    ///
    /// The winner: a native registration, always; else the higher
    /// priority; on equal priority the record backing the instance stays,
    /// and among tied candidates (a promotion) the lexicographically
    /// smaller source name. A record whose revision is stored with other
    /// services, whose namespace does not exist or whose provenance names
    /// another source is rejected (`skipped`), not shadowed.
    ///
    /// Appended last: postcard encodes a variant by its index, so the
    /// variants before it keep their encoding and old logs still decode.
    SyncSourceRanked {
        /// Source name; every record's provenance names it.
        source: String,
        /// The source's priority: higher wins an identity.
        priority: i32,
        /// The source's whole current set, validated.
        records: Vec<Registration>,
    },
    /// What changed in an external source's set since its last sync, so
    /// that one changed record of a large source does not rewrite all of
    /// them: each of `upserts` is taken as in [`Command::SyncSourceRanked`]
    /// (backing its instance or shadowed), each of `removed` drops the
    /// source's record for that identity (the best shadowed record takes
    /// over), and the source's other records stay as they are. The sink
    /// writes it only after a full sync of the same source and priority in
    /// the same leadership, and writes a full sync again from time to time.
    ///
    /// Appended last, like [`Command::SyncSourceRanked`].
    SyncSourceDelta {
        /// Source name; every record's provenance names it.
        source: String,
        /// The source's priority, as in its last full sync.
        priority: i32,
        /// Records that are new or changed, validated.
        upserts: Vec<Registration>,
        /// Identities whose record the source no longer has.
        removed: Vec<InstanceKey>,
    },
    /// Several commands proposed together by the leader's write batcher
    /// (one log entry, one fsync, one replication round for writes that
    /// arrived while the previous entries were in flight). Applied one
    /// after another exactly as separate entries would be, each with its
    /// own revision and response ([`CommandResponse::Batch`]); a rejected
    /// command does not affect the others.
    ///
    /// Appended last, like [`Command::SyncSourceDelta`]: a node that does
    /// not know it cannot apply it, so every node of a cluster must run a
    /// version that does before a leader batches.
    Batch {
        /// The commands, in proposal order.
        commands: Vec<Command>,
    },
}

impl Command {
    /// Short name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateNamespace { .. } => "create_namespace",
            Command::DeleteNamespace { .. } => "delete_namespace",
            Command::Register { .. } => "register",
            Command::Deregister { .. } => "deregister",
            Command::GrantSession { .. } => "grant_session",
            Command::RevokeSessions { .. } => "revoke_sessions",
            Command::SyncSource { .. } | Command::SyncSourceRanked { .. } => "sync_source",
            Command::SyncSourceDelta { .. } => "sync_source_delta",
            Command::Batch { .. } => "batch",
        }
    }
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied; the registry is at `revision`. `count` is the number of
    /// instances registered or removed.
    Applied {
        /// Registry revision after the command.
        revision: u64,
        /// Instances affected.
        count: u32,
    },
    /// A session was granted.
    SessionGranted {
        /// Its id.
        id: u64,
        /// Its TTL in milliseconds.
        ttl_ms: u64,
        /// Registry revision after the grant.
        revision: u64,
    },
    /// The command was rejected against the current state; nothing changed.
    Rejected(Error),
    /// A source sync was applied.
    Synced {
        /// Registry revision after the sync.
        revision: u64,
        /// Instances created or changed, whichever record now backs them
        /// (a takeover by this source, or a candidate replacing it).
        upserted: u32,
        /// This source's records taken out of their instances: each
        /// instance is removed, or backed by a shadowed candidate instead.
        removed: u32,
        /// Records rejected: (instance key, reason).
        skipped: Vec<(String, String)>,
        /// Records kept as shadowed candidates because another record
        /// wins their instance: (instance key, `shadowed by ...`). Not an
        /// error: each takes over when the winner goes away.
        shadowed: Vec<(String, String)>,
    },
    /// A blank or membership entry.
    Noop,
    /// The responses to a [`Command::Batch`], in its order.
    Batch(Vec<CommandResponse>),
}
