//! The server side of `meshreg.raft.v1.RaftPeer` (port 7072): openraft's
//! RPCs from other nodes, the requests followers forward to the leader
//! (writes, keepalives, read indexes, joins, leadership transfers), and the
//! leader's TimeoutNow to a transfer's target.
//!
//! Undecodable payloads get INVALID_ARGUMENT; nothing a peer sends can
//! panic the node. The port is for cluster members only: put it on a
//! network that only they reach.

use std::sync::Arc;

use meshreg_proto::raft::v1 as pb;
use meshreg_proto::raft::v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::api::grpc::to_status;
use crate::command::Command;
use crate::network::{encode_reply, MAX_PEER_MESSAGE_BYTES};
use crate::node::Node;
use crate::store::{MemberNode, NodeId, TypeConfig};

/// The peer service of one node.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// A tonic server for `node`'s peer traffic.
    pub fn server(node: Arc<Node>) -> RaftPeerServer<Self> {
        RaftPeerServer::new(Self { node })
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }

    fn open<T: DeserializeOwned>(&self, req: Request<pb::PeerRequest>) -> Result<T, Status> {
        let req = req.into_inner();
        self.check_link(req.from)?;
        postcard::from_bytes(&req.data)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
    }

    fn check_link(&self, from: NodeId) -> Result<(), Status> {
        if self.node.faults().is_blocked(from) {
            return Err(Status::unavailable(format!(
                "link from node {from} cut by fault injection"
            )));
        }
        Ok(())
    }
}

type Reply = Result<Response<pb::PeerReply>, Status>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<pb::PeerRequest>) -> Reply {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.raft().append_entries(rpc).await,
        )))
    }

    async fn vote(&self, req: Request<pb::PeerRequest>) -> Reply {
        let rpc: VoteRequest<NodeId> = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.raft().vote(rpc).await,
        )))
    }

    async fn install_snapshot(&self, req: Request<pb::PeerRequest>) -> Reply {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.raft().install_snapshot(rpc).await,
        )))
    }

    async fn forward(&self, req: Request<pb::PeerRequest>) -> Reply {
        let cmd: Command = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.write_local(cmd).await,
        )))
    }

    async fn forward_keep_alive(&self, req: Request<pb::PeerRequest>) -> Reply {
        let id: u64 = self.open(req)?;
        Ok(Response::new(encode_reply(self.node.keepalive_local(id))))
    }

    async fn read_index(&self, req: Request<pb::PeerRequest>) -> Reply {
        let () = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.read_index_local().await,
        )))
    }

    async fn transfer_leader(&self, req: Request<pb::PeerRequest>) -> Reply {
        let to: NodeId = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.transfer_leader_local(to).await,
        )))
    }

    async fn remove_node(&self, req: Request<pb::PeerRequest>) -> Reply {
        let id: NodeId = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.remove_node_local(id).await,
        )))
    }

    async fn timeout_now(&self, req: Request<pb::PeerRequest>) -> Reply {
        let from = req.get_ref().from;
        let leader_term: u64 = self.open(req)?;
        Ok(Response::new(encode_reply(
            self.node.timeout_now(from, leader_term).await,
        )))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let j = req.into_inner();
        self.check_link(j.node_id)?;
        let member = MemberNode {
            raft_addr: j.raft_addr,
            grpc_addr: j.grpc_addr,
            http_addr: j.http_addr,
        };
        let (voters, leader_id) = self
            .node
            .add_node(j.node_id, member)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::JoinReply { voters, leader_id }))
    }
}
