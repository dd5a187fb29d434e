//! The delta-ADS client: one `DeltaAggregatedResources` stream per
//! [`Client`](crate::Client) carrying every ClusterLoadAssignment it
//! watches.
//!
//! [`DeltaState`] is the sans-I/O protocol core: what to send on a new
//! stream, on (un)subscribe, and in answer to each response (ACK, or NACK
//! with `error_detail` when any resource in it is unusable, in which case
//! nothing in that response is applied). [`run`] is the async shell:
//! connect, fail over between registry nodes with backoff, publish
//! snapshots, write them to the failover cache, and serve the cache when
//! no node answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::Backoff;
use crate::client::Config;
use crate::endpoints::{EndpointSet, Origin};

/// Type URL of ClusterLoadAssignment, the only type this client asks for.
pub const EDS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// The result of handling one response.
#[derive(Debug)]
pub struct Handled {
    /// New snapshots to publish (empty on a NACK).
    pub updates: Vec<EndpointSet>,
    /// The ACK or NACK to send.
    pub reply: DeltaDiscoveryRequest,
    /// The NACK's message, when it is one.
    pub nack: Option<String>,
}

/// Delta xDS subscription state for ClusterLoadAssignments (sans-I/O).
#[derive(Debug)]
pub struct DeltaState {
    node: Node,
    /// Subscribed names → version last accepted from a registry (`None`
    /// before one arrives, or when the resource does not exist).
    subs: BTreeMap<String, Option<String>>,
}

impl DeltaState {
    /// A state identifying itself as `node` on each new stream.
    pub fn new(node: Node) -> DeltaState {
        DeltaState {
            node,
            subs: BTreeMap::new(),
        }
    }

    /// Whether nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether `name` is subscribed.
    pub fn is_subscribed(&self, name: &str) -> bool {
        self.subs.contains_key(name)
    }

    /// The first request of a new stream: the node, every subscribed name,
    /// and in `initial_resource_versions` the versions already held, so a
    /// server (any node: versions are content hashes) sends only what
    /// changed.
    pub fn on_connect(&self) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: EDS_TYPE.to_string(),
            resource_names_subscribe: self.subs.keys().cloned().collect(),
            initial_resource_versions: self
                .subs
                .iter()
                .filter_map(|(n, v)| Some((n.clone(), v.clone()?)))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    /// Subscribes `name`; the request to send on a live stream, or `None`
    /// when it was already subscribed.
    pub fn subscribe(&mut self, name: &str) -> Option<DeltaDiscoveryRequest> {
        if self.subs.contains_key(name) {
            return None;
        }
        self.subs.insert(name.to_string(), None);
        Some(DeltaDiscoveryRequest {
            type_url: EDS_TYPE.to_string(),
            resource_names_subscribe: vec![name.to_string()],
            ..Default::default()
        })
    }

    /// Unsubscribes `name`; the request to send, or `None` when it was
    /// not subscribed.
    pub fn unsubscribe(&mut self, name: &str) -> Option<DeltaDiscoveryRequest> {
        self.subs.remove(name)?;
        Some(DeltaDiscoveryRequest {
            type_url: EDS_TYPE.to_string(),
            resource_names_unsubscribe: vec![name.to_string()],
            ..Default::default()
        })
    }

    /// Handles a response: ACK with the updates, or NACK (nothing
    /// applied) when its type is not ClusterLoadAssignment or any resource
    /// in it cannot be used. Resources for names no longer subscribed are
    /// ignored (they raced an unsubscribe).
    pub fn on_response(&mut self, resp: &DeltaDiscoveryResponse) -> Handled {
        match self.decode(resp) {
            Ok(updates) => {
                for set in &updates {
                    if let Some(v) = self.subs.get_mut(&set.name) {
                        *v = (!set.version.is_empty()).then(|| set.version.clone());
                    }
                }
                Handled {
                    updates,
                    reply: self.reply(resp, None),
                    nack: None,
                }
            }
            Err(msg) => Handled {
                updates: Vec::new(),
                reply: self.reply(resp, Some(msg.clone())),
                nack: Some(msg),
            },
        }
    }

    fn decode(&self, resp: &DeltaDiscoveryResponse) -> Result<Vec<EndpointSet>, String> {
        if resp.type_url != EDS_TYPE {
            return Err(format!("type {:?} was not subscribed", resp.type_url));
        }
        let mut out = Vec::new();
        for r in &resp.resources {
            if !self.subs.contains_key(&r.name) {
                continue;
            }
            let any = r
                .resource
                .as_ref()
                .ok_or_else(|| format!("{}: resource without a body", r.name))?;
            if any.type_url != EDS_TYPE {
                return Err(format!("{}: body of type {:?}", r.name, any.type_url));
            }
            let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                .map_err(|e| format!("{}: cannot decode ClusterLoadAssignment: {e}", r.name))?;
            if cla.cluster_name != r.name {
                return Err(format!(
                    "{}: carries cluster_name {:?}",
                    r.name, cla.cluster_name
                ));
            }
            out.push(EndpointSet::from_cla(&cla, &r.version, Origin::Registry)?);
        }
        for name in &resp.removed_resources {
            if self.subs.contains_key(name) {
                // Gone or never existed: no endpoints, from the registry.
                out.push(EndpointSet::empty(name, Origin::Registry));
            }
        }
        Ok(out)
    }

    fn reply(&self, resp: &DeltaDiscoveryResponse, nack: Option<String>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: nack.map(|message| RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

/// A change to what the stream watches.
#[derive(Debug)]
pub(crate) enum Cmd {
    Subscribe(String),
    Unsubscribe(String),
}

/// The watch channels of every subscribed name, shared with the client.
pub(crate) type Watches = Arc<Mutex<HashMap<String, watch::Sender<Arc<EndpointSet>>>>>;

enum StreamEnd {
    Shutdown,
    /// The server closed the stream cleanly (e.g. it is shutting down).
    Closed,
    /// Nothing is subscribed any more (e.g. after a switch to mesh mode):
    /// the stream is closed until something is subscribed again.
    Idle,
    Failed(String),
}

/// The stream loop: runs until `shutdown` turns true or the command
/// channel closes.
pub(crate) async fn run(
    cfg: Arc<Config>,
    node: Node,
    watches: Watches,
    mut cmds: mpsc::Receiver<Cmd>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut state = DeltaState::new(node);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut fallback = Fallback::default();
    let n = cfg.registries.len();
    let mut idx = fastrand::usize(..n);
    loop {
        while let Ok(cmd) = cmds.try_recv() {
            apply(&mut state, cmd);
        }
        if *shutdown.borrow() {
            return;
        }
        if state.is_empty() {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => { apply(&mut state, cmd); continue; }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
        let addr = &cfg.registries[idx];
        let end = stream_once(
            &cfg,
            addr,
            &mut state,
            &watches,
            &mut cmds,
            &mut shutdown,
            &mut backoff,
            &mut fallback,
        )
        .await;
        let delay = match end {
            StreamEnd::Shutdown => return,
            StreamEnd::Idle => {
                tracing::debug!(registry = %addr, "nothing subscribed: xDS stream closed");
                backoff.reset();
                continue;
            }
            StreamEnd::Closed => {
                tracing::info!(registry = %addr, "xDS stream closed by the server; reconnecting");
                backoff.reset();
                backoff.next_delay()
            }
            StreamEnd::Failed(reason) => {
                tracing::warn!(registry = %addr, %reason, "xDS stream failed");
                fallback
                    .serve(&cfg, &state, &watches, &format!("{addr}: {reason}"))
                    .await;
                backoff.next_delay()
            }
        };
        idx = (idx + 1) % n;
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shutdown.changed() => return,
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => {
                        apply(&mut state, cmd);
                        // Still disconnected: a new subscription gets its
                        // cached set now rather than after the backoff.
                        fallback.serve(&cfg, &state, &watches, "registry unreachable").await;
                    }
                    None => return,
                },
            }
        }
    }
}

fn apply(state: &mut DeltaState, cmd: Cmd) -> Option<DeltaDiscoveryRequest> {
    match cmd {
        Cmd::Subscribe(name) => state.subscribe(&name),
        Cmd::Unsubscribe(name) => state.unsubscribe(&name),
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    cfg: &Config,
    addr: &str,
    state: &mut DeltaState,
    watches: &Watches,
    cmds: &mut mpsc::Receiver<Cmd>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
    fallback: &mut Fallback,
) -> StreamEnd {
    let channel = match crate::client::connect(cfg, addr).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Failed(e),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(crate::client::MAX_MESSAGE_BYTES);
    // Bounded: the loop below sends one request per response or command.
    let (tx, rx) = mpsc::channel(16);
    if tx.send(state.on_connect()).await.is_err() {
        return StreamEnd::Failed("request channel closed".into());
    }
    let call = client.delta_aggregated_resources(ReceiverStream::new(rx));
    let mut stream = match tokio::time::timeout(cfg.request_timeout, call).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return StreamEnd::Failed(status.to_string()),
        Err(_) => return StreamEnd::Failed("no answer to the stream request".into()),
    };
    tracing::debug!(registry = %addr, "xDS stream open");
    loop {
        tokio::select! {
            _ = shutdown.changed() => return StreamEnd::Shutdown,
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return StreamEnd::Shutdown };
                if let Some(req) = apply(state, cmd) {
                    if tx.send(req).await.is_err() {
                        return StreamEnd::Failed("request stream closed".into());
                    }
                }
                if state.is_empty() {
                    return StreamEnd::Idle;
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    backoff.reset();
                    let handled = state.on_response(&resp);
                    if let Some(msg) = &handled.nack {
                        tracing::warn!(registry = %addr, nonce = %resp.nonce, error = %msg, "NACK");
                    }
                    publish(cfg, watches, handled.updates, fallback).await;
                    if tx.send(handled.reply).await.is_err() {
                        return StreamEnd::Failed("request stream closed".into());
                    }
                }
                Ok(None) => return StreamEnd::Closed,
                Err(status) => return StreamEnd::Failed(status.to_string()),
            },
        }
    }
}

async fn publish(
    cfg: &Config,
    watches: &Watches,
    updates: Vec<EndpointSet>,
    fallback: &mut Fallback,
) {
    for set in updates {
        fallback.warned.remove(&set.name);
        let set = Arc::new(set);
        {
            let w = watches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = w.get(&set.name) {
                tx.send_replace(set.clone());
            }
        }
        if let Some(cache) = cfg.cache.clone() {
            // Awaited, in order: a later version is never overwritten by
            // an earlier one still being written.
            let s = set.clone();
            let r = tokio::task::spawn_blocking(move || cache.store(&s)).await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(name = %set.name, error = %e, "cannot write the failover cache")
                }
                Err(e) => tracing::warn!(name = %set.name, error = %e, "cache writer panicked"),
            }
        }
    }
}

/// Serving the failover cache while no registry node answers.
#[derive(Debug, Default)]
struct Fallback {
    /// Names already reported for this outage (logged once each).
    warned: HashSet<String>,
}

impl Fallback {
    /// For each subscribed name that has nothing from a registry yet,
    /// publishes its cached set (if any) and says so in the log.
    async fn serve(&mut self, cfg: &Config, state: &DeltaState, watches: &Watches, reason: &str) {
        let pending: Vec<String> = {
            let w = watches.lock().unwrap_or_else(|p| p.into_inner());
            w.iter()
                .filter(|(name, tx)| {
                    state.is_subscribed(name)
                        && tx.borrow().origin == Origin::Pending
                        && !self.warned.contains(*name)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in pending {
            self.warned.insert(name.clone());
            let Some(cache) = cfg.cache.clone() else {
                tracing::warn!(%name, %reason, "no registry node answered and no cache directory is configured; no endpoints yet");
                continue;
            };
            let n = name.clone();
            let c = cache.clone();
            match tokio::task::spawn_blocking(move || c.load(&n)).await {
                Ok(Ok(Some(entry))) => {
                    let age = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| {
                            Duration::from_millis(
                                u64::try_from(d.as_millis())
                                    .unwrap_or(u64::MAX)
                                    .saturating_sub(entry.written_at_ms),
                            )
                        })
                        .unwrap_or_default();
                    tracing::warn!(
                        %name,
                        %reason,
                        endpoints = entry.set.len(),
                        file = %cache.path_of(&name).display(),
                        age_s = age.as_secs(),
                        "no registry node answered: serving the cached endpoint set"
                    );
                    let w = watches.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(tx) = w.get(&name) {
                        if tx.borrow().origin == Origin::Pending {
                            tx.send_replace(Arc::new(entry.set));
                        }
                    }
                }
                Ok(Ok(None)) => {
                    tracing::warn!(%name, %reason, dir = %cache.dir().display(), "no registry node answered and the cache has no entry; no endpoints yet")
                }
                Ok(Err(e)) => {
                    tracing::warn!(%name, %reason, error = %e, "no registry node answered and the cache entry is unreadable")
                }
                Err(e) => tracing::warn!(%name, error = %e, "cache reader panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
