//! A registry node: Raft over the sled store and the gRPC peer transport,
//! the session lessor, and the read and write paths the APIs share.
//!
//! Any node takes any request. Writes and keepalives reaching a follower
//! are forwarded to the leader over the peer port; while no leader is known
//! (an election) they wait for one, and when leadership moves while they
//! are on their way they go again to the new leader, up to
//! `write_timeout_ms`. Reads are served from this node's applied state,
//! optionally after waiting for a `min_revision` or, for linearizable
//! reads, after a read index from the leader has been applied here.
//!
//! Leadership can be handed to a chosen voter ([`Node::transfer_leader`]):
//! the leader holds new proposals, waits until the target has its whole
//! log, and tells it to start an election at once (Raft thesis §3.10,
//! "TimeoutNow"; openraft 0.9 has no transfer API of its own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshreg_proto::raft::v1 as pb;
use meshreg_proto::raft::v1::raft_peer_client::RaftPeerClient;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, RwLock, RwLockReadGuard};
use tonic::transport::Channel;

use crate::command::{Command, CommandResponse};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::{CommandLabels, CommandOnly, Forwarded, Metrics, TransferResult};
use crate::network::{
    decode_reply, encode_request, peer_client, status_error, Faults, GrpcNetwork, PeerError,
};
use crate::sessions::LeaseTable;
use crate::store::{self, MemberNode, NodeId, Raft, Shared};

/// How a read waits before it is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Wait until this node has applied at least this revision.
    pub min_revision: u64,
    /// Linearizable: on the leader, confirm leadership with a quorum
    /// (openraft `ensure_linearizable`); on a follower, get a read index
    /// from the leader and wait until it is applied here.
    pub linearizable: bool,
}

/// A running registry node.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    me: MemberNode,
    raft: Raft,
    shared: Arc<Shared>,
    leases: Mutex<LeaseTable>,
    /// Metrics of this node.
    pub metrics: Metrics,
    config: Arc<Config>,
    shutdown_tx: watch::Sender<bool>,
    faults: Arc<Faults>,
    peers: Mutex<HashMap<NodeId, (String, RaftPeerClient<Channel>)>>,
    needs_join: bool,
    /// Held shared by every proposal (client write, membership change) and
    /// exclusively by a leadership transfer, so the target's log cannot
    /// fall behind between its catch-up and its election.
    proposals: RwLock<()>,
    /// One leadership transfer at a time.
    transfer: tokio::sync::Mutex<()>,
    /// Client writes on their way to Raft (see [`batcher`]).
    proposals_tx: tokio::sync::mpsc::UnboundedSender<Proposal>,
    /// The term this node was last seen leading and since when (sampled by
    /// the lessor loop and by a transfer).
    led_since: Mutex<Option<(u64, Instant)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("revision", &self.shared.revision())
            .finish_non_exhaustive()
    }
}

fn not_leader(leader_id: Option<NodeId>, leader_node: Option<&MemberNode>) -> Error {
    Error::NotLeader {
        leader_id,
        leader_addr: leader_node.map(|n| n.grpc_addr.clone()),
        leader_http_addr: leader_node.map(|n| n.http_addr.clone()),
    }
}

/// A failed membership change as the API reports it: [`Error::NotLeader`]
/// with a hint, or [`Error::Unavailable`].
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            not_leader(f.leader_id, f.leader_node.as_ref())
        }
        other => Error::Unavailable(format!("membership change failed: {other}")),
    }
}

/// How long a leadership transfer waits for writes in flight to finish and
/// for the target to replicate the leader's whole log.
pub const TRANSFER_CATCH_UP: Duration = Duration::from_secs(5);

/// How long a leadership transfer waits, at least, for the target to win
/// its election after TimeoutNow (three election timeouts when longer).
pub const TRANSFER_ELECTION: Duration = Duration::from_secs(5);

/// Timeout of the TimeoutNow call to the transfer target.
const TIMEOUT_NOW_RPC: Duration = Duration::from_secs(2);

/// The voter a leadership transfer goes to. `to` is checked against the
/// membership (`voters`: voter id → log index it has matched; `learners`);
/// 0 picks the voter other than `me` that has matched the most, the lowest
/// id among equals.
///
/// # Errors
/// [`Error::InvalidArgument`] (field `to`) for `me`, a learner or an
/// unknown id; [`Error::FailedPrecondition`] when `me` is the only voter.
fn pick_transfer_target(
    me: NodeId,
    to: NodeId,
    voters: &BTreeMap<NodeId, u64>,
    learners: &BTreeSet<NodeId>,
) -> Result<NodeId> {
    let list = || {
        voters
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if to == 0 {
        // Highest matched index first; BTreeMap order makes the lowest id
        // win a tie (max_by_key keeps the last maximum, hence the reverse).
        return voters
            .iter()
            .rev()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(_, matched)| **matched)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "node {me} is the only voter; add a voter before transferring leadership"
                ))
            });
    }
    if to == me {
        return Err(Error::invalid(
            "to",
            format!(
                "node {to} already leads; name another voter (voters: {})",
                list()
            ),
        ));
    }
    if voters.contains_key(&to) {
        return Ok(to);
    }
    let what = if learners.contains(&to) {
        "is a learner, not a voter; only voters can lead"
    } else {
        "is not a member of the cluster"
    };
    Err(Error::invalid(
        "to",
        format!("node {to} {what} (voters: {})", list()),
    ))
}

/// Whom a peer call goes to, as its errors and metrics name it.
#[derive(Debug, Clone, Copy)]
enum PeerRole {
    /// The leader, forwarded a request of this kind (counted in
    /// `meshreg_forwarded_total{kind}`).
    Leader(&'static str),
    /// The target of a leadership transfer.
    TransferTarget,
}

/// Turns this node's election timer off while it lives: the old leader of a
/// transfer, once it has voted for the target, must not campaign against
/// it. Turned back on when dropped, also when the transfer is cancelled.
struct ElectionHold<'a>(&'a Raft);

impl<'a> ElectionHold<'a> {
    fn new(raft: &'a Raft) -> Self {
        raft.runtime_config().elect(false);
        Self(raft)
    }
}

impl Drop for ElectionHold<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().elect(true);
    }
}

/// Human name of a Raft server state.
pub fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "LEADER",
        ServerState::Follower => "FOLLOWER",
        ServerState::Candidate => "CANDIDATE",
        ServerState::Learner => "LEARNER",
        ServerState::Shutdown => "SHUTDOWN",
    }
}

impl Node {
    /// Opens the data directory and starts Raft. On first start without
    /// `join` addresses it initializes a single-node cluster (the seed);
    /// with them, [`Node::join_cluster`] must be run once the peer server
    /// listens. Starts the session lessor.
    ///
    /// # Errors
    /// When the data directory cannot be opened (another meshreg may hold
    /// it), it belongs to another node id, or Raft cannot start.
    pub async fn start(
        config: Arc<Config>,
        me: MemberNode,
        faults: Arc<Faults>,
    ) -> anyhow::Result<Arc<Node>> {
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
        let network = GrpcNetwork::new(
            config.node_id,
            faults.clone(),
            crate::network::MAX_APPEND_BYTES,
        )
        .with_log_store(&log_store);
        let raft = Raft::new(config.node_id, raft_config, network, log_store, sm).await?;
        let mut needs_join = false;
        if !raft.is_initialized().await? {
            if config.join.is_empty() {
                let mut members = BTreeMap::new();
                members.insert(config.node_id, me.clone());
                raft.initialize(members).await?;
                tracing::info!(
                    node_id = config.node_id,
                    "initialized a new cluster with this node as its seed"
                );
            } else {
                needs_join = true;
            }
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
        let (proposals_tx, proposals_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(batcher(raft.clone(), proposals_rx));
        let node = Arc::new(Node {
            id: config.node_id,
            me,
            raft,
            shared,
            leases: Mutex::new(LeaseTable::new(Duration::from_millis(
                config.sessions.leader_grace_ms,
            ))),
            metrics: Metrics::new(),
            config,
            shutdown_tx,
            faults,
            peers: Mutex::new(HashMap::new()),
            needs_join,
            proposals: RwLock::new(()),
            transfer: tokio::sync::Mutex::new(()),
            proposals_tx,
            led_since: Mutex::new(None),
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

    /// Fault injection switches of this node.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// This node's addresses.
    pub fn member(&self) -> &MemberNode {
        &self.me
    }

    /// A receiver that turns `true` when the node shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    fn raft_metrics(&self) -> RaftMetrics<NodeId, MemberNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, MemberNode)> {
        let m = self.raft_metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// True while this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    fn leader_term(&self) -> Option<u64> {
        let m = self.raft_metrics();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id))
            .then_some(m.current_term)
    }

    /// [`Error::NotLeader`] with the leader this node knows of.
    fn not_leader_here(&self) -> Error {
        let leader = self.leader();
        not_leader(leader.as_ref().map(|l| l.0), leader.as_ref().map(|l| &l.1))
    }

    /// How long this node has led in `term` as far as it has noticed: zero
    /// the first time it is asked about a term. `None` (not leading) resets.
    fn led_for(&self, term: Option<u64>) -> Duration {
        let mut since = self.led_since.lock().unwrap_or_else(|p| p.into_inner());
        match (term, *since) {
            (Some(t), Some((seen, at))) if seen == t => at.elapsed(),
            (Some(t), _) => {
                *since = Some((t, Instant::now()));
                Duration::ZERO
            }
            (None, _) => {
                *since = None;
                Duration::ZERO
            }
        }
    }

    /// A shared hold on proposing (see `proposals`).
    async fn proposing(&self) -> RwLockReadGuard<'_, ()> {
        self.proposals.read().await
    }

    /// Where a request that must run on the leader goes from here: `None`
    /// when this node leads (or is the leader it waited for), the leader
    /// when it is another node. Waits for a leader up to `write_timeout_ms`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] ("no Raft leader is known to `to_do`") when
    /// none is known in time.
    async fn leader_elsewhere(&self, to_do: &str) -> Result<Option<(NodeId, MemberNode)>> {
        if self.leader_term().is_some() {
            return Ok(None);
        }
        let wait = Duration::from_millis(self.config.write_timeout_ms);
        let leader = self
            .wait_for_leader(wait)
            .await
            .ok_or_else(|| Error::Unavailable(format!("no Raft leader is known to {to_do}")))?;
        Ok((leader.0 != self.id).then_some(leader))
    }

    /// Waits until some leader is known, up to `timeout`.
    async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, MemberNode)> {
        if let Some(l) = self.leader() {
            return Some(l);
        }
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        self.leader()
    }

    fn peer(&self, id: NodeId, node: &MemberNode) -> Result<RaftPeerClient<Channel>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, c)) = peers.get(&id) {
            if *addr == node.raft_addr {
                return Ok(c.clone());
            }
        }
        let c = peer_client(&node.raft_addr).map_err(Error::Unavailable)?;
        peers.insert(id, (node.raft_addr.clone(), c.clone()));
        Ok(c)
    }

    /// Sends a request to node `peer` over the peer port and decodes its
    /// `Result<Resp, Error>`.
    async fn call_peer<Req, Resp, F, Fut>(
        &self,
        role: PeerRole,
        (peer, node): (NodeId, MemberNode),
        req: &Req,
        timeout: Duration,
        call: F,
    ) -> Result<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, tonic::Request<pb::PeerRequest>) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<tonic::Response<pb::PeerReply>, tonic::Status>,
        >,
    {
        let role_name = match role {
            PeerRole::Leader(_) => "the leader",
            PeerRole::TransferTarget => "the transfer target",
        };
        let unreachable = |why: String| {
            Error::Unavailable(format!(
                "cannot reach {role_name} (node {peer} at {}): {why}",
                node.raft_addr
            ))
        };
        if self.faults.is_blocked(peer) {
            return Err(unreachable("link cut by fault injection".into()));
        }
        if let PeerRole::Leader(kind) = role {
            self.metrics
                .forwarded
                .get_or_create(&Forwarded { kind })
                .inc();
        }
        let client = self.peer(peer, &node)?;
        let mut request =
            tonic::Request::new(encode_request(self.id, req).map_err(Error::Internal)?);
        request.set_timeout(timeout);
        let reply = call(client, request)
            .await
            .map_err(|s| match status_error::<Error>(&s) {
                PeerError::Unreachable(m) | PeerError::Network(m) => unreachable(m),
                PeerError::Remote(e) => e,
            })?;
        match decode_reply::<Resp, Error>(&reply.into_inner()) {
            Ok(v) => Ok(v),
            Err(PeerError::Remote(e)) => Err(e),
            Err(PeerError::Unreachable(m) | PeerError::Network(m)) => Err(unreachable(m)),
        }
    }

    /// Proposes a command and waits until it is applied, forwarding it to
    /// the leader when this node does not lead.
    ///
    /// # Errors
    /// The state machine's rejection; [`Error::Unavailable`] when no leader
    /// can be reached or the write does not commit in time.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse> {
        let name = cmd.name();
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let res = self.write_routed(cmd, started + timeout).await;
        self.record_write(name, started, &res);
        res
    }

    async fn write_routed(&self, cmd: Command, deadline: Instant) -> Result<CommandResponse> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.write_local(cmd.clone()).await {
                Err(Error::NotLeader {
                    leader_id: Some(l), ..
                }) if l != self.id => {
                    let Some(leader) = self.leader().filter(|(id, _)| *id == l) else {
                        // The leader is known by id but not yet by address
                        // (its membership entry is still being applied).
                        if remaining.is_zero() {
                            return Err(Error::Unavailable(format!(
                                "the leader (node {l}) is not reachable from this node yet"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
                        continue;
                    };
                    let res = self
                        .call_peer(
                            PeerRole::Leader("write"),
                            leader,
                            &cmd,
                            remaining,
                            |mut c, r| async move { c.forward(r).await },
                        )
                        .await;
                    // The old leader did not propose it: safe to send again.
                    if !leader_moved(&res, remaining).await {
                        return res;
                    }
                }
                Err(Error::NotLeader {
                    leader_id: None, ..
                }) => {
                    if remaining.is_zero() || self.wait_for_leader(remaining).await.is_none() {
                        return Err(Error::Unavailable(format!(
                            "no Raft leader elected within {} ms; is a quorum of nodes up?",
                            self.config.write_timeout_ms
                        )));
                    }
                }
                other => return other,
            }
        }
    }

    /// Proposes a command on this node only: [`Error::NotLeader`] when it
    /// does not lead. The target of forwarded writes.
    ///
    /// # Errors
    /// As [`Node::write`], without forwarding.
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResponse> {
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(_proposing) = tokio::time::timeout_at(deadline, self.proposals.read()).await else {
            return Err(Error::Unavailable(format!(
                "a leadership transfer held this write for {} ms; retry it",
                timeout.as_millis()
            )));
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.proposals_tx.send((cmd, done)).is_err() {
            return Err(Error::Unavailable("raft has stopped".into()));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(Error::Unavailable(format!(
                "the write was not committed within {} ms; the cluster may have lost its quorum",
                timeout.as_millis()
            ))),
            Ok(Err(_)) => Err(Error::Unavailable("raft has stopped".into())),
            Ok(Ok(res)) => res,
        }
    }

    fn record_write(&self, name: &'static str, started: Instant, res: &Result<CommandResponse>) {
        let result = match res {
            Ok(_) => "ok",
            Err(
                Error::NotLeader { .. }
                | Error::Unavailable(_)
                | Error::DeadlineExceeded(_)
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
    }

    /// Waits until a read with `opts` may be served from the local state.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when this node does not reach `min_revision`
    /// or the read index in time, or no leader confirms the read.
    pub async fn read_barrier(&self, opts: ReadOptions) -> Result<()> {
        let wait = Duration::from_millis(self.config.min_revision_wait_ms);
        if opts.linearizable {
            let index = match self.read_index_local().await {
                Err(Error::NotLeader { .. }) => {
                    let leader = self.wait_for_leader(wait).await.ok_or_else(|| {
                        Error::Unavailable(
                            "no Raft leader is known; a linearizable read needs one".into(),
                        )
                    })?;
                    self.call_peer(
                        PeerRole::Leader("read_index"),
                        leader,
                        &(),
                        wait,
                        |mut c, r| async move { c.read_index(r).await },
                    )
                    .await?
                }
                other => other?,
            };
            let reached = self
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(index), "read index applied")
                .await;
            if reached.is_err() {
                return Err(Error::Unavailable(format!(
                    "this node did not apply the read index {index} within {} ms",
                    wait.as_millis()
                )));
            }
        }
        if opts.min_revision > self.shared.revision() {
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

    /// On the leader: confirms leadership with a quorum and returns the log
    /// index a linearizable read must wait for.
    ///
    /// # Errors
    /// [`Error::NotLeader`] on a follower; [`Error::Unavailable`] without a quorum.
    pub async fn read_index_local(&self) -> Result<u64> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_id, f.leader_node.as_ref()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(
                Error::Unavailable(format!("cannot confirm leadership: {q}")),
            ),
            Err(RaftError::Fatal(f)) => Err(Error::Unavailable(format!("raft has stopped: {f}"))),
        }
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

    /// Records a keepalive for session `id` on the leader, forwarding it
    /// when this node does not lead. Returns the session's TTL in ms.
    ///
    /// # Errors
    /// [`Error::NotFound`] (grant a new session and re-register) when the
    /// session does not exist or has expired; [`Error::Unavailable`] when
    /// no leader can be reached.
    pub async fn keepalive(&self, id: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_millis(self.config.write_timeout_ms);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.keepalive_local(id) {
                Err(Error::NotLeader { .. }) => {
                    let leader = self.wait_for_leader(remaining).await.ok_or_else(|| {
                        Error::Unavailable("no Raft leader is known to renew the session".into())
                    })?;
                    if leader.0 == self.id {
                        return self.keepalive_local(id);
                    }
                    let res = self
                        .call_peer(
                            PeerRole::Leader("keepalive"),
                            leader,
                            &id,
                            remaining,
                            |mut c, r| async move { c.forward_keep_alive(r).await },
                        )
                        .await;
                    if !leader_moved(&res, remaining).await {
                        return res;
                    }
                }
                other => return other,
            }
        }
    }

    /// Records a keepalive on this node, which must lead.
    ///
    /// # Errors
    /// [`Error::NotLeader`] on a follower; [`Error::NotFound`] for an
    /// unknown or expired session.
    pub fn keepalive_local(&self, id: u64) -> Result<u64> {
        if self.leader_term().is_none() {
            return Err(self.not_leader_here());
        }
        let Some(ttl) = self.shared.read().registry.session_ttl(id) else {
            return Err(Error::NotFound {
                kind: "session".into(),
                name: id.to_string(),
                hint: "; it expired or was revoked: grant a new session and register again".into(),
            });
        };
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keepalive(Instant::now(), id, ttl);
        self.metrics.keepalives.inc();
        Ok(ttl)
    }

    /// Adds a node: as a learner, then, once it has caught up, as a voter.
    /// Forwarded to the leader from a follower. Idempotent for a node that
    /// is already a voter at the same addresses. Returns (voters, leader).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no leader is reachable or the change
    /// fails; [`Error::FailedPrecondition`] when the id is taken by a node
    /// at other addresses.
    pub async fn add_node(&self, id: NodeId, member: MemberNode) -> Result<(Vec<u64>, u64)> {
        if let Some((leader, node)) = self.leader_elsewhere("add the node").await? {
            let req = pb::JoinRequest {
                node_id: id,
                raft_addr: member.raft_addr,
                grpc_addr: member.grpc_addr,
                http_addr: member.http_addr,
            };
            let mut c = self.peer(leader, &node)?;
            let r = c
                .join(req)
                .await
                .map_err(|s| {
                    Error::Unavailable(format!(
                        "forwarding the join to node {leader}: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            return Ok((r.voters, r.leader_id));
        }
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        match membership.get_node(&id) {
            Some(existing) if *existing == member && is_voter => {
                return Ok((membership.voter_ids().collect(), self.id));
            }
            Some(existing) if *existing != member => {
                return Err(Error::FailedPrecondition(format!(
                    "node id {id} already belongs to a member at {existing}; remove it first or use another id"
                )));
            }
            _ => {}
        }
        tracing::info!(node_id = id, %member, "adding node as a learner");
        {
            let _proposing = self.proposing().await;
            self.raft
                .add_learner(id, member, false)
                .await
                .map_err(membership_error)?;
        }
        // openraft's own "blocking" add_learner returns once the learner is
        // within its lag threshold, which a node that has received nothing
        // can already be. Promote only once the learner has replicated the
        // whole log as it stood when it was added.
        let target = self.raft_metrics().last_log_index.unwrap_or(0);
        let wait = Duration::from_millis(self.config.raft.learner_catch_up_timeout_ms);
        let caught_up = self
            .raft
            .wait(Some(wait))
            .metrics(|m| matched_index(m, id) >= target, "learner caught up")
            .await;
        if caught_up.is_err() {
            return Err(Error::Unavailable(format!(
                "node {id} did not replicate the log up to index {target} within {} ms; it stays a learner (retry to promote it)",
                wait.as_millis()
            )));
        }
        tracing::info!(
            node_id = id,
            index = target,
            "learner caught up; promoting to voter"
        );
        let resp = {
            let _proposing = self.proposing().await;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(membership_error)?
        };
        let voters = resp
            .membership
            .as_ref()
            .map(|m| m.voter_ids().collect())
            .unwrap_or_default();
        Ok((voters, self.id))
    }

    /// Removes a node from the voters and the cluster (leader only).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id; [`Error::FailedPrecondition`]
    /// for the last voter; [`Error::Unavailable`] when no leader is
    /// reachable within the write timeout.
    pub async fn remove_node(&self, id: NodeId) -> Result<Vec<u64>> {
        if let Some(leader) = self.leader_elsewhere("change the membership").await? {
            let wait = Duration::from_millis(self.config.write_timeout_ms);
            return self
                .call_peer(
                    PeerRole::Leader("remove_node"),
                    leader,
                    &id,
                    wait,
                    |mut c, r| async move { c.remove_node(r).await },
                )
                .await;
        }
        self.remove_node_local(id).await
    }

    /// [`Node::remove_node`] on this node only: [`Error::NotLeader`] with a
    /// hint when it does not lead. The target of forwarded removals.
    ///
    /// # Errors
    /// As [`Node::remove_node`], and [`Error::NotLeader`].
    pub async fn remove_node_local(&self, id: NodeId) -> Result<Vec<u64>> {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Error::not_found("node", id.to_string()));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Error::FailedPrecondition(
                "cannot remove the last voter".into(),
            ));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let _proposing = self.proposing().await;
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(resp
            .membership
            .as_ref()
            .map(|m| m.voter_ids().collect())
            .unwrap_or_default())
    }

    /// Hands leadership to voter `to` (0: the other voter that has
    /// replicated the most), forwarded to the leader from a follower.
    /// Returns the new leader and its term.
    ///
    /// On the leader: new proposals are held (they wait, then go to the new
    /// leader) while the target replicates the whole log, up to
    /// [`TRANSFER_CATCH_UP`]; the target is told to start an election now
    /// (`RaftPeer.TimeoutNow`), and the answer comes once this node sees a
    /// new leader, or after [`TRANSFER_ELECTION`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (field `to`) for the leader itself, a
    /// learner or an unknown id; [`Error::FailedPrecondition`] when there is
    /// no other voter or another transfer is running; [`Error::Unavailable`]
    /// when no leader is reachable, the target does not catch up in time,
    /// or it does not win the election (the message says who leads).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(NodeId, u64)> {
        if let Some(leader) = self.leader_elsewhere("transfer leadership from").await? {
            return self
                .call_peer(
                    PeerRole::Leader("transfer_leader"),
                    leader,
                    &to,
                    self.transfer_budget(),
                    |mut c, r| async move { c.transfer_leader(r).await },
                )
                .await;
        }
        self.transfer_leader_local(to).await
    }

    /// [`Node::transfer_leader`] on this node only: [`Error::NotLeader`]
    /// when it does not lead. The target of forwarded transfers.
    ///
    /// # Errors
    /// As [`Node::transfer_leader`], without forwarding.
    pub async fn transfer_leader_local(&self, to: NodeId) -> Result<(NodeId, u64)> {
        let Ok(_one) = self.transfer.try_lock() else {
            return Err(Error::FailedPrecondition(
                "a leadership transfer is already running on this leader; wait for its answer"
                    .into(),
            ));
        };
        let res = self.run_transfer(to).await;
        let result = match &res {
            Ok(_) => "ok",
            Err(
                Error::InvalidArgument { .. }
                | Error::FailedPrecondition(_)
                | Error::NotLeader { .. },
            ) => "rejected",
            Err(_) => "failed",
        };
        self.metrics
            .leader_transfers
            .get_or_create(&TransferResult { result })
            .inc();
        res
    }

    /// Longest a transfer can take on the leader (lease wait, catch-up,
    /// TimeoutNow, election), plus a margin: the forwarding timeout.
    fn transfer_budget(&self) -> Duration {
        self.leader_lease()
            + TRANSFER_CATCH_UP
            + TIMEOUT_NOW_RPC
            + self.transfer_election_wait()
            + Duration::from_secs(1)
    }

    /// openraft's leader lease: `election_timeout_max`.
    fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_timeout_max_ms)
    }

    fn transfer_election_wait(&self) -> Duration {
        TRANSFER_ELECTION.max(3 * self.leader_lease())
    }

    async fn run_transfer(&self, to: NodeId) -> Result<(NodeId, u64)> {
        let Some(term) = self.leader_term() else {
            return Err(self.not_leader_here());
        };
        let (to, target) = {
            let m = self.raft_metrics();
            let membership = m.membership_config.membership();
            let voters: BTreeMap<NodeId, u64> = membership
                .voter_ids()
                .map(|id| (id, matched_index(&m, id)))
                .collect();
            let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
            let to = pick_transfer_target(self.id, to, &voters, &learners)?;
            let node = membership.get_node(&to).cloned().ok_or_else(|| {
                Error::Internal(format!("voter {to} has no addresses in the membership"))
            })?;
            (to, node)
        };
        // openraft rejects a vote request while the voter's own vote is
        // within its leader lease of its last change; on a leader that
        // change was its election. Once that has passed, this leader grants
        // the target its vote, which with the target's own is a majority of
        // three.
        let lease = self.leader_lease();
        let led = self.led_for(Some(term));
        if led < lease {
            tokio::time::sleep(lease - led).await;
        }
        let deadline = tokio::time::Instant::now() + TRANSFER_CATCH_UP;
        let Ok(_held) = tokio::time::timeout_at(deadline, self.proposals.write()).await else {
            return Err(Error::Unavailable(format!(
                "writes in flight did not finish within {} ms; node {} still leads",
                TRANSFER_CATCH_UP.as_millis(),
                self.id
            )));
        };
        if self.leader_term() != Some(term) {
            return Err(self.not_leader_here());
        }
        let last = self.raft_metrics().last_log_index.unwrap_or(0);
        let caught_up = self
            .raft
            .wait(Some(
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            ))
            .metrics(
                |m| matched_index(m, to) >= last,
                "transfer target caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(Error::Unavailable(format!(
                "node {to} did not replicate the log up to index {last} within {} ms (it has {}); node {} still leads",
                TRANSFER_CATCH_UP.as_millis(),
                matched_index(&self.raft_metrics(), to),
                self.id
            )));
        }
        let _no_campaign = ElectionHold::new(&self.raft);
        tracing::info!(
            to,
            term,
            index = last,
            "transfer target caught up; sending TimeoutNow"
        );
        let () = self
            .call_peer(
                PeerRole::TransferTarget,
                (to, target),
                &term,
                TIMEOUT_NOW_RPC,
                |mut c, r| async move { c.timeout_now(r).await },
            )
            .await?;
        let wait = self.transfer_election_wait();
        let elected = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.id),
                "a new leader",
            )
            .await;
        let m = elected.unwrap_or_else(|_| self.raft_metrics());
        match m.current_leader {
            Some(l) if l == to => {
                tracing::info!(to, term = m.current_term, "leadership transferred");
                Ok((to, m.current_term))
            }
            Some(l) if l != self.id => Err(Error::Unavailable(format!(
                "node {l} won the election in term {} instead of node {to}; retry the transfer",
                m.current_term
            ))),
            Some(_) => Err(Error::Unavailable(format!(
                "node {to} did not win an election within {} ms; node {} still leads (term {}); see node {to}'s log for why its election failed",
                wait.as_millis(),
                self.id,
                m.current_term
            ))),
            None => Err(Error::Unavailable(format!(
                "node {to} did not win an election within {} ms and node {} stepped down; no leader is known yet (term {}), the cluster is electing one",
                wait.as_millis(),
                self.id,
                m.current_term
            ))),
        }
    }

    /// On a transfer's target: starts an election now, on the word of the
    /// leader `from` in `leader_term` (`RaftPeer.TimeoutNow`). A no-op on a
    /// leader.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] when this node is not a voter or is in
    /// a newer term than the sender; [`Error::Unavailable`] when Raft has
    /// stopped.
    pub async fn timeout_now(&self, from: NodeId, leader_term: u64) -> Result<()> {
        let m = self.raft_metrics();
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return Err(Error::FailedPrecondition(format!(
                "node {} is not a voter and cannot become leader",
                self.id
            )));
        }
        if m.current_term > leader_term {
            return Err(Error::FailedPrecondition(format!(
                "node {} is in term {}, after node {from}'s term {leader_term}; leadership has moved since",
                self.id, m.current_term
            )));
        }
        if m.state == ServerState::Leader {
            return Ok(());
        }
        tracing::info!(
            from,
            leader_term,
            "TimeoutNow from the leader: starting an election"
        );
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|f| Error::Unavailable(format!("raft has stopped: {f}")))
    }

    /// Asks the members in `seeds` (Raft addresses) to add this node,
    /// retrying with capped exponential backoff and jitter until one does
    /// or the node shuts down. Only for a node started with `join`.
    pub async fn join_cluster(self: Arc<Self>) {
        if !self.needs_join {
            return;
        }
        let seeds = self.config.join.clone();
        let mut backoff = Duration::from_millis(200);
        let mut shutdown = self.shutdown_signal();
        loop {
            for seed in &seeds {
                let req = pb::JoinRequest {
                    node_id: self.id,
                    raft_addr: self.me.raft_addr.clone(),
                    grpc_addr: self.me.grpc_addr.clone(),
                    http_addr: self.me.http_addr.clone(),
                };
                let res = match peer_client(seed) {
                    Ok(mut c) => c
                        .join(req)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| s.to_string()),
                    Err(e) => Err(e),
                };
                match res {
                    Ok(r) => {
                        tracing::info!(seed, voters = ?r.voters, leader = r.leader_id, "joined the cluster");
                        return;
                    }
                    Err(e) => tracing::warn!(seed, error = %e, "join attempt failed; will retry"),
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// True once a leader is known and this node is a member of its cluster.
    pub fn is_ready(&self) -> bool {
        let m = self.raft_metrics();
        m.current_leader.is_some()
            && m.running_state.is_ok()
            && m.membership_config
                .membership()
                .get_node(&self.id)
                .is_some()
    }

    /// Cluster status as this node sees it (`meshreg ctl cluster status`).
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members: Vec<MemberStatus> = membership
            .nodes()
            .map(|(id, n)| {
                let matched = matched_index(&m, *id);
                MemberStatus {
                    id: *id,
                    node: n.clone(),
                    voter: voters.contains(id),
                    matched_index: if *id == self.id { last } else { matched },
                    lag: if m.replication.is_some() {
                        last.saturating_sub(if *id == self.id { last } else { matched })
                    } else {
                        0
                    },
                }
            })
            .collect();
        // openraft 0.9 does not export the commit index: on the leader it is
        // the highest index a quorum of voters has matched; elsewhere the
        // applied index is the best lower bound this node knows.
        let committed = if m.replication.is_some() {
            let mut matched: Vec<u64> = members
                .iter()
                .filter(|s: &&MemberStatus| s.voter)
                .map(|s| s.matched_index)
                .collect();
            matched.sort_unstable_by(|a, b| b.cmp(a));
            matched.get(matched.len() / 2).copied().unwrap_or(0)
        } else {
            m.last_applied.map_or(0, |l| l.index)
        };
        ClusterStatus {
            id: self.id,
            state: state_name(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: last,
            committed,
            applied: m.last_applied.map_or(0, |l| l.index),
            snapshot: m.snapshot.map_or(0, |l| l.index),
            purged: m.purged.map_or(0, |l| l.index),
            revision: self.shared.revision(),
            members,
        }
    }

    /// Refreshes the state gauges and encodes all metrics.
    pub fn render_metrics(&self) -> String {
        let st = self.status();
        let me = &self.metrics;
        me.raft_term.set(st.term);
        me.raft_leader.set(st.leader.unwrap_or(0));
        me.raft_is_leader.set(u64::from(st.leader == Some(self.id)));
        me.raft_last_log_index.set(st.last_log_index);
        me.raft_applied_index.set(st.applied);
        me.raft_commit_index.set(st.committed);
        me.raft_snapshot_index.set(st.snapshot);
        me.raft_purged_index.set(st.purged);
        for m in &st.members {
            if m.id != self.id && st.leader == Some(self.id) {
                me.replication_lag
                    .get_or_create(&crate::metrics::Follower { follower: m.id })
                    .set(m.lag);
            }
        }
        me.snapshots_built.set(self.shared.snapshots_built());
        me.last_snapshot_ms.set(self.shared.last_snapshot_ms());
        {
            let s = self.shared.read();
            me.revision.set(s.registry.revision());
            me.instances.set(s.registry.instance_count() as u64);
            me.sessions.set(s.registry.session_count() as u64);
            me.index_bytes.set(s.registry.index_bytes() as u64);
        }
        me.encode()
    }

    /// Ends watch streams, blocking queries, the lessor and join attempts,
    /// so the API servers can drain.
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

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Its addresses.
    pub node: MemberNode,
    /// Voter (true) or learner.
    pub voter: bool,
    /// On the leader: last log index replicated to it.
    pub matched_index: u64,
    /// On the leader: entries it is behind.
    pub lag: u64,
}

/// A node's view of its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub id: NodeId,
    /// LEADER, FOLLOWER, ...
    pub state: &'static str,
    /// Current term.
    pub term: u64,
    /// Leader id, when known.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_log_index: u64,
    /// Committed index as far as applied here.
    pub committed: u64,
    /// Applied index.
    pub applied: u64,
    /// Last index in a snapshot.
    pub snapshot: u64,
    /// Last index purged from the log.
    pub purged: u64,
    /// Applied registry revision.
    pub revision: u64,
    /// Members.
    pub members: Vec<MemberStatus>,
}

/// True when a request forwarded to the leader failed only because
/// leadership moved while it was on its way (the old leader answered
/// NotLeader, so it did not act on it) and time is left: then pauses
/// briefly, for this node to learn the new leader, before it is sent again.
async fn leader_moved<T>(res: &Result<T>, remaining: Duration) -> bool {
    if matches!(res, Err(Error::NotLeader { .. })) && !remaining.is_zero() {
        tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
        return true;
    }
    false
}

/// On the leader: the last log index replicated to `id` (0 when unknown).
fn matched_index(m: &RaftMetrics<NodeId, MemberNode>, id: NodeId) -> u64 {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |l| l.index)
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
        node.led_for(term);
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
        match node
            .write_local(Command::RevokeSessions { ids: expired })
            .await
        {
            Ok(resp) => {
                node.metrics.sessions_expired.inc_by(n as u64);
                tracing::info!(sessions = n, ?resp, "revoked expired sessions");
            }
            Err(e) => tracing::warn!(error = %e, "revoking expired sessions failed; will retry"),
        }
    }
}

/// A client write waiting for Raft, and where its outcome goes.
type Proposal = (
    Command,
    tokio::sync::oneshot::Sender<Result<CommandResponse>>,
);

/// The most client writes proposed as one log entry.
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// The most bytes of commands in one batched log entry (the limit of a
/// single command, [`crate::model::validate::MAX_COMMAND_BYTES`]).
pub const MAX_BATCH_BYTES: usize = crate::model::validate::MAX_COMMAND_BYTES;
/// Batched entries proposed and not yet committed, at most.
pub const MAX_INFLIGHT_BATCHES: usize = 4;

/// Proposes client writes to Raft, batching the ones that queue up:
/// whatever waits when a proposal slot frees ([`MAX_INFLIGHT_BATCHES`])
/// goes as one [`Command::Batch`] entry (up to [`MAX_BATCH_COMMANDS`] and
/// [`MAX_BATCH_BYTES`]), so concurrent small writes share one log entry,
/// one fsync and one replication round instead of paying each. A lone
/// write goes as itself. Stops when the node is dropped.
async fn batcher(raft: Raft, mut queue: tokio::sync::mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_BATCHES));
    let mut carried: Option<(Proposal, usize)> = None;
    loop {
        let (first, first_bytes) = match carried.take() {
            Some(c) => c,
            None => match queue.recv().await {
                Some(p) => {
                    let n = command_bytes(&p.0);
                    (p, n)
                }
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first_bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(next) = queue.try_recv() else { break };
            let n = command_bytes(&next.0);
            if bytes + n > MAX_BATCH_BYTES {
                carried = Some((next, n));
                break;
            }
            bytes += n;
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            submit(&raft, batch).await;
            drop(slot);
        });
    }
}

fn command_bytes(cmd: &Command) -> usize {
    postcard::experimental::serialized_size(cmd).unwrap_or(MAX_BATCH_BYTES)
}

/// Proposes `batch` as one entry and hands each write its own outcome.
async fn submit(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        if let Some((cmd, done)) = batch.pop() {
            let _ = done.send(commit(raft, cmd).await);
        }
        return;
    }
    let (commands, waiting): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    match commit(raft, Command::Batch { commands }).await {
        Ok(CommandResponse::Batch(answers)) if answers.len() == waiting.len() => {
            for (answer, done) in answers.into_iter().zip(waiting) {
                let _ = done.send(outcome(answer));
            }
        }
        Ok(other) => {
            for done in waiting {
                let _ = done.send(Err(Error::Internal(format!(
                    "a batch of writes was answered with {other:?}"
                ))));
            }
        }
        Err(e) => {
            for done in waiting {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// A command's response as the writer sees it: a rejection is its error.
fn outcome(resp: CommandResponse) -> Result<CommandResponse> {
    match resp {
        CommandResponse::Rejected(e) => Err(e),
        other => Ok(other),
    }
}

/// One `client_write`, its errors as the API reports them.
async fn commit(raft: &Raft, cmd: Command) -> Result<CommandResponse> {
    match raft.client_write(Arc::new(cmd)).await {
        Ok(resp) => outcome(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(not_leader(f.leader_id, f.leader_node.as_ref()))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(Error::Internal(format!("unexpected membership error: {e}")))
        }
        Err(RaftError::Fatal(f)) => Err(Error::Unavailable(format!("raft has stopped: {f}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_target_is_checked_or_picked() {
        let voters = BTreeMap::from([(1, 40), (2, 38), (3, 40)]);
        let learners = BTreeSet::from([4]);
        assert_eq!(pick_transfer_target(1, 2, &voters, &learners), Ok(2));
        // 0: the most caught-up other voter.
        assert_eq!(pick_transfer_target(1, 0, &voters, &learners), Ok(3));
        // Equal matched indexes: the lowest id.
        let even = BTreeMap::from([(1, 9), (2, 9), (3, 9)]);
        assert_eq!(pick_transfer_target(3, 0, &even, &learners), Ok(1));
        for (to, says) in [
            (1, "node 1 already leads"),
            (4, "node 4 is a learner"),
            (9, "node 9 is not a member of the cluster (voters: 1, 2, 3)"),
        ] {
            match pick_transfer_target(1, to, &voters, &learners) {
                Err(Error::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "to");
                    assert!(reason.contains(says), "{reason}");
                }
                other => panic!("to = {to}: {other:?}"),
            }
        }
        let alone = BTreeMap::from([(1, 5)]);
        assert!(matches!(
            pick_transfer_target(1, 0, &alone, &BTreeSet::new()),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
