//! Server configuration: built and validated once at start, from (lowest to
//! highest precedence) defaults, a TOML file, `MESHREG_*` environment
//! variables and command-line flags, then shared as `Arc<Config>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::validate;

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSection {
    /// Leader heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind the snapshot, for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
    /// Most log entries in one AppendEntries RPC (openraft's batching by
    /// count; the transport also cuts batches at 1 MiB).
    pub max_payload_entries: u64,
    /// How long a new node may take to replicate the log before it is
    /// promoted from learner to voter, ms.
    pub learner_catch_up_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs_since_last: 20_000,
            logs_kept_after_snapshot: 5_000,
            max_payload_entries: 300,
            learner_catch_up_timeout_ms: 600_000,
        }
    }
}

/// Session (lease) handling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSection {
    /// Extra time every session gets when a node becomes leader, ms.
    pub leader_grace_ms: u64,
    /// How often the leader checks for expired sessions, ms.
    pub check_interval_ms: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            leader_grace_ms: 5_000,
            check_interval_ms: 100,
        }
    }
}

/// Watch feed and blocking queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSection {
    /// Changes kept in memory for watchers; one that falls further behind gets a resync.
    pub feed_capacity: usize,
    /// Most events in one watch message.
    pub max_events_per_message: usize,
    /// Messages buffered per watch stream before the watcher waits on its client.
    pub stream_buffer: usize,
    /// Longest `wait` a blocking query may ask for, ms.
    pub max_blocking_wait_ms: u64,
}

impl Default for WatchSection {
    fn default() -> Self {
        Self {
            feed_capacity: 100_000,
            max_events_per_message: 1_000,
            stream_buffer: 16,
            max_blocking_wait_ms: 600_000,
        }
    }
}

/// meshreg server configuration. Every field has a default; see the README
/// for the TOML form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Raft node id of this node (≥ 1).
    pub node_id: u64,
    /// Directory holding the sled database (Raft log, vote, snapshots).
    pub data_dir: PathBuf,
    /// HTTP listener: REST API, `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: SocketAddr,
    /// gRPC listener: `meshreg.registry.v1.Registry`.
    pub grpc_addr: SocketAddr,
    /// Raft peer listener (port 7072); its bound address is advertised in the membership.
    pub raft_addr: SocketAddr,
    /// Raft addresses of existing members to join through on first start.
    /// Empty: on first start this node initializes a new cluster (the seed).
    pub join: Vec<String>,
    /// Allow `PUT /debug/faults` to cut Raft links (tests only).
    pub enable_fault_injection: bool,
    /// Most concurrent HTTP/2 streams (RPCs, watches, xDS streams) one
    /// client connection may open on the gRPC port.
    pub max_streams_per_connection: u32,
    /// Time a write may wait for commit before failing with UNAVAILABLE, ms.
    pub write_timeout_ms: u64,
    /// Time a read with `min_revision` waits for this node to catch up, ms.
    pub min_revision_wait_ms: u64,
    /// Raft settings.
    pub raft: RaftSection,
    /// Session settings.
    pub sessions: SessionSection,
    /// Watch settings.
    pub watch: WatchSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./meshreg-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7071)),
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 7072)),
            join: Vec::new(),
            enable_fault_injection: false,
            max_streams_per_connection: 1024,
            write_timeout_ms: 10_000,
            min_revision_wait_ms: 5_000,
            raft: RaftSection::default(),
            sessions: SessionSection::default(),
            watch: WatchSection::default(),
        }
    }
}

/// Configuration errors, each naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {cause}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error, with line and field.
        cause: toml::de::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting {field}: {reason}")]
    Invalid {
        /// Setting name.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        toml::from_str(&text).map_err(|cause| ConfigError::Parse {
            path: path.to_path_buf(),
            cause,
        })
    }

    /// Checks ranges and relations between settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.node_id == 0 {
            return bad("node_id", "must be at least 1");
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= r.election_timeout_min_ms {
            return bad(
                "raft.heartbeat_interval_ms",
                "must be > 0 and below raft.election_timeout_min_ms",
            );
        }
        if r.election_timeout_min_ms >= r.election_timeout_max_ms {
            return bad(
                "raft.election_timeout_min_ms",
                "must be below raft.election_timeout_max_ms",
            );
        }
        if r.snapshot_logs_since_last == 0 {
            return bad("raft.snapshot_logs_since_last", "must be at least 1");
        }
        if self.sessions.check_interval_ms == 0
            || self.sessions.check_interval_ms > validate::MIN_TTL_MS
        {
            return bad(
                "sessions.check_interval_ms",
                "must be 1..=1000 (the shortest session TTL)",
            );
        }
        if self.watch.feed_capacity == 0
            || self.watch.max_events_per_message == 0
            || self.watch.stream_buffer == 0
        {
            return bad(
                "watch",
                "feed_capacity, max_events_per_message and stream_buffer must be at least 1",
            );
        }
        if self.write_timeout_ms == 0 {
            return bad("write_timeout_ms", "must be at least 1");
        }
        Ok(())
    }

    /// openraft's configuration derived from this one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when openraft rejects the combination.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "meshreg".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            max_payload_entries: r.max_payload_entries.max(1),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConfigError::Invalid {
            field: "raft",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_fields() {
        let c: Config = toml::from_str("node_id = 3\n[watch]\nfeed_capacity = 10\n").unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.watch.feed_capacity, 10);
        assert_eq!(c.grpc_addr, Config::default().grpc_addr);
        let e = toml::from_str::<Config>("nodeid = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodeid"), "{e}");
        c.validate().unwrap();
        c.openraft().unwrap();
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        c.raft.election_timeout_max_ms = 10;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("raft."), "{e}");
    }
}
