//! The `meshreg` binary: `meshreg server` runs a registry node;
//! `meshreg ctl` talks to one over gRPC.

mod ctl;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use meshreg_registry::config::Config;
use meshreg_registry::server::{self, Listeners};
use meshreg_xds::config::XdsConfig;
use meshreg_xds::server::AdsServer;
use meshreg_xds::sink::{Sinks, SourceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "meshreg",
    version,
    about = "meshreg: a service registry with a built-in control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a registry node (a single-node cluster by default, data under ./meshreg-data).
    Server(ServerArgs),
    /// Use a running registry from the terminal.
    Ctl(ctl::CtlArgs),
}

/// Flags override environment variables, which override the config file,
/// which overrides the defaults.
#[derive(Debug, Args)]
struct ServerArgs {
    /// TOML config file.
    #[arg(long, env = "MESHREG_CONFIG")]
    config: Option<PathBuf>,
    /// Raft node id (≥ 1).
    #[arg(long, env = "MESHREG_NODE_ID")]
    node_id: Option<u64>,
    /// Data directory [default: ./meshreg-data].
    #[arg(long, env = "MESHREG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:7070].
    #[arg(long, env = "MESHREG_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// gRPC API address [default: 127.0.0.1:7071].
    #[arg(long, env = "MESHREG_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Raft peer listener, advertised in the membership [default: 127.0.0.1:7072].
    #[arg(long, env = "MESHREG_RAFT_ADDR")]
    raft_addr: Option<SocketAddr>,
    /// Raft address of an existing member to join through on first start
    /// (repeatable, or comma-separated). Without it, a first start creates a
    /// new cluster with this node as its seed.
    #[arg(long, env = "MESHREG_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Allow PUT /debug/faults to cut Raft links. For fault tests only.
    #[arg(long, hide = true)]
    enable_fault_injection: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `meshreg_registry=debug`.
    #[arg(long, env = "MESHREG_LOG", default_value = "info,openraft=warn")]
    log: String,
}

impl ServerArgs {
    /// The registry's config, the `[xds]` section and the `[[sources]]`.
    fn config(&self) -> anyhow::Result<(Config, XdsConfig, Vec<SourceConfig>)> {
        let (mut c, xds, sources) = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
                let mut table: toml::Table = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", p.display()))?;
                let xds: XdsConfig = match table.remove("xds") {
                    Some(v) => v.try_into().map_err(|e| {
                        anyhow::anyhow!("invalid [xds] section in {}: {e}", p.display())
                    })?,
                    None => XdsConfig::default(),
                };
                let sources: Vec<SourceConfig> = match table.remove("sources") {
                    Some(v) => v.try_into().map_err(|e| {
                        anyhow::anyhow!("invalid [[sources]] in {}: {e}", p.display())
                    })?,
                    None => Vec::new(),
                };
                let c: Config = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", p.display()))?;
                (c, xds, sources)
            }
            None => (Config::default(), XdsConfig::default(), Vec::new()),
        };
        for s in &sources {
            s.validate()
                .map_err(|e| anyhow::anyhow!("invalid [[sources]]: {e}"))?;
        }
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.http_addr {
            c.http_addr = v;
        }
        if let Some(v) = self.grpc_addr {
            c.grpc_addr = v;
        }
        if let Some(v) = self.raft_addr {
            c.raft_addr = v;
        }
        if !self.join.is_empty() {
            c.join = self.join.clone();
        }
        if self.enable_fault_injection {
            c.enable_fault_injection = true;
        }
        c.validate()?;
        Ok((c, xds, sources))
    }
}

async fn shutdown_signal() {
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

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {:?}: {e}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let (config, xds_config, sources) = args.config()?;
    let config = Arc::new(config);
    let listeners = Listeners::bind(&config).await?;
    let http = listeners.http.local_addr()?;
    let grpc = listeners.grpc.local_addr()?;
    let raft = listeners.raft.local_addr()?;
    let data_dir = config.data_dir.clone();
    let extend = move |node: &Arc<meshreg_registry::node::Node>| {
        let ads = AdsServer::start(node.clone(), xds_config);
        let sinks = Sinks::start(node.clone(), sources).unwrap_or_else(|e| {
            tracing::error!(error = %e, "sources not started");
            Sinks::default()
        });
        server::Extension {
            grpc: tonic::service::Routes::new(ads.service()),
            http: ads.http_router().merge(sinks.http_router()),
        }
    };
    server::run_with(config.clone(), listeners, shutdown_signal(), extend, |node| {
        tracing::info!(%http, %grpc, %raft, data_dir = %data_dir.display(), node_id = node.id, "meshreg is serving");
        // One machine-readable line on stdout, for scripts and tests.
        println!(
            "{}",
            serde_json::json!({"event": "listening", "http": http.to_string(), "grpc": grpc.to_string(), "raft": raft.to_string(), "node_id": node.id})
        );
    })
    .await
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Server(a) => run_server(a).await,
        Cmd::Ctl(a) => ctl::run(a).await,
    };
    if let Err(e) = res {
        eprintln!("meshreg: {e:#}");
        std::process::exit(1);
    }
}
