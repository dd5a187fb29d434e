use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// An entry with times in arbitrary units.
fn e(client: usize, op: Op, call: u64, ret: u64, outcome: Outcome) -> Entry {
    Entry {
        client,
        op,
        call_ns: call,
        return_ns: Some(ret),
        outcome,
    }
}

fn read(v: &str) -> Outcome {
    Outcome::Read(Some(v.to_owned()))
}

const ABSENT: Outcome = Outcome::Read(None);

/// Asserts `h` fails on `key` and returns the violation.
fn assert_not_linearizable(h: &[Entry], key: &str) -> Violation {
    match check(h) {
        Err(v @ Violation::NotLinearizable { .. }) => {
            let Violation::NotLinearizable { key: k, .. } = &v else {
                unreachable!()
            };
            assert_eq!(k, key, "{v}");
            v
        }
        other => panic!("expected NotLinearizable on {key:?}, got {other:?}"),
    }
}

#[test]
fn sequential_history_passes() {
    let h = [
        e(0, Op::get("a"), 0, 1, ABSENT),
        e(0, Op::put("a", "v1"), 2, 3, Outcome::Ok),
        e(1, Op::get("a"), 4, 5, read("v1")),
        e(1, Op::put("a", "v2"), 6, 7, Outcome::Ok),
        e(0, Op::get("a"), 8, 9, read("v2")),
        e(0, Op::delete("a"), 10, 11, Outcome::Ok),
        e(1, Op::get("a"), 12, 13, ABSENT),
    ];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn concurrent_put_and_gets_pass_when_an_order_exists() {
    // Reads overlapping a put may see the old or the new value.
    let h = [
        e(0, Op::put("a", "v1"), 0, 10, Outcome::Ok),
        e(1, Op::get("a"), 1, 2, ABSENT),
        e(1, Op::get("a"), 3, 4, read("v1")),
        e(2, Op::get("a"), 0, 20, read("v1")),
        e(2, Op::get("a"), 21, 22, read("v1")),
    ];
    assert_eq!(check(&h), Ok(()));
    // Two concurrent puts: either may win, as long as later reads agree.
    for winner in ["v1", "v2"] {
        let h = [
            e(0, Op::put("a", "v1"), 0, 10, Outcome::Ok),
            e(1, Op::put("a", "v2"), 5, 15, Outcome::Ok),
            e(2, Op::get("a"), 16, 17, read(winner)),
            e(3, Op::get("a"), 18, 19, read(winner)),
        ];
        assert_eq!(check(&h), Ok(()), "winner {winner}");
    }
    // Touching intervals count as overlapping.
    let h = [
        e(0, Op::put("a", "v1"), 0, 5, Outcome::Ok),
        e(1, Op::get("a"), 5, 6, ABSENT),
    ];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn reads_during_a_put_cannot_go_back() {
    // Once a read saw v1, a later read (even while the put is in flight)
    // cannot see the key absent again.
    let h = [
        e(0, Op::put("a", "v1"), 0, 10, Outcome::Ok),
        e(1, Op::get("a"), 1, 2, read("v1")),
        e(1, Op::get("a"), 3, 4, ABSENT),
    ];
    assert_not_linearizable(&h, "a");
    // Two concurrent puts: later readers cannot disagree on the winner.
    let h = [
        e(0, Op::put("a", "v1"), 0, 10, Outcome::Ok),
        e(1, Op::put("a", "v2"), 0, 10, Outcome::Ok),
        e(2, Op::get("a"), 11, 12, read("v1")),
        e(3, Op::get("a"), 13, 14, read("v2")),
    ];
    assert_not_linearizable(&h, "a");
}

#[test]
fn stale_read_after_completed_put_fails() {
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(0, Op::put("a", "v2"), 2, 3, Outcome::Ok),
        e(1, Op::get("a"), 4, 5, read("v1")),
    ];
    let v = assert_not_linearizable(&h, "a");
    let Violation::NotLinearizable {
        ops,
        longest_prefix,
        state_after_prefix,
        next_candidates,
        ..
    } = &v
    else {
        unreachable!()
    };
    assert_eq!(ops.len(), 3);
    assert_eq!(longest_prefix, &[0, 1]);
    assert_eq!(state_after_prefix.as_deref(), Some("v2"));
    assert_eq!(next_candidates, &[2]);
}

#[test]
fn read_of_a_value_never_written_fails() {
    let h = [
        e(0, Op::put("a", "v1"), 0, 10, Outcome::Ok),
        e(1, Op::get("a"), 2, 3, read("ghost")),
    ];
    assert_not_linearizable(&h, "a");
    // A value written to another key does not count.
    let h = [
        e(0, Op::put("b", "v1"), 0, 1, Outcome::Ok),
        e(1, Op::get("a"), 2, 3, read("v1")),
    ];
    assert_not_linearizable(&h, "a");
    // Nor does a put that definitely failed.
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Failed),
        e(1, Op::get("a"), 2, 3, read("v1")),
    ];
    assert_not_linearizable(&h, "a");
}

#[test]
fn lost_acknowledged_write_fails() {
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(1, Op::get("a"), 2, 3, ABSENT),
    ];
    assert_not_linearizable(&h, "a");
    // Once v2 was seen, reads must not go back to v1, even while the put
    // of v2 is still in flight.
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(0, Op::put("a", "v2"), 2, 10, Outcome::Ok),
        e(1, Op::get("a"), 3, 4, read("v2")),
        e(1, Op::get("a"), 5, 6, read("v1")),
    ];
    assert_not_linearizable(&h, "a");
}

#[test]
fn unknown_writes_may_or_may_not_take_effect() {
    let put = e(0, Op::put("a", "v1"), 0, 1, Outcome::Unknown);
    // Took effect.
    assert_eq!(
        check(&[put.clone(), e(1, Op::get("a"), 5, 6, read("v1"))]),
        Ok(())
    );
    // Did not (or not yet).
    assert_eq!(
        check(&[put.clone(), e(1, Op::get("a"), 5, 6, ABSENT)]),
        Ok(())
    );
    // Took effect late: after a read that missed it.
    let late = [
        put.clone(),
        e(1, Op::get("a"), 5, 6, ABSENT),
        e(1, Op::get("a"), 7, 8, read("v1")),
    ];
    assert_eq!(check(&late), Ok(()));
    // But it takes effect at most once: seen, then gone with no delete.
    let flicker = [
        put.clone(),
        e(1, Op::get("a"), 5, 6, read("v1")),
        e(1, Op::get("a"), 7, 8, ABSENT),
    ];
    assert_not_linearizable(&flicker, "a");
    // And never before its invocation.
    let early = [
        e(1, Op::get("a"), 0, 1, read("v1")),
        e(0, Op::put("a", "v1"), 5, 6, Outcome::Unknown),
    ];
    assert_not_linearizable(&early, "a");
    // A put that never ended (no response time) is unknown too.
    let pending = Entry {
        return_ns: None,
        ..put
    };
    assert_eq!(
        check(&[pending, e(1, Op::get("a"), 5, 6, read("v1"))]),
        Ok(())
    );
}

#[test]
fn delete_semantics() {
    // Acknowledged delete: the old value is gone.
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(0, Op::delete("a"), 2, 3, Outcome::Ok),
        e(1, Op::get("a"), 4, 5, read("v1")),
    ];
    assert_not_linearizable(&h, "a");
    // Deleting an absent key is fine; a put after a delete is visible.
    let h = [
        e(0, Op::delete("a"), 0, 1, Outcome::Ok),
        e(0, Op::put("a", "v1"), 2, 3, Outcome::Ok),
        e(0, Op::delete("a"), 4, 5, Outcome::Ok),
        e(0, Op::put("a", "v1"), 6, 7, Outcome::Ok),
        e(1, Op::get("a"), 8, 9, read("v1")),
    ];
    assert_eq!(check(&h), Ok(()));
    // Unknown delete: both readings pass.
    for seen in [ABSENT, read("v1")] {
        let h = [
            e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
            e(0, Op::delete("a"), 2, 3, Outcome::Unknown),
            e(1, Op::get("a"), 4, 5, seen.clone()),
        ];
        assert_eq!(check(&h), Ok(()), "{seen:?}");
    }
    // A delete concurrent with a read may or may not be seen.
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(0, Op::delete("a"), 2, 10, Outcome::Ok),
        e(1, Op::get("a"), 3, 4, read("v1")),
        e(1, Op::get("a"), 5, 6, ABSENT),
        e(1, Op::get("a"), 11, 12, ABSENT),
    ];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn keys_are_checked_independently() {
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(0, Op::put("b", "v1"), 0, 1, Outcome::Ok),
        e(1, Op::get("a"), 2, 3, read("v1")),
        e(1, Op::get("b"), 2, 3, ABSENT),
        e(1, Op::get("c"), 2, 3, ABSENT),
    ];
    let v = assert_not_linearizable(&h, "b");
    let Violation::NotLinearizable { ops, .. } = &v else {
        unreachable!()
    };
    assert!(ops.iter().all(|o| o.op.key() == "b"), "{v}");
}

#[test]
fn unknown_and_failed_reads_are_ignored() {
    let h = [
        e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok),
        e(1, Op::get("a"), 2, 3, Outcome::Unknown),
        e(1, Op::get("a"), 4, 5, Outcome::Failed),
    ];
    assert_eq!(check(&h), Ok(()));
}

#[test]
fn malformed_entries_are_reported() {
    let cases = [
        (e(0, Op::get("a"), 0, 1, Outcome::Ok), "a get"),
        (e(0, Op::put("a", "v"), 0, 1, ABSENT), "a put or delete"),
        (e(0, Op::get("a"), 5, 4, ABSENT), "returned before"),
        (
            Entry {
                return_ns: None,
                ..e(0, Op::delete("a"), 0, 1, Outcome::Ok)
            },
            "needs a return time",
        ),
    ];
    for (bad, why) in cases {
        let h = [e(0, Op::put("a", "v1"), 0, 1, Outcome::Ok), bad.clone()];
        match check(&h) {
            Err(Violation::Malformed {
                index,
                entry,
                reason,
            }) => {
                assert_eq!((index, &*entry), (1, &bad));
                assert!(reason.starts_with(why) || reason.contains(why), "{reason}");
            }
            other => panic!("expected Malformed for {bad:?}, got {other:?}"),
        }
    }
}

#[test]
fn budget_exhaustion_is_inconclusive() {
    // Many concurrent puts of distinct values and a read of an absent key
    // after them all: no order works, and proving it takes many steps.
    let mut h: Vec<Entry> = (0..12)
        .map(|i| e(i, Op::put("a", format!("v{i}")), 0, 100, Outcome::Ok))
        .collect();
    h.push(e(99, Op::get("a"), 101, 102, ABSENT));
    match check_with_budget(&h, 50) {
        Err(Violation::Inconclusive { key, ops, steps }) => {
            assert_eq!((key.as_str(), ops.len(), steps), ("a", 13, 50));
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
    // With the default budget the answer is found.
    assert_not_linearizable(&h, "a");
}

#[test]
fn report_shows_the_key_and_its_ops() {
    let h = [
        e(
            3,
            Op::put("svc/a", "10.0.0.1:80"),
            1_000_000,
            2_500_000,
            Outcome::Ok,
        ),
        e(4, Op::delete("svc/a"), 2_000_000, 0, Outcome::Unknown),
        e(
            7,
            Op::get("svc/a"),
            3_000_000,
            3_100_000,
            read("10.0.0.9:80"),
        ),
        e(7, Op::get("svc/b"), 3_000_000, 3_100_000, ABSENT),
    ];
    let text = check(&h).unwrap_err().to_string();
    println!("{text}");
    for want in [
        "key \"svc/a\" is not linearizable (3 ops",
        "#0    client 3    [     0.000 ..     1.500]  put \"10.0.0.1:80\" -> ok",
        "#1    client 4    [     1.000 ..         ?]  delete -> unknown",
        "#2    client 7    [     2.000 ..     2.100]  get -> \"10.0.0.9:80\"",
        "longest linearizable prefix: [#0 #1], leaving the value absent",
        "candidates for the next op [#2]",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("svc/b"), "{text}");
}

#[test]
fn recorder_records_concurrent_threads() {
    let rec = Recorder::new();
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|client| {
            let (rec, store) = (rec.clone(), store.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(client as u64);
                for i in 0..50 {
                    let key = format!("k{}", rng.below(3));
                    let op = match rng.below(3) {
                        0 => Op::put(&key, format!("{client}-{i}")),
                        1 => Op::delete(&key),
                        _ => Op::get(&key),
                    };
                    let t = rec.begin(client, op.clone());
                    let mut s = store.lock().unwrap();
                    let outcome = match op {
                        Op::Put { key, value } => {
                            s.insert(key, value);
                            Outcome::Ok
                        }
                        Op::Delete { key } => {
                            s.remove(&key);
                            Outcome::Ok
                        }
                        Op::Get { key } => Outcome::Read(s.get(&key).cloned()),
                    };
                    drop(s);
                    std::thread::yield_now();
                    rec.end(t, outcome);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A token never ended stays Unknown.
    let _pending = rec.begin(9, Op::put("k0", "never-acknowledged"));
    let h = rec.history();
    assert_eq!(h.len(), 201);
    assert!(h
        .iter()
        .all(|e| e.outcome == Outcome::Unknown || e.return_ns >= Some(e.call_ns)));
    assert_eq!(h[200].outcome, Outcome::Unknown);
    assert_eq!(check(&h), Ok(()));

    // The same history with one read corrupted fails.
    let mut bad = h;
    let i = bad
        .iter()
        .position(|e| matches!(e.outcome, Outcome::Read(Some(_))))
        .expect("some read saw a value");
    bad[i].outcome = read("corrupted");
    assert_not_linearizable(&bad, bad[i].op.key());
}

#[test]
#[should_panic(expected = "token from another recorder")]
fn token_from_another_recorder_panics() {
    let (a, b) = (Recorder::new(), Recorder::new());
    let t = a.begin(0, Op::get("k"));
    b.end(t, ABSENT);
}

/// splitmix64: a tiny deterministic PRNG, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A linearizable history: `clients` clients each run `per_client`
/// sequential ops on random keys; every op takes effect at a random point
/// within its interval (or, for the ~5% with an unknown outcome, at a random
/// later time or never). Values repeat, as re-registered addresses do.
fn generate(seed: u64, clients: usize, per_client: usize, keys: u64) -> Vec<Entry> {
    let mut rng = Rng(seed);
    let mut ops = Vec::new(); // (effect time, entry)
    for client in 0..clients {
        let mut t = rng.below(100);
        for _ in 0..per_client {
            let key = format!("svc/inst-{}", rng.below(keys));
            let op = match rng.below(20) {
                0..=7 => Op::put(&key, format!("10.0.0.{}:80", rng.below(5))),
                8..=10 => Op::delete(&key),
                _ => Op::get(&key),
            };
            let call = t + rng.below(50);
            let ret = call + 1 + rng.below(200);
            let unknown = rng.below(20) == 0;
            let effect = match (unknown, &op) {
                (false, _) => Some(call + rng.below(ret - call + 1)),
                (true, Op::Get { .. }) => None,
                (true, _) => (rng.below(2) == 0).then(|| call + rng.below(1000)),
            };
            t = ret;
            ops.push((effect, e(client, op, call, ret, Outcome::Unknown), unknown));
        }
    }
    // Apply effects in time order to a plain map to fill in the results.
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].0.is_some()).collect();
    order.sort_by_key(|&i| (ops[i].0, i));
    let mut store: HashMap<String, String> = HashMap::new();
    for i in order {
        let (_, entry, unknown) = &mut ops[i];
        let result = match &entry.op {
            Op::Put { key, value } => {
                store.insert(key.clone(), value.clone());
                Outcome::Ok
            }
            Op::Delete { key } => {
                store.remove(key);
                Outcome::Ok
            }
            Op::Get { key } => Outcome::Read(store.get(key).cloned()),
        };
        if !*unknown {
            entry.outcome = result;
        }
    }
    ops.into_iter().map(|(_, entry, _)| entry).collect()
}

#[test]
fn large_realistic_history_checks_quickly() {
    let h = generate(42, 20, 100, 50);
    assert_eq!(h.len(), 2_000);
    let started = Instant::now();
    assert_eq!(check(&h), Ok(()));
    let took = started.elapsed();
    println!("2000 ops over 50 keys checked in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // A single stale read anywhere in it is found.
    let mut bad = h.clone();
    let i = bad
        .iter()
        .rposition(|e| matches!(e.outcome, Outcome::Read(Some(_))))
        .expect("some read saw a value");
    bad[i].outcome = read("10.0.0.250:80");
    assert_not_linearizable(&bad, bad[i].op.key());
}

#[test]
fn hot_key_history_checks_quickly() {
    // All clients on 2 keys: high concurrency per key, where memoization
    // matters.
    for seed in 0..3 {
        let h = generate(seed, 8, 100, 2);
        let started = Instant::now();
        assert_eq!(check(&h), Ok(()), "seed {seed}");
        let took = started.elapsed();
        println!("seed {seed}: 800 ops over 2 keys checked in {took:?}");
        assert!(took < Duration::from_secs(3), "seed {seed} took {took:?}");
    }
}

/// A crash leaves many writes in doubt on one key: unobserved unknown puts
/// are pruned, so the check stays fast, and an observed one still counts.
#[test]
fn many_unobserved_unknown_puts_check_quickly() {
    let mut h = vec![e(0, Op::put("k", "base"), 0, 10, Outcome::Ok)];
    for i in 0..200u64 {
        let mut u = e(
            1 + i as usize,
            Op::put("k", format!("u{i}")),
            20 + i,
            21 + i,
            Outcome::Unknown,
        );
        u.return_ns = None;
        h.push(u);
    }
    h.push(e(500, Op::get("k"), 1_000, 1_010, read("u7")));
    h.push(e(501, Op::get("k"), 1_020, 1_030, read("u7")));
    let started = Instant::now();
    check(&h).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // Reading the base value after an observed unknown put took effect is a violation.
    h.push(e(502, Op::get("k"), 2_000, 2_010, read("base")));
    assert_not_linearizable(&h, "k");
}

/// Many deletes in doubt (a crashed node) stay cheap to check, and a
/// violation among them is still found.
#[test]
fn many_unknown_deletes_check_quickly() {
    let mut h = vec![e(0, Op::put("k", "a"), 0, 10, Outcome::Ok)];
    for i in 0..40u64 {
        let mut d = e(
            1 + i as usize,
            Op::delete("k"),
            20 + i,
            21 + i,
            Outcome::Unknown,
        );
        d.return_ns = None;
        h.push(d);
    }
    h.push(e(100, Op::get("k"), 1_000, 1_010, ABSENT));
    h.push(e(101, Op::put("k", "b"), 1_100, 1_110, Outcome::Ok));
    h.push(e(102, Op::get("k"), 1_200, 1_210, ABSENT));
    h.push(e(103, Op::put("k", "c"), 1_300, 1_310, Outcome::Ok));
    h.push(e(104, Op::get("k"), 1_400, 1_410, read("c")));
    let started = Instant::now();
    check(&h).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // "a" cannot come back after it was deleted and overwritten.
    h.push(e(105, Op::get("k"), 1_500, 1_510, read("a")));
    assert_not_linearizable(&h, "k");
}
