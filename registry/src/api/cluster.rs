//! `meshreg.cluster.v1.Cluster`: cluster status and membership changes
//! (port 7071, next to the registry API). Membership changes and
//! leadership transfers run on the leader; a follower forwards `AddNode`,
//! `RemoveNode` and `TransferLeader` there.

use std::sync::Arc;

use meshreg_proto::cluster::v1 as pb;
use meshreg_proto::cluster::v1::cluster_server::{Cluster, ClusterServer};
use tonic::{Request, Response, Status};

use crate::api::grpc::to_status;
use crate::error::Error;
use crate::model::validate;
use crate::node::Node;
use crate::store::MemberNode;

/// The cluster admin service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A tonic server for `node`.
    pub fn server(node: Arc<Node>) -> ClusterServer<Self> {
        ClusterServer::new(Self { node })
    }
}

fn check_addr(field: &str, v: &str) -> Result<(), Error> {
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(Error::invalid(field, format!("{v:?} is not host:port")));
    };
    validate::address(field, host.trim_start_matches('[').trim_end_matches(']'))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(|_| ())
        .ok_or_else(|| Error::invalid(field, format!("{v:?} has no valid port")))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.node.status();
        Ok(Response::new(pb::StatusReply {
            node_id: s.id,
            state: s.state.to_string(),
            term: s.term,
            leader_id: s.leader.unwrap_or(0),
            last_log_index: s.last_log_index,
            commit_index: s.committed,
            applied_index: s.applied,
            snapshot_index: s.snapshot,
            revision: s.revision,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    node_id: m.id,
                    raft_addr: m.node.raft_addr,
                    grpc_addr: m.node.grpc_addr,
                    http_addr: m.node.http_addr,
                    voter: m.voter,
                    matched_index: m.matched_index,
                    lag: m.lag,
                })
                .collect(),
        }))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(to_status(Error::invalid("node_id", "must be at least 1")));
        }
        for (f, v) in [
            ("raft_addr", &r.raft_addr),
            ("grpc_addr", &r.grpc_addr),
            ("http_addr", &r.http_addr),
        ] {
            check_addr(f, v).map_err(to_status)?;
        }
        let member = MemberNode {
            raft_addr: r.raft_addr,
            grpc_addr: r.grpc_addr,
            http_addr: r.http_addr,
        };
        let (voters, _) = self
            .node
            .add_node(r.node_id, member)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ChangeReply { voters }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let voters = self
            .node
            .remove_node(req.into_inner().node_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ChangeReply { voters }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderReply>, Status> {
        let (leader_id, term) = self
            .node
            .transfer_leader(req.into_inner().to)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TransferLeaderReply { leader_id, term }))
    }
}
