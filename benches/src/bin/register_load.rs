//! End-to-end registration load against a running meshreg over gRPC.
//!
//! `concurrency` workers each open their own connection (like separate
//! application processes), grant a session (ephemeral instances, as Nacos
//! registers by default), and register their share of `instances`, `batch`
//! per request. Prints one JSON line of [`meshreg_benches::LatencyStats`].
//!
//! With `--addrs a,b,c` worker `w` connects to `addrs[w % len]`, spreading
//! the clients over the nodes of a cluster (followers forward writes to the
//! leader). `--persistent` registers persistent instances (no session), so
//! they outlive this process; `--start` offsets the instance numbers, so
//! several runs against one registry add distinct instances.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use meshreg_benches::LatencyStats;
use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_client::RegistryClient;

#[derive(Debug, Parser)]
struct Args {
    /// gRPC address of meshreg.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    addr: String,
    /// gRPC addresses of several nodes, comma-separated; overrides `--addr`.
    /// Worker `w` uses `addrs[w % len]`.
    #[arg(long, value_delimiter = ',')]
    addrs: Vec<String>,
    /// Number of the first instance (instances are `start..start+instances`).
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Register persistent instances (session 0) instead of granting a
    /// session per worker.
    #[arg(long)]
    persistent: bool,
    /// Target name printed in the JSON line.
    #[arg(long, default_value = "meshreg")]
    label: String,
    /// Instances to register in total.
    #[arg(long, default_value_t = 20_000)]
    instances: usize,
    /// Concurrent workers (connections).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Instances per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Distinct applications (services) the instances belong to.
    #[arg(long, default_value_t = 200)]
    apps: usize,
}

fn instance(i: usize, apps: usize, session: u64) -> pb::register_request::Entry {
    // Blocks of 100 consecutive instances per app, so a batch is one app
    // (Nacos batches are per service; see nacos-load).
    let app = format!("app-{}", (i / 100) % apps);
    pb::register_request::Entry {
        instance: Some(pb::Instance {
            namespace: "default".into(),
            app: app.clone(),
            address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            ports: HashMap::from([("grpc".to_string(), 8080)]),
            labels: HashMap::from([
                ("version".to_string(), format!("v{}", i % 3)),
                ("env".to_string(), "prod".to_string()),
            ]),
            session,
            ..Default::default()
        }),
        services: vec![pb::ServiceDef {
            name: format!("{app}.Service"),
            protocol: "grpc".into(),
            ..Default::default()
        }],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let per_worker = a.instances.div_ceil(a.concurrency);
    let addrs = if a.addrs.is_empty() {
        vec![a.addr.clone()]
    } else {
        a.addrs.clone()
    };
    let mut clients = Vec::new();
    for w in 0..a.concurrency {
        let mut c = RegistryClient::connect(addrs[w % addrs.len()].clone())
            .await?
            .max_encoding_message_size(16 * 1024 * 1024)
            .max_decoding_message_size(16 * 1024 * 1024);
        let session = if a.persistent {
            0
        } else {
            c.grant_session(pb::GrantSessionRequest { ttl_ms: 600_000 })
                .await?
                .into_inner()
                .session_id
        };
        clients.push((c, session));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, (mut c, session)) in clients.into_iter().enumerate() {
        let (apps, batch, total, start) = (a.apps, a.batch.max(1), a.instances, a.start);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker / batch + 1);
            let ids: Vec<usize> = (w * per_worker..((w + 1) * per_worker).min(total))
                .map(|i| start + i)
                .collect();
            for chunk in ids.chunks(batch) {
                let req = pb::RegisterRequest {
                    instances: chunk.iter().map(|i| instance(*i, apps, session)).collect(),
                };
                let t = Instant::now();
                c.register(req).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok((lat, ids.len()))
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    let mut n = 0;
    for t in tasks {
        let (lat, count) = t.await??;
        all.extend(lat);
        n += count;
    }
    let stats = LatencyStats::from_samples(all, n, started.elapsed());
    println!("{}", stats.json_line(&a.label, a.concurrency, a.batch));
    Ok(())
}
