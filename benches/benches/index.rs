//! Subset index: a selective query (app + zone + version + health SERVING)
//! answered by the roaring-bitmap index (`Registry::select`) and by a linear
//! scan (`Registry::scan`), on registries of 10k, 100k and 1M instances
//! built from `meshreg_benches::workload`. Also prints the index's heap
//! bytes per instance at each size (stderr, lines starting `index-bytes`).
//!
//! Run: `cargo bench -p meshreg-benches --bench index`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meshreg_benches::workload::{self, build_registry};
use meshreg_registry::model::{Health, DEFAULT_NAMESPACE};
use meshreg_registry::selector::{Requirement, Selector};

const SEED: u64 = 0x6d65_7368_7265_6731;
const SIZES: [u32; 3] = [10_000, 100_000, 1_000_000];
/// Instances per Register command while building.
const BUILD_BATCH: u32 = 1_000;
/// Feed events kept; only its bounded memory matters here.
const FEED_CAPACITY: usize = 10_000;

fn query() -> Selector {
    Selector {
        app: Some(workload::app_name(7)),
        zone: Some(workload::ZONES[2].into()),
        health: vec![Health::Serving],
        labels: vec![Requirement::In("version".into(), vec!["v1".into()])],
        ..Default::default()
    }
}

fn label(n: u32) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n => format!("{}k", n / 1_000),
    }
}

fn subset_query(c: &mut Criterion) {
    let sel = query();
    let mut group = c.benchmark_group("subset_query");
    for n in SIZES {
        let started = Instant::now();
        let reg = build_registry(n, SEED, BUILD_BATCH, FEED_CAPACITY)
            .expect("workload registers cleanly");
        let built = started.elapsed();
        let hits = reg.select(DEFAULT_NAMESPACE, &sel);
        assert_eq!(
            hits,
            reg.scan(DEFAULT_NAMESPACE, &sel),
            "index and scan disagree at {n}"
        );
        let bytes = reg.index_bytes();
        eprintln!(
            "index-bytes size={} instances={} index_bytes={} bytes_per_instance={:.1} query_hits={} build_s={:.2}",
            label(n),
            reg.instance_count(),
            bytes,
            bytes as f64 / reg.instance_count() as f64,
            hits.len(),
            built.as_secs_f64(),
        );

        group
            .sample_size(50)
            .measurement_time(Duration::from_secs(3));
        group.bench_with_input(BenchmarkId::new("select", label(n)), &n, |b, _| {
            b.iter(|| reg.select(black_box(DEFAULT_NAMESPACE), black_box(&sel)))
        });
        // A scan of 1M instances takes a large fraction of a second: few samples.
        if n >= 1_000_000 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(10));
        } else {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(3));
        }
        group.bench_with_input(BenchmarkId::new("scan", label(n)), &n, |b, _| {
            b.iter(|| reg.scan(black_box(DEFAULT_NAMESPACE), black_box(&sel)))
        });
    }
    group.finish();
}

criterion_group!(benches, subset_query);
criterion_main!(benches);
