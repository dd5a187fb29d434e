//! Runs a registry node with its gRPC and HTTP APIs on already-bound
//! listeners until a shutdown future resolves, then drains: watch streams
//! and blocking queries end, the servers stop accepting and finish
//! in-flight requests, and Raft stops with everything flushed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::api;
use crate::config::Config;
use crate::node::Node;

/// The connections `listener` accepts, with TCP_NODELAY set. tonic's
/// `Server::tcp_nodelay` applies only to listeners it binds itself, not to
/// an incoming stream; without it the last small segment of a response
/// (gRPC trailers after the data) waits for the client's delayed ACK, and
/// a 100-instance `Register` took 44 ms at one client instead of ~2 ms.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
        })
    })
}

/// How long in-flight requests get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Listeners a server runs on (bind port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// HTTP API listener.
    pub http: TcpListener,
    /// gRPC API listener.
    pub grpc: TcpListener,
    /// Raft peer listener.
    pub raft: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    ///
    /// # Errors
    /// The bind error, naming the address.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on http_addr {}: {e}", config.http_addr))?;
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on grpc_addr {}: {e}", config.grpc_addr))?;
        let raft = TcpListener::bind(config.raft_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on raft_addr {}: {e}", config.raft_addr))?;
        Ok(Self { http, grpc, raft })
    }
}

/// Starts the node with the registry's own services only; see [`run_with`].
///
/// # Errors
/// When the node cannot start (data directory, Raft) or a server fails.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Arc<Node>),
) -> anyhow::Result<()> {
    run_with(
        config,
        listeners,
        shutdown,
        |_| Extension::default(),
        on_ready,
    )
    .await
}

/// What other crates add to a node's servers (the xDS control plane, MCP):
/// gRPC services on the API port and HTTP routes on the HTTP port.
#[derive(Debug, Default)]
pub struct Extension {
    /// Extra gRPC services, served next to the registry API.
    pub grpc: tonic::service::Routes,
    /// Extra gRPC services served ahead of the router (see
    /// [`crate::http2::Direct`]).
    pub direct: Vec<crate::http2::Direct>,
    /// Extra HTTP routes, merged into the registry's router.
    pub http: axum::Router,
}

/// Starts the node, serves until `shutdown` resolves, then drains.
/// `extend` is called once with the started node and returns the extra
/// services to serve; `on_ready` is called once the servers accept requests.
///
/// # Errors
/// When the node cannot start (data directory, Raft) or a server fails.
pub async fn run_with(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extend: impl FnOnce(&Arc<Node>) -> Extension,
    on_ready: impl FnOnce(&Arc<Node>),
) -> anyhow::Result<()> {
    let me = crate::store::MemberNode {
        raft_addr: listeners.raft.local_addr()?.to_string(),
        grpc_addr: listeners.grpc.local_addr()?.to_string(),
        http_addr: listeners.http.local_addr()?.to_string(),
    };
    let node = Node::start(config, me, Arc::new(crate::network::Faults::default())).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Peer traffic keeps flowing until Raft itself has stopped.
    let (raft_stop_tx, raft_stop_rx) = watch::channel(false);
    let peer = tonic::transport::Server::builder()
        .add_service(crate::peer::PeerService::server(node.clone()))
        .serve_with_incoming_shutdown(nodelay(listeners.raft), stopped(raft_stop_rx));
    let peer_task = tokio::spawn(peer);
    tokio::spawn(node.clone().join_cluster());

    let ext = extend(&node);
    let routes = ext
        .grpc
        .add_service(api::grpc::RegistryService::server(node.clone()))
        .add_service(api::cluster::ClusterService::server(node.clone()));
    let settings = crate::http2::Settings {
        keepalive: Duration::from_secs(30),
        max_streams: node.config().max_streams_per_connection,
    };
    let grpc = crate::http2::serve(
        listeners.grpc,
        routes,
        ext.direct,
        settings,
        stop_rx.clone(),
    );
    let http = axum::serve(
        listeners.http,
        api::http::router(node.clone()).merge(ext.http),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });
    on_ready(&node);

    shutdown.await;
    tracing::info!("shutting down: draining requests");
    node.begin_shutdown();
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let g = grpc_task.await;
        let h = http_task.await;
        (g, h)
    })
    .await;
    match drained {
        Ok((g, h)) => {
            if let Err(e) = g {
                tracing::warn!(error = %e, "gRPC server task failed");
            }
            if let Ok(Err(e)) = h {
                tracing::warn!(error = %e, "HTTP server ended with an error");
            }
        }
        Err(_) => tracing::warn!(
            "in-flight requests did not finish within {DRAIN_TIMEOUT:?}; closing them"
        ),
    }
    node.shutdown().await;
    raft_stop_tx.send_replace(true);
    if let Ok(Err(e)) = peer_task.await {
        tracing::warn!(error = %e, "Raft peer server ended with an error");
    }
    tracing::info!("stopped");
    Ok(())
}
