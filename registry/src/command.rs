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
    /// Replace everything an external source contributed with `records`
    /// (state of the world per source): records are created or replaced,
    /// the source's instances missing from them are removed. Instances
    /// registered natively or imported by another source are never
    /// touched: a record colliding with one is skipped and reported.
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
            Command::SyncSource { .. } => "sync_source",
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
        /// Instances created or changed.
        upserted: u32,
        /// Instances removed.
        removed: u32,
        /// Records not applied: (instance key, reason).
        skipped: Vec<(String, String)>,
    },
    /// A blank or membership entry.
    Noop,
}
