//! `meshreg-proxy`: the sidecar. See docs/proxy.md.

use std::path::PathBuf;

use clap::Parser;
use meshreg_proxy::bootstrap::{Bootstrap, Locality, TcpOutbound};

/// The meshreg sidecar: configured entirely by meshreg over delta ADS.
#[derive(Debug, Parser)]
#[command(name = "meshreg-proxy", version, about)]
struct Args {
    /// Bootstrap file (TOML); flags override its fields.
    #[arg(long, env = "MESHREG_PROXY_BOOTSTRAP")]
    bootstrap: Option<PathBuf>,
    /// The application this sidecar runs beside.
    #[arg(long, env = "MESHREG_APP")]
    app: Option<String>,
    /// Namespace of the application.
    #[arg(long, env = "MESHREG_NAMESPACE")]
    namespace: Option<String>,
    /// xDS node id (default `sidecar~<app>~<pid>`).
    #[arg(long)]
    node_id: Option<String>,
    /// meshreg xDS address (host:port, port 7071); repeat or comma-separate for failover.
    #[arg(long, value_delimiter = ',')]
    xds: Vec<String>,
    /// Admin port.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Outbound listener port.
    #[arg(long)]
    outbound_port: Option<u16>,
    /// Inbound listener port.
    #[arg(long)]
    inbound_port: Option<u16>,
    /// Bind every listener to this IP instead of the Listener resource's.
    #[arg(long)]
    bind_ip: Option<String>,
    /// Log one line per request.
    #[arg(long)]
    access_log: bool,
    /// Drain timeout in milliseconds.
    #[arg(long)]
    drain_timeout_ms: Option<u64>,
    /// Locality region.
    #[arg(long)]
    region: Option<String>,
    /// Locality zone.
    #[arg(long)]
    zone: Option<String>,
    /// An outbound TCP port, `<port>=<target>` (e.g. `13306=db.default:3306`;
    /// target `<app>.<namespace>:<port>`, `<app>:<port>` or a service name):
    /// the application connects to 127.0.0.1:<port> to reach the target.
    /// Repeat for more; replaces the bootstrap file's `tcp_outbound`.
    #[arg(long = "tcp-outbound", value_name = "PORT=TARGET", value_parser = parse_tcp_outbound)]
    tcp_outbound: Vec<TcpOutbound>,
}

fn parse_tcp_outbound(s: &str) -> Result<TcpOutbound, String> {
    TcpOutbound::parse(s).map_err(|e| format!("tcp_outbound: {e}"))
}

fn bootstrap(a: Args) -> anyhow::Result<Bootstrap> {
    let mut b = match &a.bootstrap {
        Some(p) => Bootstrap::load(p)?,
        None => Bootstrap::default(),
    };
    if let Some(v) = a.app {
        b.app = v;
    }
    if let Some(v) = a.namespace {
        b.namespace = v;
    }
    if let Some(v) = a.node_id {
        b.node_id = v;
    }
    if !a.xds.is_empty() {
        b.xds = a.xds;
    }
    if let Some(v) = a.admin_port {
        b.admin_port = v;
    }
    if let Some(v) = a.outbound_port {
        b.outbound_port = v;
    }
    if let Some(v) = a.inbound_port {
        b.inbound_port = v;
    }
    if let Some(v) = a.bind_ip {
        b.bind_ip = Some(v);
    }
    b.access_log |= a.access_log;
    if let Some(v) = a.drain_timeout_ms {
        b.drain_timeout_ms = v;
    }
    if !a.tcp_outbound.is_empty() {
        b.tcp_outbound = a.tcp_outbound;
    }
    if a.region.is_some() || a.zone.is_some() {
        b.locality = Locality {
            region: a.region.unwrap_or(b.locality.region),
            zone: a.zone.unwrap_or(b.locality.zone),
            subzone: b.locality.subzone,
        };
    }
    b.finish()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let b = bootstrap(Args::parse())?;
    // A sidecar shares its host with the application: a small fixed pool of
    // worker threads (MESHREG_PROXY_WORKERS, default 1) rather than one per core.
    let workers = std::env::var("MESHREG_PROXY_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    // One worker: tokio's current-thread scheduler (no work-stealing
    // bookkeeping on the hot path); more: the multi-thread one.
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(meshreg_proxy::run(b))
}
