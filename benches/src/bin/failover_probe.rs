//! Failover probe: how long writes stop when the leader dies.
//!
//! Sends one single-instance `Register` (a persistent instance, a new one
//! each time) every `--interval-ms` through `--addr`, a node that survives,
//! each request in its own task with a `--timeout-ms` deadline, so a stalled
//! request does not delay the next. After `--kill-after-ms` it runs
//! `kill -9 <--kill-pid>` (the leader's process) and keeps probing until a
//! write sent after the kill succeeds, or `--max-wait-ms` passes.
//!
//! Prints one JSON line:
//! `{"target":"failover","gap_ms":..,"kill_to_ok_ms":..,"failed":..}` where
//! `gap_ms` is from the completion of the last write that succeeded before
//! the kill to the completion of the first write that was sent after the
//! kill and succeeded, and `kill_to_ok_ms` is from the kill to that same
//! completion. `failed` counts requests that ended in an error or timeout.
//! Exits non-zero if no write succeeded after the kill.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_client::RegistryClient;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
struct Args {
    /// gRPC address of a node that is not killed.
    #[arg(long)]
    addr: String,
    /// Process id of the leader, killed with SIGKILL.
    #[arg(long)]
    kill_pid: u32,
    /// Probing before the kill, ms.
    #[arg(long, default_value_t = 1_000)]
    kill_after_ms: u64,
    /// Time between two writes, ms.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Deadline of one write, ms.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Give up this long after the kill, ms.
    #[arg(long, default_value_t = 30_000)]
    max_wait_ms: u64,
    /// Number of the first probe instance; use a different range per run.
    #[arg(long, default_value_t = 0)]
    start: usize,
}

fn entry(i: usize) -> pb::register_request::Entry {
    pb::register_request::Entry {
        instance: Some(pb::Instance {
            namespace: "default".into(),
            app: "failover-probe".into(),
            address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            ports: HashMap::from([("grpc".to_string(), 9999)]),
            ..Default::default()
        }),
        services: vec![],
    }
}

/// Outcome of one write: when it was sent, when it ended, whether it worked.
#[derive(Debug)]
struct Probe {
    sent: Instant,
    done: Instant,
    ok: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // A lazy channel reconnects by itself after errors.
    let channel = tonic::transport::Endpoint::from_shared(a.addr.clone())?
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let client = RegistryClient::new(channel);
    let (tx, mut rx) = mpsc::unbounded_channel::<Probe>();
    let timeout = Duration::from_millis(a.timeout_ms);
    let interval = Duration::from_millis(a.interval_ms.max(1));
    let started = Instant::now();
    let kill_at = started + Duration::from_millis(a.kill_after_ms);
    let give_up = kill_at + Duration::from_millis(a.max_wait_ms);
    let mut killed: Option<Instant> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes: Vec<Probe> = Vec::new();
    let mut i = a.start;
    // Bounded: ends at the first success after the kill or at `give_up`.
    let first_after = loop {
        ticker.tick().await;
        let now = Instant::now();
        if killed.is_none() && now >= kill_at {
            let status = std::process::Command::new("kill")
                .args(["-9", &a.kill_pid.to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -9 {} failed", a.kill_pid);
            killed = Some(Instant::now());
        }
        while let Ok(p) = rx.try_recv() {
            probes.push(p);
        }
        if let Some(k) = killed {
            if let Some(p) = probes
                .iter()
                .filter(|p| p.ok && p.sent >= k)
                .min_by_key(|p| p.done)
            {
                break Some(p.done);
            }
        }
        if now >= give_up {
            break None;
        }
        let (mut c, tx) = (client.clone(), tx.clone());
        let req = pb::RegisterRequest {
            instances: vec![entry(i)],
        };
        i += 1;
        tokio::spawn(async move {
            let sent = Instant::now();
            let ok = matches!(
                tokio::time::timeout(timeout, c.register(req)).await,
                Ok(Ok(_))
            );
            let _ = tx.send(Probe {
                sent,
                done: Instant::now(),
                ok,
            });
        });
    };
    let killed = killed.ok_or_else(|| anyhow::anyhow!("never killed"))?;
    let last_before = probes
        .iter()
        .filter(|p| p.ok && p.done <= killed)
        .map(|p| p.done)
        .max();
    let failed = probes.iter().filter(|p| !p.ok).count();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match (first_after, last_before) {
        (Some(f), Some(l)) => {
            println!(
                "{{\"target\":\"failover\",\"gap_ms\":{:.1},\"kill_to_ok_ms\":{:.1},\"failed\":{failed},\"probes\":{}}}",
                ms(f - l),
                ms(f - killed),
                probes.len()
            );
            Ok(())
        }
        (None, _) => anyhow::bail!(
            "no write succeeded within {} ms of the kill ({failed} failed)",
            a.max_wait_ms
        ),
        (Some(_), None) => anyhow::bail!("no write succeeded before the kill"),
    }
}
