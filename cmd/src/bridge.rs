//! The `meshreg-bridge` binary: reads other registries (the `[[sources]]`
//! of a TOML file: ZooKeeper, etcd, Nacos, MCP) and serves what it reads as
//! MCP-over-xDS ServiceEntries, for istiod or a meshreg (`kind = "mcp"`).
//!
//! It is an embedded single-node meshreg: the sources write through its
//! Raft log like a server's do, and its ADS server serves the result, with
//! imported records exported to other meshregs' sinks too
//! (`export_imported_to_meshreg`). Its state is rebuilt from the sources,
//! so by default it lives in a temporary directory removed on exit. Until
//! every source has completed its first sync, ADS streams are refused with
//! UNAVAILABLE (docs/mcp.md, "Bridge").

mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use meshreg_registry::config::Config;
use serve::ConfigFile;

/// Flags override environment variables.
#[derive(Debug, Parser)]
#[command(
    name = "meshreg-bridge",
    version,
    about = "Reads registries (ZooKeeper, etcd, Nacos, MCP) and serves them as MCP-over-xDS"
)]
struct BridgeArgs {
    /// TOML file with the `[[sources]]` to read (as `meshreg server` takes
    /// them) and optionally an `[xds]` section.
    #[arg(long, env = "MESHREG_BRIDGE_CONFIG")]
    config: PathBuf,
    /// gRPC address: ADS (MCP-over-xDS, xDS) and the registry API.
    #[arg(
        long,
        env = "MESHREG_BRIDGE_GRPC_ADDR",
        default_value = "127.0.0.1:7171"
    )]
    grpc_addr: SocketAddr,
    /// HTTP address: `GET /v1/sources`, the registry's REST API, `/metrics`,
    /// `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "MESHREG_BRIDGE_HTTP_ADDR",
        default_value = "127.0.0.1:7170"
    )]
    http_addr: SocketAddr,
    /// Keep the state here instead of in a temporary directory removed on
    /// exit (it is rebuilt from the sources either way).
    #[arg(long, env = "MESHREG_BRIDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `meshreg_xds=debug`.
    #[arg(
        long,
        env = "MESHREG_BRIDGE_LOG",
        default_value = "info,openraft=warn,nacos_sdk=warn"
    )]
    log: String,
}

async fn run(args: BridgeArgs) -> anyhow::Result<()> {
    serve::init_logging(&args.log)?;
    let p = args.config.display();
    let mut file = ConfigFile::read(&args.config)?;
    if let Some(key) = file.registry.keys().next() {
        anyhow::bail!(
            "unknown key {key:?} in {p}: meshreg-bridge reads only [[sources]] and [xds] (the rest are `meshreg server` settings)"
        );
    }
    if file.sources.is_empty() {
        anyhow::bail!("no [[sources]] in {p}: the bridge has nothing to serve");
    }
    // Re-serving what it imports is the bridge's whole job.
    file.xds.export_imported_to_meshreg = true;
    // `_temp` lives until `run` returns; dropping it removes the directory.
    let (data_dir, _temp) = match args.data_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("meshreg-bridge-")
                .tempdir()
                .map_err(|e| anyhow::anyhow!("cannot create a temporary data directory: {e}"))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let config = Config {
        node_id: 1,
        data_dir,
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        // Raft peer traffic: none (one node), but the node needs a listener.
        raft_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        join: Vec::new(),
        ..Config::default()
    };
    config.validate()?;
    serve::run(serve::Run {
        program: "meshreg-bridge",
        config,
        xds: file.xds,
        sources: file.sources,
        bridge: true,
    })
    .await
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(BridgeArgs::parse()).await {
        eprintln!("meshreg-bridge: {e:#}");
        std::process::exit(1);
    }
}
