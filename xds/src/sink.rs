//! Sources: other registries whose services this cluster imports, each
//! written through Raft as that source's records with state-of-the-world
//! semantics per source: a record missing from the source's current set is
//! deleted for that source only. Sources are merged by priority in the
//! state machine (`Command::SyncSourceRanked`): a record whose identity a
//! native registration or a better source wins is kept shadowed, not
//! dropped, and takes over when the winner goes away. Each source runs on
//! the leader only and moves with leadership; it reconnects with capped
//! exponential backoff and jitter. Invalid records are quarantined with
//! the reason and never block the rest; `GET /v1/sources` lists them, and
//! what each source owns and has shadowed.
//!
//! Kinds ([`SourceKind`]):
//! - `mcp`: the ServiceEntries of any MCP-over-xDS source (another
//!   meshreg, Nacos's MCP server, the bridge); every response is one sync.
//! - `zookeeper`, `etcd`: Dubbo's registry layouts, and `nacos`: a Nacos
//!   namespace's services, read by the adapters of `meshreg-adapters` with
//!   the registry's own watches (Nacos: subscriptions); changes are
//!   debounced and the whole catalog written as one sync (module `adapter`).

mod adapter;
mod config;

pub use config::{SourceConfig, SourceKind};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::service::discovery::v3 as ds;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshreg_adapters::feed::Feed;
use meshreg_proto::istio::mcp::v1alpha1::Resource as McpResource;
use meshreg_proto::istio::networking::v1alpha3::ServiceEntry;
use meshreg_registry::command::{Command, CommandResponse};
use meshreg_registry::model::{
    validate, InstanceSpec, Locality, Provenance, Registration, ServiceDef,
};
use meshreg_registry::node::Node;
use meshreg_registry::store::Shared;
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::mcp::{APP_ANNOTATION, NAMESPACE_ANNOTATION, SERVICES_ANNOTATION, SERVICE_ENTRY_TYPE};

/// Prefix of the node id a meshreg sink sends; a meshreg MCP source sees
/// it and exports only natively registered instances to it (loop guard).
pub const SINK_NODE_PREFIX: &str = "meshreg-sink-";

/// Most quarantined records, and most shadowed ones, listed per source in
/// `/v1/sources` (`quarantined_total` counts all of the last sync's;
/// `shadowed`, all the source's shadowed records now).
pub const MAX_QUARANTINE_SHOWN: usize = 1000;

/// What `GET /v1/sources` shows of one source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// Source kind.
    pub kind: String,
    /// Its address.
    pub address: String,
    /// Its configured priority: the higher wins an identity another
    /// source also has.
    pub priority: i32,
    /// `standby` (not the leader), `connecting`, `syncing`, `synced` or `error`.
    pub state: &'static str,
    /// Unix time of the last applied sync, ms.
    pub last_sync_ms: Option<u64>,
    /// Records in the last sync (applied and quarantined).
    pub records: usize,
    /// Totals applied since start.
    pub upserted: u64,
    /// Totals removed since start.
    pub removed: u64,
    /// Records of the last sync not applied: (key, reason), at most
    /// [`MAX_QUARANTINE_SHOWN`].
    pub quarantined: Vec<(String, String)>,
    /// Records of the last sync not applied, all of them.
    pub quarantined_total: usize,
    /// Instances its records back now (the replicated registry's count, so
    /// followers show it too).
    pub owned: u64,
    /// Its records kept shadowed now: a native registration or another
    /// source's record wins their identity; each takes over when that
    /// winner goes away.
    pub shadowed: u64,
    /// Its shadowed records now: (key, `shadowed by ...`, naming what backs
    /// the instance instead), at most [`MAX_QUARANTINE_SHOWN`].
    pub shadowed_records: Vec<(String, String)>,
    /// Last error.
    pub last_error: Option<String>,
}

/// The running sinks of a node.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    status: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
    /// The node's applied state, for each source's owned and shadowed
    /// counts; `None` when no source was started.
    registry: Option<Arc<Shared>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sinks {
    /// Starts one task per source.
    ///
    /// # Errors
    /// A source that fails [`SourceConfig::validate`]; nothing is started then.
    pub fn start(node: Arc<Node>, sources: Vec<SourceConfig>) -> Result<Self, String> {
        for s in &sources {
            s.validate()?;
        }
        let sinks = Sinks {
            registry: Some(node.shared().clone()),
            ..Sinks::default()
        };
        for s in sources {
            sinks.set(&s.name, |st| {
                st.name = s.name.clone();
                st.kind = s.kind.as_str().to_string();
                st.address = s.address.clone();
                st.priority = s.priority;
                st.state = "standby";
            });
            tokio::spawn(run_source(node.clone(), s, sinks.clone()));
        }
        Ok(sinks)
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        let mut m = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(name.to_string()).or_default());
    }

    /// Every source's status, with what it owns and has shadowed now.
    pub fn status(&self) -> Vec<SourceStatus> {
        let mut out: Vec<SourceStatus> = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if let Some(r) = &self.registry {
            let shared = r.read();
            let counts = shared.registry.source_counts();
            for s in &mut out {
                let c = counts.get(&s.name).copied().unwrap_or_default();
                (s.owned, s.shadowed) = (c.owned, c.shadowed);
                s.shadowed_records = shared
                    .registry
                    .shadowed_records(&s.name, MAX_QUARANTINE_SHOWN);
            }
        }
        out
    }

    /// `GET /v1/sources`.
    pub fn http_router(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/v1/sources",
            axum::routing::get(move || {
                let me = me.clone();
                async move { axum::Json(serde_json::json!({ "sources": me.status() })) }
            }),
        )
    }
}

async fn run_source(node: Arc<Node>, src: SourceConfig, sinks: Sinks) {
    let mut shutdown = node.shutdown_signal();
    // An adapter's catalog lives across reconnects, so that records read
    // again unchanged keep their first-observed time.
    let feed = Arc::new(Feed::default());
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !node.is_leader() {
            sinks.set(&src.name, |s| s.state = "standby");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        sinks.set(&src.name, |s| s.state = "connecting");
        let run = match src.kind {
            SourceKind::Mcp => sync_stream(&node, &src, &sinks).await,
            SourceKind::Zookeeper | SourceKind::Etcd | SourceKind::Nacos => {
                adapter::sync_adapter(&node, &src, &sinks, &feed).await
            }
        };
        match run {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(source = %src.name, kind = src.kind.as_str(), error = %e, "source failed; will retry");
                sinks.set(&src.name, |s| {
                    s.state = "error";
                    s.last_error = Some(e);
                });
            }
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection: subscribe, apply each response, until leadership is
/// lost (Ok) or the stream fails (Err).
async fn sync_stream(node: &Arc<Node>, src: &SourceConfig, sinks: &Sinks) -> Result<(), String> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", src.address))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", src.address))?;
    let (tx, rx) = mpsc::channel(4);
    let request = |version: String, nonce: String| ds::DiscoveryRequest {
        node: Some(EnvoyNode {
            id: format!("{SINK_NODE_PREFIX}{}", node.id),
            cluster: "meshreg".into(),
            ..Default::default()
        }),
        version_info: version,
        type_url: SERVICE_ENTRY_TYPE.into(),
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(request(String::new(), String::new()))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("ADS stream to {}: {}", src.address, e.message()))?
        .into_inner();
    sinks.set(&src.name, |s| s.state = "syncing");
    let mut leadership = tokio::time::interval(Duration::from_millis(300));
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(format!("{} closed the stream", src.address)),
                    Err(s) => return Err(format!("{}: {}", src.address, s.message())),
                };
                let (records, quarantined) = decode(node, src, &resp);
                apply_sync(node, src, sinks, records, quarantined).await?;
                tx.send(request(resp.version_info.clone(), resp.nonce.clone())).await.map_err(|e| e.to_string())?;
            }
            _ = leadership.tick() => {
                if !node.is_leader() {
                    return Ok(());
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Writes `records` as the whole current set of `src` (state of the world).
async fn apply_sync(
    node: &Node,
    src: &SourceConfig,
    sinks: &Sinks,
    records: Vec<Registration>,
    quarantined: Vec<(String, String)>,
) -> Result<(), String> {
    let n = records.len();
    let cmd = Command::SyncSourceRanked {
        source: src.name.clone(),
        priority: src.priority,
        records,
    };
    apply_write(node, src, sinks, cmd, n, quarantined)
        .await
        .map(|_| ())
}

/// Writes one sync of `src` (`SyncSourceRanked` or `SyncSourceDelta`)
/// through Raft and records the outcome in its status; `total` is the
/// number of valid records in the source's current set. Returns the keys
/// of the records the registry rejected.
async fn apply_write(
    node: &Node,
    src: &SourceConfig,
    sinks: &Sinks,
    cmd: Command,
    total: usize,
    quarantined: Vec<(String, String)>,
) -> Result<Vec<String>, String> {
    match node.write_local(cmd).await {
        Ok(CommandResponse::Synced {
            upserted,
            removed,
            skipped,
            ..
        }) => {
            let rejected = skipped.iter().map(|(k, _)| k.clone()).collect();
            sinks.set(&src.name, |s| {
                s.state = "synced";
                s.last_sync_ms = Some(now_ms());
                s.records = total + quarantined.len();
                s.upserted += u64::from(upserted);
                s.removed += u64::from(removed);
                s.quarantined_total = quarantined.len() + skipped.len();
                s.quarantined = quarantined
                    .into_iter()
                    .chain(skipped)
                    .take(MAX_QUARANTINE_SHOWN)
                    .collect();
                s.last_error = None;
            });
            Ok(rejected)
        }
        Ok(other) => Err(format!("unexpected response to a sync: {other:?}")),
        Err(e) => Err(format!("applying the sync: {e}")),
    }
}

/// Turns a response into validated records, and quarantined (key, reason) pairs.
fn decode(
    node: &Node,
    src: &SourceConfig,
    resp: &ds::DiscoveryResponse,
) -> (Vec<Registration>, Vec<(String, String)>) {
    let mut records = Vec::new();
    let mut quarantined = Vec::new();
    let observed_at_ms = now_ms() as i64;
    for (i, any) in resp.resources.iter().enumerate() {
        let res = match McpResource::decode(any.value.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                quarantined.push((
                    format!("resources[{i}]"),
                    format!("not an istio.mcp.v1alpha1.Resource: {e}"),
                ));
                continue;
            }
        };
        let meta = res.metadata.clone().unwrap_or_default();
        let name = meta.name.clone();
        let Some(body) = res.body.as_ref() else {
            quarantined.push((name, "resource has no body".into()));
            continue;
        };
        let se = match ServiceEntry::decode(body.value.as_slice()) {
            Ok(se) => se,
            Err(e) => {
                quarantined.push((name, format!("body is not a ServiceEntry: {e}")));
                continue;
            }
        };
        let (remote_ns, base) = name.split_once('/').unwrap_or(("default", name.as_str()));
        let remote_ns = meta
            .annotations
            .get(NAMESPACE_ANNOTATION)
            .map_or(remote_ns, String::as_str);
        let app = meta
            .annotations
            .get(APP_ANNOTATION)
            .map_or(base, String::as_str)
            .to_string();
        let ns = src
            .namespaces
            .get(remote_ns)
            .cloned()
            .unwrap_or_else(|| remote_ns.to_string());
        if !node.shared().read().registry.has_namespace(&ns) {
            quarantined.push((
                name.clone(),
                format!(
                    "namespace {ns:?} does not exist here; map it in the source's `namespaces`"
                ),
            ));
            continue;
        }
        let services: Vec<ServiceDef> = meta
            .annotations
            .get(SERVICES_ANNOTATION)
            .map(|list| {
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| ServiceDef {
                        name: s.to_string(),
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        for we in &se.endpoints {
            let mut ports: BTreeMap<String, u32> = we.ports.clone().into_iter().collect();
            if ports.is_empty() {
                for p in &se.ports {
                    ports.insert(p.name.clone(), p.number);
                }
            }
            let mut parts = we.locality.splitn(3, '/');
            let spec = InstanceSpec {
                namespace: ns.clone(),
                app: app.clone(),
                address: we.address.clone(),
                ports,
                labels: we.labels.clone().into_iter().collect(),
                weight: we.weight,
                locality: Locality {
                    region: parts.next().unwrap_or_default().to_string(),
                    zone: parts.next().unwrap_or_default().to_string(),
                    subzone: parts.next().unwrap_or_default().to_string(),
                },
                services: services.clone(),
                provenance: Some(Provenance {
                    source: src.name.clone(),
                    source_key: format!("{name}#{}", we.address),
                    observed_revision: meta.version.clone(),
                    observed_at_ms,
                }),
                ..Default::default()
            };
            match validate::registration(&format!("{name}#{}", we.address), spec) {
                Ok(r) => records.push(r),
                Err(e) => quarantined.push((format!("{name}#{}", we.address), e.to_string())),
            }
        }
    }
    (records, quarantined)
}
