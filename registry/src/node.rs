//! A registry node: Raft over the sled store, the session lessor and the
//! read/write paths the APIs share. Writes go through the Raft leader;
//! reads are served from this node's applied state, optionally after
//! waiting for a `min_revision` or confirming leadership (linearizable).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::watch;

use crate::command::{Command, CommandResponse};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::{CommandLabels, CommandOnly, Metrics};
use crate::network::SingleNodeNetwork;
use crate::sessions::LeaseTable;
use crate::store::{self, MemberNode, NodeId, Raft, Shared};

/// How a read waits before it is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Wait until this node has applied at least this revision.
    pub min_revision: u64,
    /// Confirm leadership with a quorum first (openraft `ensure_linearizable`).
    pub linearizable: bool,
}

/// A running registry node.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    raft: Raft,
    shared: Arc<Shared>,
    leases: Mutex<LeaseTable>,
    /// Metrics of this node.
    pub metrics: Metrics,
    config: Arc<Config>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("revision", &self.shared.revision())
            .finish_non_exhaustive()
    }
}

fn map_leader_error(leader_id: Option<NodeId>, leader_node: Option<MemberNode>) -> Error {
    Error::NotLeader {
        leader_id,
        leader_addr: leader_node.as_ref().map(|n| n.grpc_addr.clone()),
        leader_http_addr: leader_node.map(|n| n.http_addr),
    }
}

impl Node {
    /// Opens the data directory, starts Raft, initializes a single-node
    /// cluster on first start, and starts the session lessor.
    ///
    /// # Errors
    /// When the data directory cannot be opened (another meshreg may hold
    /// it) or Raft cannot start.
    pub async fn start(config: Arc<Config>, me: MemberNode) -> anyhow::Result<Arc<Node>> {
        let dir = config.data_dir.join("sled");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let open_dir = dir.clone();
        let db = tokio::task::spawn_blocking(move || store::open_db(&open_dir))
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the database in {}: {e} (is another meshreg using this data directory?)",
                    dir.display()
                )
            })?;
        let (log_store, sm) = store::open(db, config.watch.feed_capacity)?;
        let shared = sm.shared();
        let raft_config = Arc::new(config.openraft()?);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            SingleNodeNetwork,
            log_store,
            sm,
        )
        .await?;
        if !raft.is_initialized().await? {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, me);
            raft.initialize(members).await?;
            tracing::info!(
                node_id = config.node_id,
                "initialized a new single-node cluster"
            );
        } else {
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            if membership.get_node(&config.node_id).is_none() {
                let ids: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
                raft.shutdown().await.ok();
                anyhow::bail!(
                    "node_id {} is not a member of the cluster stored in {} (members: {}); start with the node id this data directory belongs to",
                    config.node_id,
                    config.data_dir.display(),
                    ids.join(", ")
                );
            }
        }
        let (shutdown_tx, _) = watch::channel(false);
        let node = Arc::new(Node {
            id: config.node_id,
            raft,
            shared,
            leases: Mutex::new(LeaseTable::new(Duration::from_millis(
                config.sessions.leader_grace_ms,
            ))),
            metrics: Metrics::new(),
            config,
            shutdown_tx,
        });
        tokio::spawn(lessor_loop(node.clone()));
        Ok(node)
    }

    /// The applied state shared with the state machine.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// A receiver that turns `true` when the node shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Proposes a command and waits until it is applied.
    ///
    /// # Errors
    /// The state machine's rejection, [`Error::NotLeader`] with a hint, or
    /// [`Error::Unavailable`] when the write cannot commit in time.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse> {
        let name = cmd.name();
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let res = match tokio::time::timeout(timeout, self.raft.client_write(cmd)).await {
            Err(_) => Err(Error::Unavailable(format!(
                "the write was not committed within {} ms; the cluster may have lost its quorum",
                timeout.as_millis()
            ))),
            Ok(Ok(resp)) => match resp.data {
                CommandResponse::Rejected(e) => Err(e),
                other => Ok(other),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(map_leader_error(f.leader_id, f.leader_node))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(Error::Internal(format!("unexpected membership error: {e}")))
            }
            Ok(Err(RaftError::Fatal(f))) => {
                Err(Error::Unavailable(format!("raft has stopped: {f}")))
            }
        };
        let result = match &res {
            Ok(_) => "ok",
            Err(
                Error::NotLeader { .. }
                | Error::Unavailable(_)
                | Error::Internal(_)
                | Error::Storage(_),
            ) => "error",
            Err(_) => "rejected",
        };
        self.metrics
            .writes
            .get_or_create(&CommandLabels {
                command: name,
                result,
            })
            .inc();
        self.metrics
            .write_seconds
            .get_or_create(&CommandOnly { command: name })
            .observe(started.elapsed().as_secs_f64());
        res
    }

    /// Waits until a read with `opts` may be served from the local state.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when this node does not reach `min_revision`
    /// in time; [`Error::NotLeader`] when a linearizable read cannot
    /// confirm leadership.
    pub async fn read_barrier(&self, opts: ReadOptions) -> Result<()> {
        if opts.linearizable {
            match self.raft.ensure_linearizable().await {
                Ok(_) => {}
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return Err(map_leader_error(f.leader_id, f.leader_node));
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                    return Err(Error::Unavailable(format!(
                        "cannot confirm leadership: {q}"
                    )));
                }
                Err(RaftError::Fatal(f)) => {
                    return Err(Error::Unavailable(format!("raft has stopped: {f}")))
                }
            }
        }
        if opts.min_revision > self.shared.revision() {
            let wait = Duration::from_millis(self.config.min_revision_wait_ms);
            let mut rx = self.shared.subscribe();
            let want = opts.min_revision;
            let reached = tokio::time::timeout(wait, rx.wait_for(|r| *r >= want)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(Error::Unavailable(format!(
                    "this node is at revision {} and did not reach min_revision {want} within {} ms",
                    self.shared.revision(),
                    wait.as_millis()
                )));
            }
        }
        Ok(())
    }

    /// Waits until the namespace's last-change revision exceeds `index`, or
    /// `wait` passes (Consul-style blocking query). Returns at once when
    /// `index` is 0 or already exceeded.
    pub async fn block_on_namespace(&self, ns: &str, index: u64, wait: Duration) {
        if index == 0 {
            return;
        }
        let mut rx = self.shared.subscribe();
        let changed = |_: &u64| self.shared.read().registry.namespace_revision(ns) > index;
        let mut shutdown = self.shutdown_signal();
        tokio::select! {
            _ = tokio::time::timeout(wait, rx.wait_for(changed)) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id))
            .then_some(m.current_term)
    }

    /// Records a keepalive for session `id` and returns its TTL in ms.
    ///
    /// # Errors
    /// [`Error::NotFound`] (grant a new session and re-register) when the
    /// session does not exist or has expired; [`Error::NotLeader`] when
    /// this node does not lead.
    pub fn keepalive(&self, id: u64) -> Result<u64> {
        let Some(ttl) = self.shared.read().registry.session_ttl(id) else {
            return Err(Error::NotFound {
                kind: "session".into(),
                name: id.to_string(),
                hint: "; it expired or was revoked: grant a new session and register again".into(),
            });
        };
        if self.leader_term().is_none() {
            let m = self.raft.metrics().borrow().clone();
            let leader = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
            return Err(map_leader_error(m.current_leader, leader));
        }
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keepalive(Instant::now(), id, ttl);
        self.metrics.keepalives.inc();
        Ok(ttl)
    }

    /// True once a leader is known and this node has applied what it has
    /// seen committed.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader.is_some() && m.running_state.is_ok()
    }

    /// Refreshes the state gauges and encodes all metrics.
    pub fn render_metrics(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        let me = &self.metrics;
        me.raft_term.set(m.current_term);
        me.raft_leader.set(m.current_leader.unwrap_or(0));
        me.raft_is_leader
            .set(u64::from(m.current_leader == Some(self.id)));
        me.raft_last_log_index.set(m.last_log_index.unwrap_or(0));
        me.raft_applied_index
            .set(m.last_applied.map_or(0, |l| l.index));
        me.raft_snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index));
        {
            let s = self.shared.read();
            me.revision.set(s.registry.revision());
            me.instances.set(s.registry.instance_count() as u64);
            me.sessions.set(s.registry.session_count() as u64);
            me.index_bytes.set(s.registry.index_bytes() as u64);
        }
        me.encode()
    }

    /// Ends watch streams, blocking queries and the lessor, so the API
    /// servers can drain.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// Stops Raft (after [`Node::begin_shutdown`] and the servers drained).
    pub async fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// On the leader, revokes expired sessions in one batched entry per check.
async fn lessor_loop(node: Arc<Node>) {
    let interval = Duration::from_millis(node.config.sessions.check_interval_ms);
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let term = node.leader_term();
        let expired = {
            let s = node.shared.read();
            node.leases.lock().unwrap_or_else(|p| p.into_inner()).tick(
                Instant::now(),
                term,
                s.registry.sessions(),
            )
        };
        if expired.is_empty() {
            continue;
        }
        // A leader that stalled (GC pause, frozen VM) may have been deposed:
        // confirm with a quorum before revoking anything.
        if let Err(e) = node.raft.ensure_linearizable().await {
            tracing::info!(error = %e, "not revoking expired sessions: leadership not confirmed");
            continue;
        }
        let n = expired.len();
        match node.write(Command::RevokeSessions { ids: expired }).await {
            Ok(resp) => {
                node.metrics.sessions_expired.inc_by(n as u64);
                tracing::info!(sessions = n, ?resp, "revoked expired sessions");
            }
            Err(e) => tracing::warn!(error = %e, "revoking expired sessions failed; will retry"),
        }
    }
}
