//! State machine apply rate of `Register` commands, no network and no disk:
//! what one core can apply once Raft has committed the entries.
//!
//! Steady state: the registry already holds [`BASE`] instances of
//! `meshreg_benches::workload`. Each timed chunk registers [`CHUNK`] new
//! instances of the same applications (one per command, or 100 per command);
//! an untimed `Deregister` then removes them again, so the registry size,
//! its free list and the full feed stay the same from chunk to chunk. The
//! `Registration` values are validated once, before timing; the figure is
//! `Registry::apply` alone (including the clone of each instance into the
//! store, index maintenance and the feed event).
//!
//! Fill: the same commands applied to an empty registry, [`FILL`] instances
//! per iteration, so every instance takes fresh memory and the maps grow;
//! cloning the commands and dropping the registry are not timed.
//!
//! Every throughput is in instances/s; with one instance per command that
//! is also commands/s, with 100 it is 100 × commands/s.
//!
//! Run: `cargo bench -p meshreg-benches --bench apply`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use meshreg_benches::workload::Workload;
use meshreg_registry::command::{Command, CommandResponse};
use meshreg_registry::model::Registration;
use meshreg_registry::state::Registry;

const SEED: u64 = 0x6d65_7368_7265_6731;
/// Instances in the registry before (and after) every timed chunk.
const BASE: u32 = 100_000;
/// New instances registered per timed chunk.
const CHUNK: u32 = 1_000;
/// Instances registered into an empty registry per fill iteration.
const FILL: u32 = 10_000;
/// Feed events kept (a bounded ring; full in steady state).
const FEED_CAPACITY: usize = 10_000;

/// Applies `cmds[..]` cyclically, `iters` commands in all, timing only the
/// registers (by value, as the Raft state machine applies its entries; the
/// copies are made before the clock starts); `undo` removes what a pass
/// registered.
fn run(reg: &mut Registry, cmds: &[Command], undo: &Command, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let k =
            usize::try_from((iters - done).min(cmds.len() as u64)).expect("chunk fits in usize");
        let owned: Vec<Command> = cmds[..k].to_vec();
        let started = Instant::now();
        for c in owned {
            black_box(reg.apply_owned(black_box(c)));
        }
        total += started.elapsed();
        reg.apply(undo);
        done += k as u64;
    }
    total
}

fn commands(pool: &[Registration], per_command: usize) -> Vec<Command> {
    pool.chunks(per_command)
        .map(|c| Command::Register {
            entries: c.to_vec(),
        })
        .collect()
}

fn apply_register(c: &mut Criterion) {
    let mut w = Workload::new(SEED);
    let mut reg = Registry::new(FEED_CAPACITY);
    w.register(&mut reg, 0..BASE, 1_000)
        .expect("base workload registers cleanly");
    let pool = w
        .registrations(BASE..BASE + CHUNK)
        .expect("pool specs are valid");
    let undo = Command::Deregister {
        keys: pool.iter().map(|r| r.instance.key()).collect(),
    };

    let mut group = c.benchmark_group("apply_register");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for per_command in [1usize, 100] {
        let cmds = commands(&pool, per_command);
        // Every command applies and registers all its instances.
        for cmd in &cmds {
            let r = reg.apply(cmd);
            assert!(
                matches!(r, CommandResponse::Applied { count, .. } if count as usize == per_command),
                "{r:?}"
            );
        }
        reg.apply(&undo);
        assert_eq!(reg.instance_count(), BASE as usize);

        group.throughput(Throughput::Elements(per_command as u64));
        group.bench_function(
            BenchmarkId::new("instances_per_command", per_command),
            |b| b.iter_custom(|iters| run(&mut reg, &cmds, &undo, iters)),
        );
    }
    group.finish();
    assert_eq!(reg.instance_count(), BASE as usize);
}

fn apply_register_fill(c: &mut Criterion) {
    let pool = Workload::new(SEED)
        .registrations(0..FILL)
        .expect("fill specs are valid");
    let mut group = c.benchmark_group("apply_register_fill");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(u64::from(FILL)));
    for per_command in [1usize, 100] {
        let cmds = commands(&pool, per_command);
        group.bench_function(
            BenchmarkId::new("instances_per_command", per_command),
            |b| {
                b.iter_batched(
                    || cmds.clone(),
                    |cmds| {
                        let mut reg = Registry::new(FEED_CAPACITY);
                        for c in cmds {
                            black_box(reg.apply_owned(black_box(c)));
                        }
                        // Returned, so dropping the registry is not timed.
                        reg
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, apply_register, apply_register_fill);
criterion_main!(benches);
