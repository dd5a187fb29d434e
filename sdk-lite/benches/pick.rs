//! `LoadBalancer::pick` cost per policy at 10, 1,000 and 10,000 endpoints,
//! and with a subset selector; and the resident memory of one 10,000-endpoint
//! set with a prepared balancer. Results: BENCHMARKS.md ("SDK pick").
//!
//! `cargo bench -p meshreg-sdk --bench pick`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion};
use meshreg_sdk::lb::{hash_key, LoadBalancer, Policy, SubsetFallback};
use meshreg_sdk::{Endpoint, EndpointSet, Health, Locality, Origin};

fn set(n: usize) -> Arc<EndpointSet> {
    let endpoints = (0..n)
        .map(|i| Endpoint {
            address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            port: 8080,
            weight: 1 + (i % 3) as u32,
            health: Health::Serving,
            labels: BTreeMap::from([
                ("version".to_string(), format!("v{}", i % 10)),
                ("zone".to_string(), format!("z{}", i % 3)),
            ]),
            locality: Locality {
                region: "r".into(),
                zone: format!("z{}", i % 3),
                subzone: String::new(),
            },
            instance_id: format!("pay-{i}"),
        })
        .collect();
    Arc::new(EndpointSet {
        name: "outbound|8080||pay.default".into(),
        version: "1".into(),
        origin: Origin::Registry,
        endpoints,
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn memory_report() {
    let before = rss_kib();
    let s = set(10_000);
    let rr = LoadBalancer::new(Policy::RoundRobin);
    let _ = rr.pick(&s); // prepares the candidate list
    let with_set = rss_kib();
    let lb = LoadBalancer::new(Policy::RingHash);
    let _ = lb.pick_hashed(&s, 7); // builds the ring
    let with_ring = rss_kib();
    let per = |kib: u64| kib * 1024 / 10_000;
    println!(
        "memory: 10,000 endpoints with a prepared round-robin balancer: +{} KiB RSS ({} B per endpoint); \
         a ring-hash balancer over them adds +{} KiB ({} B per endpoint)",
        with_set.saturating_sub(before),
        per(with_set.saturating_sub(before)),
        with_ring.saturating_sub(with_set),
        per(with_ring.saturating_sub(with_set)),
    );
    black_box((s, lb, rr));
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [10usize, 1_000, 10_000] {
        let s = set(n);
        for (name, policy) in [
            ("round_robin", Policy::RoundRobin),
            ("weighted_random", Policy::WeightedRandom),
            ("least_request", Policy::LeastRequest),
            ("ring_hash", Policy::RingHash),
        ] {
            let lb = LoadBalancer::new(policy);
            let mut k = 0u64;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    black_box(lb.pick_hashed(&s, hash_key(&k.to_le_bytes())))
                })
            });
        }
        let subset = LoadBalancer::new(Policy::RoundRobin).subset(
            BTreeMap::from([("version".to_string(), "v3".to_string())]),
            SubsetFallback::NoFallback,
        );
        g.bench_with_input(BenchmarkId::new("subset_round_robin", n), &n, |b, _| {
            b.iter(|| black_box(subset.pick(&s)))
        });
    }
    g.finish();
}

fn main() {
    memory_report();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
