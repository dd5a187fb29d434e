//! Registration-shaped write load against an etcd cluster through the
//! `etcd-client` crate: the same instance numbering, concurrency and
//! batching as meshreg's `register_load`, with each instance written as one
//! key of `--value-bytes` bytes (the size of one meshreg registration's
//! protobuf encoding, measured by `benches/cluster-bench.sh`).
//!
//! Each worker opens its own client to `endpoints[w % len]` (etcd followers
//! forward proposals to the leader, as meshreg's do), grants a lease (as
//! `register_load` grants a session) and writes its share of the keys:
//! one `Put` per request with `--batch 1`, otherwise one `Txn` of `--batch`
//! puts (etcd's default `--max-txn-ops` is 128). Prints the same JSON line
//! as `register_load`.

use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, PutOptions, Txn, TxnOp};

#[derive(Debug, Parser)]
struct Args {
    /// Client URLs of the etcd members, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Keys to write in total.
    #[arg(long, default_value_t = 20_000)]
    instances: usize,
    /// Number of the first instance.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Concurrent workers (connections).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Keys per request (one `Txn` when above 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Distinct applications the keys are spread over.
    #[arg(long, default_value_t = 200)]
    apps: usize,
    /// Size of each value, bytes.
    #[arg(long, default_value_t = 110)]
    value_bytes: usize,
    /// Lease TTL, seconds; 0 writes keys without a lease.
    #[arg(long, default_value_t = 600)]
    lease_ttl_s: i64,
    /// Target name printed in the JSON line.
    #[arg(long, default_value = "etcd")]
    label: String,
}

fn key(i: usize, apps: usize) -> String {
    format!(
        "/registry/default/app-{}/10.{}.{}.{}:8080",
        i % apps,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

fn summary(mut s: Vec<Duration>, n: usize, wall: Duration, a: &Args) -> String {
    s.sort_unstable();
    let pct = |p: f64| {
        if s.is_empty() {
            0.0
        } else {
            s[((s.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
        }
    };
    format!(
        "{{\"target\":\"{}\",\"concurrency\":{},\"batch\":{},\"requests\":{},\"instances\":{n},\"seconds\":{:.3},\"instances_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        a.label,
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
    anyhow::ensure!(!a.endpoints.is_empty(), "no --endpoints");
    let per_worker = a.instances.div_ceil(a.concurrency);
    let value = vec![b'x'; a.value_bytes];
    let mut clients = Vec::new();
    for w in 0..a.concurrency {
        let mut c = Client::connect([a.endpoints[w % a.endpoints.len()].as_str()], None).await?;
        let lease = if a.lease_ttl_s > 0 {
            Some(c.lease_grant(a.lease_ttl_s, None).await?.id())
        } else {
            None
        };
        clients.push((c, lease));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, (mut c, lease)) in clients.into_iter().enumerate() {
        let (apps, batch, total, start) = (a.apps, a.batch.max(1), a.instances, a.start);
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let opts = || lease.map(|l| PutOptions::new().with_lease(l));
            let mut lat = Vec::with_capacity(per_worker / batch + 1);
            let ids: Vec<usize> = (w * per_worker..((w + 1) * per_worker).min(total))
                .map(|i| start + i)
                .collect();
            for chunk in ids.chunks(batch) {
                // Built before the clock starts, as `register_load` does.
                if batch == 1 {
                    let k = key(chunk[0], apps);
                    let t = Instant::now();
                    c.put(k, value.clone(), opts()).await?;
                    lat.push(t.elapsed());
                } else {
                    let ops: Vec<TxnOp> = chunk
                        .iter()
                        .map(|i| TxnOp::put(key(*i, apps), value.clone(), opts()))
                        .collect();
                    let txn = Txn::new().and_then(ops);
                    let t = Instant::now();
                    c.txn(txn).await?;
                    lat.push(t.elapsed());
                }
            }
            anyhow::Ok((lat, ids.len()))
        }));
    }
    let mut all = Vec::new();
    let mut n = 0;
    for t in tasks {
        let (lat, count) = t.await??;
        all.extend(lat);
        n += count;
    }
    println!("{}", summary(all, n, started.elapsed(), &a));
    Ok(())
}
