//! Raft transport of a single-node cluster.
//!
//! A single-node cluster never sends Raft RPCs: the node is its own quorum.
//! If membership ever names another node, every RPC to it fails as
//! unreachable with a message saying that this build serves single-node
//! clusters only, and openraft keeps retrying without harm. The networked
//! transport (tonic on port 7072) replaces this for 3- and 5-node clusters.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::store::{MemberNode, NodeId, TypeConfig};

/// Factory of [`SingleNodeConnection`]s.
#[derive(Debug, Clone, Default)]
pub struct SingleNodeNetwork;

/// A "connection" to a peer that a single-node cluster cannot reach.
#[derive(Debug)]
pub struct SingleNodeConnection {
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable: this node runs a single-node cluster and has no Raft peer transport")]
struct NoPeers(NodeId);

impl SingleNodeConnection {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, MemberNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoPeers(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = SingleNodeConnection;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> Self::Network {
        SingleNodeConnection { target }
    }
}

impl RaftNetwork<TypeConfig> for SingleNodeConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
