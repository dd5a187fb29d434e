//! `meshreg.registry.v1.Registry` over gRPC (tonic), on port 7071.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_server::{Registry, RegistryServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::api::convert;
use crate::api::ops;
use crate::error::Error;
use crate::node::Node;

/// Largest gRPC message accepted or sent, bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The one place a registry [`Error`] becomes a [`Status`]. A `NotLeader`
/// carries the leader's id and address in the `x-meshreg-leader-id` /
/// `x-meshreg-leader-addr` metadata.
pub fn to_status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument { .. } => Status::invalid_argument(msg),
        Error::NotFound { .. } => Status::not_found(msg),
        Error::AlreadyExists { .. } => Status::already_exists(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::NotLeader {
            leader_id,
            leader_addr,
            ..
        } => {
            let mut s = Status::unavailable(msg);
            if let Some(id) = leader_id {
                if let Ok(v) = id.to_string().parse() {
                    s.metadata_mut().insert("x-meshreg-leader-id", v);
                }
            }
            if let Some(addr) = leader_addr {
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert("x-meshreg-leader-addr", v);
                }
            }
            s
        }
        Error::Unavailable(_) => Status::unavailable(msg),
        Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
        Error::Storage(_) | Error::Internal(_) => Status::internal(msg),
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    node: Arc<Node>,
}

impl RegistryService {
    /// A tonic server for `node`, with meshreg's message size limits.
    pub fn server(node: Arc<Node>) -> RegistryServer<Self> {
        RegistryServer::new(Self { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        let mut specs = Vec::with_capacity(req.instances.len());
        for (i, e) in req.instances.into_iter().enumerate() {
            specs.push(convert::register_entry(&format!("instances[{i}]"), e).map_err(to_status)?);
        }
        let (revision, ids) = ops::register(&self.node, specs).await.map_err(to_status)?;
        Ok(Response::new(pb::RegisterResponse { revision, ids }))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let keys = req
            .into_inner()
            .keys
            .into_iter()
            .map(convert::key_in)
            .collect();
        let (revision, removed) = ops::deregister(&self.node, keys).await.map_err(to_status)?;
        Ok(Response::new(pb::DeregisterResponse { revision, removed }))
    }

    async fn grant_session(
        &self,
        req: Request<pb::GrantSessionRequest>,
    ) -> Result<Response<pb::GrantSessionResponse>, Status> {
        let (session_id, ttl_ms, revision) =
            ops::grant_session(&self.node, req.into_inner().ttl_ms)
                .await
                .map_err(to_status)?;
        Ok(Response::new(pb::GrantSessionResponse {
            session_id,
            ttl_ms,
            revision,
        }))
    }

    type KeepAliveStream = Stream2<pb::KeepAliveResponse>;

    /// Each request renews one session; the first unknown or expired
    /// session ends the stream with NOT_FOUND (re-register).
    async fn keep_alive(
        &self,
        req: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let reply = match msg {
                    Ok(m) => {
                        node.keepalive(m.session_id)
                            .await
                            .map(|ttl_ms| pb::KeepAliveResponse {
                                session_id: m.session_id,
                                ttl_ms,
                            })
                    }
                    Err(status) => {
                        tracing::debug!(%status, "keepalive stream ended by client");
                        return;
                    }
                };
                let failed = reply.is_err();
                if tx.send(reply.map_err(to_status)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let (revision, removed_instances) =
            ops::revoke_session(&self.node, req.into_inner().session_id)
                .await
                .map_err(to_status)?;
        Ok(Response::new(pb::RevokeSessionResponse {
            revision,
            removed_instances,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::GetInstanceResponse>, Status> {
        let req = req.into_inner();
        let key = req
            .key
            .map(convert::key_in)
            .ok_or_else(|| to_status(Error::invalid("key", "is required")))?;
        let r = ops::get(&self.node, &key, convert::read_in(req.read))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(convert::instance_out(&r.value)),
            revision: r.revision,
        }))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let req = req.into_inner();
        let sel = convert::selector_in(req.selector).map_err(to_status)?;
        let r = ops::list(&self.node, &req.namespace, &sel, convert::read_in(req.read))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: r.value.iter().map(|i| convert::instance_out(i)).collect(),
            revision: r.revision,
        }))
    }

    async fn list_applications(
        &self,
        req: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        let req = req.into_inner();
        let r = ops::applications(&self.node, &req.namespace, convert::read_in(req.read))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListApplicationsResponse {
            applications: r.value.iter().map(convert::application_out).collect(),
            revision: r.revision,
        }))
    }

    async fn resolve_service(
        &self,
        req: Request<pb::ResolveServiceRequest>,
    ) -> Result<Response<pb::ResolveServiceResponse>, Status> {
        let req = req.into_inner();
        let r = ops::resolve(
            &self.node,
            &req.namespace,
            &req.service,
            convert::read_in(req.read),
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::ResolveServiceResponse {
            apps: r.value,
            revision: r.revision,
        }))
    }

    async fn get_service_revision(
        &self,
        req: Request<pb::GetServiceRevisionRequest>,
    ) -> Result<Response<pb::GetServiceRevisionResponse>, Status> {
        let req = req.into_inner();
        let r = ops::service_revision(
            &self.node,
            &req.namespace,
            &req.app,
            &req.revision,
            convert::read_in(req.read),
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::GetServiceRevisionResponse {
            service_revision: Some(convert::service_revision_out(&r.value)),
            revision: r.revision,
        }))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        let ns = req
            .into_inner()
            .namespace
            .ok_or_else(|| to_status(Error::invalid("namespace", "is required")))?;
        let revision = ops::create_namespace(&self.node, ns.name, ns.labels.into_iter().collect())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateNamespaceResponse { revision }))
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        let revision = ops::delete_namespace(&self.node, req.into_inner().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteNamespaceResponse { revision }))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let (ns, revision) = ops::namespaces(&self.node, convert::read_in(req.into_inner().read))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: ns.iter().map(convert::namespace_out).collect(),
            revision,
        }))
    }

    type WatchStream = Stream2<pb::WatchResponse>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let sel = convert::selector_in(req.selector).map_err(to_status)?;
        ops::require_namespace(&self.node, "namespace", &req.namespace).map_err(to_status)?;
        let rx = crate::watch::spawn(self.node.clone(), req.namespace, sel, req.from_revision);
        let stream = ReceiverStream::new(rx).map(|m| Ok(convert::watch_out(&m)));
        Ok(Response::new(Box::pin(stream)))
    }
}
