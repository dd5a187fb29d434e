//! Raft transport between cluster nodes: openraft's RPCs over tonic
//! (`meshreg.raft.v1.RaftPeer`, port 7072), payloads encoded with postcard.
//!
//! [`Faults`] lets tests cut links: a blocked peer is unreachable in both
//! directions from this node's point of view (outgoing calls fail, incoming
//! calls from it are refused). It is only settable when the server runs
//! with fault injection enabled (see `/debug/faults` in docs/api.md).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshreg_proto::raft::v1 as pb;
use meshreg_proto::raft::v1::raft_peer_client::RaftPeerClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::store::{lock_tail, MemberNode, NodeId, Tail, TypeConfig};

/// Largest peer message, bytes (a snapshot chunk plus overhead).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes of log entries sent in one AppendEntries RPC (at least one
/// entry is always sent). openraft 0.9 gives an AppendEntries one heartbeat
/// interval to complete and batches by entry count only; a catch-up batch
/// of large entries (batched registrations) could then never arrive in
/// time. Larger batches are cut here, and the follower's success is
/// reported as a partial success up to the last entry sent, from which
/// openraft continues.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Links cut by fault injection.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    /// Is traffic to or from `peer` cut?
    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// Replaces the set of blocked peers.
    pub fn set_blocked(&self, peers: BTreeSet<NodeId>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// The blocked peers.
    pub fn blocked(&self) -> BTreeSet<NodeId> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a peer reply carries: the postcard-encoded success value, or the
/// error encoded as JSON (openraft's error types are only guaranteed to
/// round-trip through a self-describing format).
#[derive(Debug, Serialize, Deserialize)]
pub enum WireReply {
    /// postcard bytes of the success value.
    Ok(Vec<u8>),
    /// JSON of the error value.
    Err(String),
}

/// Encodes a handler's result into a peer reply.
pub fn encode_reply<T: Serialize, E: Serialize>(r: Result<T, E>) -> pb::PeerReply {
    let wire = match r {
        Ok(v) => match postcard::to_stdvec(&v) {
            Ok(b) => WireReply::Ok(b),
            Err(e) => WireReply::Err(format!("\"encode: {e}\"")),
        },
        Err(e) => {
            WireReply::Err(serde_json::to_string(&e).unwrap_or_else(|e| format!("\"encode: {e}\"")))
        }
    };
    pb::PeerReply {
        data: postcard::to_stdvec(&wire).unwrap_or_default(),
    }
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError<E> {
    /// The peer could not be reached (refused, cut by fault injection).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The call failed in transport (timeout, reset, undecodable reply).
    #[error("peer network error: {0}")]
    Network(String),
    /// The peer handled the call and answered with an error.
    #[error("peer returned an error")]
    Remote(E),
}

/// Decodes a peer reply.
pub fn decode_reply<T: DeserializeOwned, E: DeserializeOwned>(
    reply: &pb::PeerReply,
) -> Result<T, PeerError<E>> {
    let wire: WireReply = postcard::from_bytes(&reply.data)
        .map_err(|e| PeerError::Network(format!("undecodable reply: {e}")))?;
    match wire {
        WireReply::Ok(b) => postcard::from_bytes(&b)
            .map_err(|e| PeerError::Network(format!("undecodable reply: {e}"))),
        WireReply::Err(s) => match serde_json::from_str(&s) {
            Ok(e) => Err(PeerError::Remote(e)),
            Err(_) => Err(PeerError::Network(format!("peer error: {s}"))),
        },
    }
}

/// A lazily connected client to a peer's Raft port.
pub fn peer_client(raft_addr: &str) -> Result<RaftPeerClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{raft_addr}"))
        .map_err(|e| format!("invalid peer address {raft_addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10));
    Ok(RaftPeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
}

/// Encodes a peer request.
pub fn encode_request<T: Serialize>(from: NodeId, v: &T) -> Result<pb::PeerRequest, String> {
    postcard::to_stdvec(v)
        .map(|data| pb::PeerRequest { from, data })
        .map_err(|e| format!("encode: {e}"))
}

/// Classifies a tonic status from a peer call.
pub fn status_error<E>(s: &tonic::Status) -> PeerError<E> {
    match s.code() {
        tonic::Code::Unavailable => PeerError::Unreachable(s.to_string()),
        _ => PeerError::Network(s.to_string()),
    }
}

/// openraft's network factory over tonic.
#[derive(Debug, Clone)]
pub struct GrpcNetwork {
    me: NodeId,
    faults: Arc<Faults>,
    max_append_bytes: usize,
    tail: Option<Tail>,
}

impl GrpcNetwork {
    /// The network of node `me`, cutting AppendEntries at `max_append_bytes`.
    pub fn new(me: NodeId, faults: Arc<Faults>, max_append_bytes: usize) -> Self {
        Self {
            me,
            faults,
            max_append_bytes,
            tail: None,
        }
    }

    /// Sends entries the log store still holds encoded (its in-memory
    /// tail) as those bytes instead of encoding them again per follower.
    pub fn with_log_store(mut self, logs: &crate::store::LogStore) -> Self {
        self.tail = Some(logs.tail());
        self
    }
}

/// `rpc` encoded as postcard encodes an `AppendEntriesRequest` (fields in
/// declaration order: vote, prev_log_id, entries as a varint length and
/// the entries, leader_commit), with each entry's bytes taken from the log
/// store's tail; cut like [`cut_entries`]. `None` when the tail does not
/// hold every entry (the caller encodes the request itself).
fn encode_from_tail(
    rpc: &mut AppendEntriesRequest<TypeConfig>,
    tail: &Tail,
    budget: usize,
) -> Option<(Vec<u8>, Option<openraft::LogId<NodeId>>)> {
    let encoded: Vec<Arc<[u8]>> = {
        let tail = lock_tail(tail);
        rpc.entries
            .iter()
            .map(|e| {
                tail.get(&e.log_id.index)
                    .filter(|t| t.log_id == e.log_id)
                    .map(|t| t.bytes.clone())
            })
            .collect::<Option<_>>()?
    };
    let (keep, total) = fitting_prefix(encoded.iter().map(|b| b.len()), budget);
    let cut_at = truncate_entries(rpc, keep);
    let mut data = postcard::to_stdvec(&(&rpc.vote, &rpc.prev_log_id, keep)).ok()?;
    data.reserve(total + 32);
    for b in &encoded[..keep] {
        data.extend_from_slice(b);
    }
    let data = postcard::to_extend(&rpc.leader_commit, data).ok()?;
    Some((data, cut_at))
}

/// How many of the leading `sizes` fit in `budget` bytes (at least one),
/// and their total.
fn fitting_prefix(sizes: impl IntoIterator<Item = usize>, budget: usize) -> (usize, usize) {
    let mut total = 0usize;
    let mut keep = 0usize;
    for size in sizes {
        if keep > 0 && total.saturating_add(size) > budget {
            break;
        }
        total = total.saturating_add(size);
        keep += 1;
    }
    (keep, total)
}

/// Keeps the first `keep` entries of `rpc`; the log id of the last one
/// kept when entries were dropped.
fn truncate_entries(
    rpc: &mut AppendEntriesRequest<TypeConfig>,
    keep: usize,
) -> Option<openraft::LogId<NodeId>> {
    if keep >= rpc.entries.len() {
        return None;
    }
    rpc.entries.truncate(keep);
    rpc.entries.last().map(|e| e.log_id)
}

/// Keeps the longest prefix of `rpc.entries` that encodes within `budget`
/// bytes (at least one entry). Returns the log id of the last entry kept
/// when entries were dropped.
pub fn cut_entries(
    rpc: &mut AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> Option<openraft::LogId<NodeId>> {
    if rpc.entries.len() <= 1 {
        return None;
    }
    let sizes = rpc
        .entries
        .iter()
        .map(|e| postcard::experimental::serialized_size(e).unwrap_or(usize::MAX));
    let (keep, _) = fitting_prefix(sizes, budget);
    truncate_entries(rpc, keep)
}

/// One peer, as openraft sees it.
#[derive(Debug)]
pub struct PeerConnection {
    me: NodeId,
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
    faults: Arc<Faults>,
    max_append_bytes: usize,
    tail: Option<Tail>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerConnection {
            me: self.me,
            target,
            client: peer_client(&node.raft_addr),
            faults: self.faults.clone(),
            max_append_bytes: self.max_append_bytes,
            tail: self.tail.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, tonic::Request<pb::PeerRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::PeerReply>, tonic::Status>>,
    {
        let body = encode_request(self.me, req)
            .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e))))?;
        self.send(body, option, f).await
    }

    /// [`PeerConnection::call`] with the request already encoded.
    async fn send<Resp, E, F, Fut>(
        &mut self,
        body: pb::PeerRequest,
        option: &RPCOption,
        f: F,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, tonic::Request<pb::PeerRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::PeerReply>, tonic::Status>>,
    {
        if self.faults.is_blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "link to node {} cut by fault injection",
                self.target
            )))));
        }
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let mut request = tonic::Request::new(body);
        request.set_timeout(option.hard_ttl());
        let reply = match f(client, request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Err(match status_error::<()>(&s) {
                    PeerError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
                    _ => RPCError::Network(NetworkError::new(&s)),
                })
            }
        };
        match decode_reply::<Resp, RaftError<NodeId, E>>(&reply) {
            Ok(v) => Ok(v),
            Err(PeerError::Remote(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Err(PeerError::Unreachable(m)) => Err(RPCError::Unreachable(Unreachable::new(&Msg(m)))),
            Err(PeerError::Network(m)) => Err(RPCError::Network(NetworkError::new(&Msg(m)))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let pre = self
            .tail
            .as_ref()
            .and_then(|t| encode_from_tail(&mut rpc, t, self.max_append_bytes));
        let (resp, cut_at): (AppendEntriesResponse<NodeId>, _) = match pre {
            Some((data, cut_at)) => {
                let body = pb::PeerRequest {
                    from: self.me,
                    data,
                };
                let resp = self
                    .send(body, &option, |mut c, r| async move {
                        c.append_entries(r).await
                    })
                    .await?;
                (resp, cut_at)
            }
            None => {
                let cut_at = cut_entries(&mut rpc, self.max_append_bytes);
                let resp = self
                    .call(&rpc, &option, |mut c, r| async move {
                        c.append_entries(r).await
                    })
                    .await?;
                (resp, cut_at)
            }
        };
        Ok(match (resp, cut_at) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (other, _) => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn replies_roundtrip() {
        let ok = encode_reply::<u64, Error>(Ok(42));
        assert_eq!(decode_reply::<u64, Error>(&ok).unwrap(), 42);
        let err = encode_reply::<u64, Error>(Err(Error::not_found("session", "7")));
        match decode_reply::<u64, Error>(&err) {
            Err(PeerError::Remote(Error::NotFound { name, .. })) => assert_eq!(name, "7"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_appends_are_cut_by_size() {
        use crate::command::Command;
        use openraft::{Entry, EntryPayload, LeaderId, LogId, Vote};
        let big = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(LeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Arc::new(Command::CreateNamespace {
                name: "x".repeat(400_000),
                labels: Default::default(),
            })),
        };
        let mut rpc = AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=5).map(big).collect(),
        };
        let last = cut_entries(&mut rpc, MAX_APPEND_BYTES).expect("cut");
        assert_eq!(rpc.entries.len(), 2);
        assert_eq!(last.index, 2);
        // One oversized entry still goes alone; small batches are untouched.
        let mut one = AppendEntriesRequest {
            entries: vec![big(1)],
            ..rpc.clone()
        };
        assert_eq!(cut_entries(&mut one, 10), None);
        assert_eq!(one.entries.len(), 1);
    }

    #[test]
    fn entries_from_the_log_tail_encode_as_the_whole_request_does() {
        use crate::command::Command;
        use crate::store::TailEntry;
        use openraft::{Entry, EntryPayload, LeaderId, LogId, Vote};
        let entry = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(LeaderId::new(3, 1), i),
            payload: if i.is_multiple_of(3) {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(Arc::new(Command::CreateNamespace {
                    name: format!("ns-{i}-{}", "x".repeat(i as usize * 300)),
                    labels: Default::default(),
                }))
            },
        };
        let tail = Tail::default();
        for i in 1..=6 {
            let e = entry(i);
            lock_tail(&tail).insert(
                i,
                TailEntry {
                    log_id: e.log_id,
                    bytes: postcard::to_stdvec(&e).unwrap().into(),
                    entry: Some(e),
                },
            );
        }
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(LeaderId::new(2, 1), 0)),
            leader_commit: Some(LogId::new(LeaderId::new(3, 1), 2)),
            entries: (1..=6).map(entry).collect(),
        };
        // Whole: the same bytes as encoding the request.
        let mut whole = rpc.clone();
        let (data, cut) = encode_from_tail(&mut whole, &tail, usize::MAX).expect("all in tail");
        assert_eq!(cut, None);
        assert_eq!(data, postcard::to_stdvec(&rpc).unwrap());
        let back: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(&data).unwrap();
        assert_eq!(back.entries.len(), 6);
        // Cut by size: the kept prefix, encoded as cut_entries would leave it.
        let mut cut_rpc = rpc.clone();
        let (data, cut) = encode_from_tail(&mut cut_rpc, &tail, 1_000).expect("all in tail");
        let mut expected = rpc.clone();
        assert_eq!(cut, cut_entries(&mut expected, 1_000));
        assert!(cut.is_some());
        assert_eq!(data, postcard::to_stdvec(&expected).unwrap());
        // A missing entry, or one of another term at that index: not used.
        lock_tail(&tail).remove(&4);
        assert!(encode_from_tail(&mut rpc.clone(), &tail, usize::MAX).is_none());
        let other = Entry::<TypeConfig> {
            log_id: LogId::new(LeaderId::new(2, 1), 4),
            payload: EntryPayload::Blank,
        };
        lock_tail(&tail).insert(
            4,
            TailEntry {
                log_id: other.log_id,
                bytes: postcard::to_stdvec(&other).unwrap().into(),
                entry: Some(other),
            },
        );
        assert!(encode_from_tail(&mut rpc.clone(), &tail, usize::MAX).is_none());
    }

    #[test]
    fn faults_block_peers() {
        let f = Faults::default();
        assert!(!f.is_blocked(2));
        f.set_blocked([2, 3].into_iter().collect());
        assert!(f.is_blocked(2) && f.is_blocked(3) && !f.is_blocked(1));
    }
}
