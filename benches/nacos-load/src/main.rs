//! End-to-end registration load against a Nacos 2.x server (rnacos in this
//! project's runs) through the `nacos-sdk` crate's gRPC client: the same
//! instances, concurrency and batching as `register_load` does for meshreg.
//! Prints the same JSON line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder, ServiceInstance};
use nacos_sdk::api::props::ClientProps;

#[derive(Debug, Parser)]
struct Args {
    /// Nacos server address (HTTP port; the gRPC port is +1000).
    #[arg(long, default_value = "127.0.0.1:8848")]
    addr: String,
    #[arg(long, default_value_t = 20_000)]
    instances: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Instances per request (batchRegisterInstance of one service).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 200)]
    apps: usize,
}

fn instance(i: usize) -> ServiceInstance {
    ServiceInstance {
        instance_id: None,
        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        port: 8080,
        weight: 1.0,
        healthy: true,
        enabled: true,
        ephemeral: true,
        cluster_name: None,
        service_name: None,
        metadata: HashMap::from([
            ("version".to_string(), format!("v{}", i % 3)),
            ("env".to_string(), "prod".to_string()),
        ]),
    }
}

fn summary(mut s: Vec<Duration>, n: usize, wall: Duration, a: &Args) -> String {
    s.sort_unstable();
    let pct = |p: f64| if s.is_empty() { 0.0 } else { s[((s.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0 };
    format!(
        "{{\"target\":\"nacos\",\"concurrency\":{},\"batch\":{},\"requests\":{},\"instances\":{n},\"seconds\":{:.3},\"instances_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        a.concurrency,
        a.batch,
        s.len(),
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64().max(1e-9),
        pct(0.5),
        pct(0.99)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let per_worker = a.instances.div_ceil(a.concurrency);
    let mut clients: Vec<NamingService> = Vec::new();
    for w in 0..a.concurrency {
        let c = NamingServiceBuilder::new(
            ClientProps::new()
                .server_addr(a.addr.clone())
                .namespace("")
                .app_name(format!("loadgen-{w}")),
        )
        .build()
        .await?;
        clients.push(c);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in clients.into_iter().enumerate() {
        let (apps, batch, total) = (a.apps, a.batch.max(1), a.instances);
        tasks.push(tokio::spawn(async move {
            let ids: Vec<usize> = (w * per_worker..((w + 1) * per_worker).min(total)).collect();
            // Group by service so a batch is one service's instances, as
            // Nacos's batchRegisterInstance requires.
            let mut by_app: HashMap<usize, Vec<usize>> = HashMap::new();
            for i in &ids {
                by_app.entry((i / 100) % apps).or_default().push(*i);
            }
            let mut lat = Vec::new();
            for (app, members) in by_app {
                let service = format!("app-{app}");
                for chunk in members.chunks(batch) {
                    let t = Instant::now();
                    if batch == 1 {
                        c.register_instance(service.clone(), None, instance(chunk[0])).await?;
                    } else {
                        c.batch_register_instance(service.clone(), None, chunk.iter().map(|i| instance(*i)).collect()).await?;
                    }
                    lat.push(t.elapsed());
                }
            }
            anyhow::Ok((lat, ids.len(), c))
        }));
    }
    let mut all = Vec::new();
    let mut n = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (lat, count, c) = t.await??;
        all.extend(lat);
        n += count;
        keep.push(c);
    }
    let wall = started.elapsed();
    println!("{}", summary(all, n, wall, &a));
    drop(keep);
    Ok(())
}
