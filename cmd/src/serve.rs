//! What `meshreg server` and `meshreg-bridge` share: the sections of the
//! TOML config file, logging, the shutdown signal, and running a node with
//! the ADS server and the `[[sources]]` until Ctrl-C or SIGTERM, printing
//! the one-line `{"event":"listening",...}` JSON on stdout that scripts and
//! tests read.
//!
//! Compiled into both binaries (`mod serve;`), so everything here is used
//! by both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshreg_registry::api::ops;
use meshreg_registry::config::Config;
use meshreg_registry::error::Error;
use meshreg_registry::http2::Direct;
use meshreg_registry::model::DEFAULT_NAMESPACE;
use meshreg_registry::node::Node;
use meshreg_registry::server::{self, Listeners};
use meshreg_xds::config::XdsConfig;
use meshreg_xds::server::{AdsServer, AdsService};
use meshreg_xds::sink::{Sinks, SourceConfig, SourceKind};
use tonic::server::NamedService;
use tonic::Status;

/// A TOML config file split into its sections: `[xds]`, `[[sources]]`
/// (each validated) and the rest (the registry's own settings).
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// Top-level keys and tables other than `xds` and `sources`.
    pub registry: toml::Table,
    /// The `[xds]` section, defaults applied.
    pub xds: XdsConfig,
    /// The `[[sources]]` entries.
    pub sources: Vec<SourceConfig>,
}

impl ConfigFile {
    /// Reads and splits `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or `[xds]` or a `[[sources]]`
    /// entry is invalid; the message names the file and the section.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let p = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {p}: {e}"))?;
        let mut registry: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config file {p}: {e}"))?;
        let xds: XdsConfig = match registry.remove("xds") {
            Some(v) => v
                .try_into()
                .map_err(|e| anyhow::anyhow!("invalid [xds] section in {p}: {e}"))?,
            None => XdsConfig::default(),
        };
        let sources: Vec<SourceConfig> = match registry.remove("sources") {
            Some(v) => v
                .try_into()
                .map_err(|e| anyhow::anyhow!("invalid [[sources]] in {p}: {e}"))?,
            None => Vec::new(),
        };
        for s in &sources {
            s.validate()
                .map_err(|e| anyhow::anyhow!("invalid [[sources]] in {p}: {e}"))?;
        }
        Ok(Self {
            registry,
            xds,
            sources,
        })
    }
}

/// Logs to stderr with a tracing `EnvFilter` (e.g. `info,openraft=warn`).
///
/// # Errors
/// An invalid filter.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    let f = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Resolves on Ctrl-C or (Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A node to run: the registry's settings, the ADS server's, the sources.
#[derive(Debug)]
pub struct Run {
    /// The program, for the log (`meshreg`, `meshreg-bridge`).
    pub program: &'static str,
    /// The registry node's settings, validated.
    pub config: Config,
    /// The ADS server's settings.
    pub xds: XdsConfig,
    /// The sources, validated.
    pub sources: Vec<SourceConfig>,
    /// Bridge mode. Before the sources start, the namespaces they write
    /// into are created (a source's records for a missing namespace would
    /// be quarantined); and until every source has completed its first
    /// sync, ADS streams are refused with UNAVAILABLE, so that a consumer
    /// never takes a bridge that has not read its sources yet for an empty
    /// registry (an MCP sink would delete everything it imported from it).
    pub bridge: bool,
}

/// Binds the listeners, runs the node with the ADS server and the sources,
/// prints the listening line once it serves, and drains on Ctrl-C/SIGTERM.
///
/// # Errors
/// A listener cannot be bound, or the node cannot start.
pub async fn run(r: Run) -> anyhow::Result<()> {
    let Run {
        program,
        config,
        xds,
        sources,
        bridge,
    } = r;
    let config = Arc::new(config);
    let listeners = Listeners::bind(&config).await?;
    let http = listeners.http.local_addr()?;
    let grpc = listeners.grpc.local_addr()?;
    let raft = listeners.raft.local_addr()?;
    let data_dir = config.data_dir.clone();
    let extend = move |node: &Arc<Node>| {
        let ads = AdsServer::start(node.clone(), xds);
        let ads_service = ads.service();
        let (direct, sources_http) = if bridge {
            // ADS refused with UNAVAILABLE until every source has synced
            // once, so that no sink takes a partial view for the whole.
            let serving = Arc::new(AtomicBool::new(false));
            let open = serving.clone();
            let gated = Direct {
                name: <AdsService as NamedService>::NAME,
                call: Arc::new(move |req| {
                    if open.load(Ordering::Acquire) {
                        ads_service.answer(req)
                    } else {
                        Status::unavailable(
                            "meshreg-bridge has not completed a first sync of every source yet; retry",
                        )
                        .into_http()
                    }
                }),
            };
            let http = start_sources_then_serve(node.clone(), sources, serving);
            (gated, http)
        } else {
            let sinks = start_sinks(node.clone(), sources);
            (ads_service.direct(), sinks.http_router())
        };
        server::Extension {
            grpc: tonic::service::Routes::default(),
            direct: vec![direct],
            http: ads.http_router().merge(sources_http),
        }
    };
    server::run_with(config, listeners, shutdown_signal(), extend, |node| {
        tracing::info!(%http, %grpc, %raft, data_dir = %data_dir.display(), node_id = node.id, "{program} is serving");
        // One machine-readable line on stdout, for scripts and tests.
        println!(
            "{}",
            serde_json::json!({"event": "listening", "http": http.to_string(), "grpc": grpc.to_string(), "raft": raft.to_string(), "node_id": node.id})
        );
    })
    .await
}

fn start_sinks(node: Arc<Node>, sources: Vec<SourceConfig>) -> Sinks {
    Sinks::start(node, sources).unwrap_or_else(|e| {
        tracing::error!(error = %e, "sources not started");
        Sinks::default()
    })
}

/// Bridge mode: creates the sources' namespaces, starts the sources, and
/// sets `serving` once each has completed a sync. Returns the
/// `GET /v1/sources` route, which lists no source until they start.
fn start_sources_then_serve(
    node: Arc<Node>,
    sources: Vec<SourceConfig>,
    serving: Arc<AtomicBool>,
) -> axum::Router {
    let started: Arc<OnceLock<Sinks>> = Arc::default();
    let sinks = started.clone();
    tokio::spawn(async move {
        let namespaces: BTreeSet<String> = sources.iter().flat_map(local_namespaces).collect();
        // `default` always exists.
        for ns in namespaces.iter().filter(|ns| *ns != DEFAULT_NAMESPACE) {
            if !create_namespace(&node, ns).await {
                return; // shutting down
            }
        }
        let sinks = started.get_or_init(|| start_sinks(node.clone(), sources));
        let mut shutdown = node.shutdown_signal();
        while !sinks.status().iter().all(|s| s.last_sync_ms.is_some()) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tracing::info!("every source has synced; serving ADS");
        serving.store(true, Ordering::Release);
    });
    // The same answer as `Sinks::http_router`, from sinks started later.
    axum::Router::new().route(
        "/v1/sources",
        axum::routing::get(move || {
            let status = sinks.get().map(Sinks::status).unwrap_or_default();
            async move { axum::Json(serde_json::json!({ "sources": status })) }
        }),
    )
}

/// The local namespaces a source writes into.
fn local_namespaces(s: &SourceConfig) -> Vec<String> {
    match s.kind {
        SourceKind::Mcp => s.namespaces.values().cloned().collect(),
        _ => vec![s.local_namespace().to_string()],
    }
}

/// Creates namespace `ns` unless it exists, retrying while there is no
/// leader yet. False when the node shuts down first.
async fn create_namespace(node: &Node, ns: &str) -> bool {
    let mut shutdown = node.shutdown_signal();
    loop {
        match ops::create_namespace(node, ns.to_string(), BTreeMap::new()).await {
            Ok(_) => {
                tracing::info!(namespace = ns, "created the namespace of a source");
                return true;
            }
            Err(Error::AlreadyExists { .. }) => return true,
            Err(e @ (Error::Unavailable(_) | Error::NotLeader { .. })) => {
                tracing::debug!(namespace = ns, error = %e, "cannot create the namespace yet; retrying");
            }
            Err(e) => {
                // Its records are quarantined with the reason; the other
                // sources still run.
                tracing::error!(namespace = ns, error = %e, "cannot create the namespace of a source");
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
    }
}
