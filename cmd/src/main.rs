//! The `meshreg` binary: `meshreg server` runs a registry node;
//! `meshreg ctl` talks to one over gRPC.

mod ctl;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use meshreg_registry::config::Config;
use meshreg_xds::config::XdsConfig;
use meshreg_xds::sink::SourceConfig;
use serve::ConfigFile;

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
    #[arg(
        long,
        env = "MESHREG_LOG",
        default_value = "info,openraft=warn,nacos_sdk=warn"
    )]
    log: String,
}

impl ServerArgs {
    /// The registry's config, the `[xds]` section and the `[[sources]]`.
    fn config(&self) -> anyhow::Result<(Config, XdsConfig, Vec<SourceConfig>)> {
        let (mut c, xds, sources) = match &self.config {
            Some(p) => {
                let file = ConfigFile::read(p)?;
                let c: Config = toml::Value::Table(file.registry)
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", p.display()))?;
                (c, file.xds, file.sources)
            }
            None => (Config::default(), XdsConfig::default(), Vec::new()),
        };
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

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    serve::init_logging(&args.log)?;
    let (config, xds, sources) = args.config()?;
    serve::run(serve::Run {
        program: "meshreg",
        config,
        xds,
        sources,
        bridge: false,
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
