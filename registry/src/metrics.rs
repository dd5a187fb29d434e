//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Counters and histograms are updated where things happen; gauges that
//! mirror state (revision, instance count, Raft indexes) are read at scrape
//! time from the node.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-command metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// Command name (`register`, `deregister`, ...).
    pub command: &'static str,
    /// `ok`, `rejected` (by the state machine) or `error` (not committed).
    pub result: &'static str,
}

/// Labels of forwarded-request counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Forwarded {
    /// `write`, `keepalive`, `read_index` or `transfer_leader`.
    pub kind: &'static str,
}

/// Labels of the leadership transfer counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferResult {
    /// `ok`, `rejected` (invalid target, not the leader, one already
    /// running) or `failed` (the target did not catch up or win).
    pub result: &'static str,
}

/// Labels of per-follower gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Follower {
    /// Follower node id.
    pub follower: u64,
}

/// Labels of per-command latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandOnly {
    /// Command name.
    pub command: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

type GaugeU = Gauge<u64, AtomicU64>;

/// Every metric of a registry node.
#[derive(Debug)]
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    /// Writes by command and result.
    pub writes: Family<CommandLabels, Counter>,
    /// Write latency, submit to applied, seconds.
    pub write_seconds: Family<CommandOnly, Histogram, fn() -> Histogram>,
    /// Session keepalives accepted.
    pub keepalives: Counter,
    /// Requests this node forwarded to the leader, by kind.
    pub forwarded: Family<Forwarded, Counter>,
    /// On the leader: log entries each follower is behind.
    pub replication_lag: Family<Follower, GaugeU>,
    /// Snapshots this node built since it started.
    pub snapshots_built: GaugeU,
    /// Duration of the last snapshot build, ms.
    pub last_snapshot_ms: GaugeU,
    /// Sessions revoked because they expired.
    pub sessions_expired: Counter,
    /// Leadership transfers this node ran as the leader, by result.
    pub leader_transfers: Family<TransferResult, Counter>,
    /// Open watch streams (gRPC and HTTP).
    pub watchers: Gauge,
    /// Watchers that fell behind the feed and were resynced.
    pub watch_resyncs: Counter,
    /// Applied registry revision.
    pub revision: GaugeU,
    /// Instances stored.
    pub instances: GaugeU,
    /// Sessions stored.
    pub sessions: GaugeU,
    /// Approximate bytes of the subset index.
    pub index_bytes: GaugeU,
    /// Raft term.
    pub raft_term: GaugeU,
    /// Raft leader node id (0 when unknown).
    pub raft_leader: GaugeU,
    /// 1 when this node is the leader.
    pub raft_is_leader: GaugeU,
    /// Last log index.
    pub raft_last_log_index: GaugeU,
    /// Last applied log index.
    pub raft_applied_index: GaugeU,
    /// Commit index (on the leader: the index a quorum has matched; elsewhere the applied index).
    pub raft_commit_index: GaugeU,
    /// Last log index included in a snapshot.
    pub raft_snapshot_index: GaugeU,
    /// Last log index purged from the log (compacted into a snapshot).
    pub raft_purged_index: GaugeU,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `meshreg_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshreg");
        let writes = Family::<CommandLabels, Counter>::default();
        let write_seconds =
            Family::<CommandOnly, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let m = Self {
            writes: writes.clone(),
            write_seconds: write_seconds.clone(),
            keepalives: Counter::default(),
            forwarded: Family::default(),
            replication_lag: Family::default(),
            snapshots_built: GaugeU::default(),
            last_snapshot_ms: GaugeU::default(),
            sessions_expired: Counter::default(),
            leader_transfers: Family::default(),
            watchers: Gauge::default(),
            watch_resyncs: Counter::default(),
            revision: GaugeU::default(),
            instances: GaugeU::default(),
            sessions: GaugeU::default(),
            index_bytes: GaugeU::default(),
            raft_term: GaugeU::default(),
            raft_leader: GaugeU::default(),
            raft_is_leader: GaugeU::default(),
            raft_last_log_index: GaugeU::default(),
            raft_applied_index: GaugeU::default(),
            raft_commit_index: GaugeU::default(),
            raft_snapshot_index: GaugeU::default(),
            raft_purged_index: GaugeU::default(),
            registry: std::sync::Mutex::new(Registry::default()),
        };
        registry.register("writes", "Registry writes by command and result", writes);
        registry.register(
            "write_seconds",
            "Write latency from submit to applied, seconds",
            write_seconds,
        );
        registry.register(
            "keepalives",
            "Session keepalives accepted",
            m.keepalives.clone(),
        );
        registry.register(
            "forwarded",
            "Requests forwarded to the leader, by kind",
            m.forwarded.clone(),
        );
        registry.register(
            "raft_replication_lag",
            "On the leader: log entries each follower is behind",
            m.replication_lag.clone(),
        );
        registry.register(
            "snapshots_built",
            "Snapshots built since start",
            m.snapshots_built.clone(),
        );
        registry.register(
            "last_snapshot_ms",
            "Duration of the last snapshot build, ms",
            m.last_snapshot_ms.clone(),
        );
        registry.register(
            "sessions_expired",
            "Sessions revoked because they expired",
            m.sessions_expired.clone(),
        );
        registry.register(
            "leader_transfers",
            "Leadership transfers run on this node as the leader, by result",
            m.leader_transfers.clone(),
        );
        registry.register("watchers", "Open watch streams", m.watchers.clone());
        registry.register(
            "watch_resyncs",
            "Watchers resynced after falling behind the feed",
            m.watch_resyncs.clone(),
        );
        registry.register("revision", "Applied registry revision", m.revision.clone());
        registry.register("instances", "Instances stored", m.instances.clone());
        registry.register("sessions", "Sessions stored", m.sessions.clone());
        registry.register(
            "index_bytes",
            "Approximate bytes of the subset index",
            m.index_bytes.clone(),
        );
        registry.register("raft_term", "Raft term", m.raft_term.clone());
        registry.register(
            "raft_leader_id",
            "Raft leader node id, 0 when unknown",
            m.raft_leader.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this node is the Raft leader",
            m.raft_is_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last Raft log index",
            m.raft_last_log_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Last applied Raft log index",
            m.raft_applied_index.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Commit index: on the leader the index a quorum matched, elsewhere the applied index",
            m.raft_commit_index.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Last log index in a snapshot",
            m.raft_snapshot_index.clone(),
        );
        registry.register(
            "raft_purged_index",
            "Last log index purged from the log after a snapshot",
            m.raft_purged_index.clone(),
        );
        Self {
            registry: std::sync::Mutex::new(registry),
            ..m
        }
    }

    /// Lets another crate (xDS, MCP) register its metrics under `meshreg_`.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
