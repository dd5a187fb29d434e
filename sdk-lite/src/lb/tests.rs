use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::endpoints::{Health, Locality, Origin};

fn ep(i: u8, weight: u32, health: Health) -> Endpoint {
    Endpoint {
        address: format!("10.0.0.{i}"),
        port: 9090,
        weight,
        health,
        labels: Default::default(),
        locality: Locality::default(),
        instance_id: format!("10.0.0.{i}:9090"),
    }
}

fn set(eps: Vec<Endpoint>) -> Arc<EndpointSet> {
    Arc::new(EndpointSet {
        name: "outbound|9090||pay.default".into(),
        version: "v".into(),
        origin: Origin::Registry,
        endpoints: eps,
    })
}

fn count(lb: &LoadBalancer, s: &Arc<EndpointSet>, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let p = lb.pick(s).expect("a pick");
        *m.entry(p.endpoint().address.clone()).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_is_exactly_even_and_skips_unusable() {
    let s = set(vec![
        ep(1, 1, Health::Serving),
        ep(2, 1, Health::Serving),
        ep(3, 1, Health::Unknown),
        ep(4, 50, Health::Draining),
    ]);
    let lb = LoadBalancer::new(Policy::RoundRobin);
    let m = count(&lb, &s, 300);
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m.values().all(|c| *c == 100), "{m:?}");
    assert!(!m.contains_key("10.0.0.4"));
}

#[test]
fn round_robin_follows_weights_interleaved() {
    let s = set(vec![
        ep(1, 5, Health::Serving),
        ep(2, 1, Health::Serving),
        ep(3, 1, Health::Serving),
    ]);
    let lb = LoadBalancer::new(Policy::RoundRobin);
    let picks: Vec<String> = (0..700)
        .map(|_| lb.pick(&s).unwrap().endpoint().address.clone())
        .collect();
    let n = |a: &str| picks.iter().filter(|p| p.as_str() == a).count();
    assert_eq!(
        (n("10.0.0.1"), n("10.0.0.2"), n("10.0.0.3")),
        (500, 100, 100)
    );
    let longest = picks
        .chunk_by(|a, b| a == b)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(
        longest <= 3,
        "the weight-5 endpoint ran {longest} times in a row"
    );
    // Large weights are scaled to a bounded schedule but keep their ratio.
    assert_eq!(edf_schedule(&[1_000_000, 3_000_000]).len(), 65_536);
    let sched = edf_schedule(&[1_000_000, 3_000_000]);
    assert_eq!(sched.iter().filter(|k| **k == 1).count(), 49_152);
}

#[test]
fn least_request_weighs_requests_in_flight_by_weight() {
    // 10.0.0.2 has twice the requests in flight but four times the weight:
    // 2/4 < 1/1, so it is the less loaded.
    let s = set(vec![ep(1, 1, Health::Serving), ep(2, 4, Health::Serving)]);
    let lb = LoadBalancer::new(Policy::LeastRequest);
    let mut held = Vec::new();
    while held.len() < 3 {
        held.push(lb.pick(&s).unwrap());
    }
    let load = |a: &str| held.iter().filter(|p| p.endpoint().address == a).count();
    assert_eq!((load("10.0.0.1"), load("10.0.0.2")), (1, 2), "first picks");
    for _ in 0..20 {
        let p = lb.pick(&s).unwrap();
        assert_eq!(p.endpoint().address, "10.0.0.2");
    }
}

#[test]
fn weighted_random_follows_weights() {
    let s = set(vec![
        ep(1, 100, Health::Serving),
        ep(2, 300, Health::Serving),
    ]);
    let lb = LoadBalancer::new(Policy::WeightedRandom);
    let n = 40_000;
    let m = count(&lb, &s, n);
    let share = m["10.0.0.2"] as f64 / n as f64;
    // Expected 0.75; the standard deviation is ~0.002.
    assert!((share - 0.75).abs() < 0.02, "share {share}");
}

#[test]
fn least_request_avoids_busy_endpoints_and_guards_release() {
    let s = set(vec![ep(1, 1, Health::Serving), ep(2, 1, Health::Serving)]);
    let lb = LoadBalancer::new(Policy::LeastRequest);
    // With two endpoints both are compared on every pick: the busier one
    // is never chosen while it has more in flight.
    let first = lb.pick(&s).unwrap();
    let busy = first.endpoint().address.clone();
    for _ in 0..50 {
        let p = lb.pick(&s).unwrap();
        assert_ne!(p.endpoint().address, busy, "picked the busier endpoint");
    }
    drop(first);
    let counters = lb.in_flight.lock().unwrap();
    assert!(
        counters.values().all(|c| c.load(Ordering::Acquire) == 0),
        "every guard released its count"
    );
}

#[test]
fn least_request_spreads_over_many_when_idle() {
    let s = set((1..=4).map(|i| ep(i, 1, Health::Serving)).collect());
    let lb = LoadBalancer::new(Policy::LeastRequest);
    let m = count(&lb, &s, 4000);
    assert_eq!(m.len(), 4);
    assert!(m.values().all(|c| *c > 800), "{m:?}");
}

#[test]
fn ring_hash_is_deterministic_balanced_and_stable() {
    let eps: Vec<Endpoint> = (1..=4).map(|i| ep(i, 1, Health::Serving)).collect();
    let s = set(eps.clone());
    let mut rev = eps.clone();
    rev.reverse();
    let s_rev = set(rev);
    let a = LoadBalancer::new(Policy::RingHash);
    let b = LoadBalancer::new(Policy::RingHash);
    let mut owner = HashMap::new();
    let mut per = HashMap::<String, usize>::new();
    for k in 0..10_000u32 {
        let h = hash_key(format!("user-{k}").as_bytes());
        let x = a.pick_hashed(&s, h).unwrap().endpoint().address.clone();
        assert_eq!(x, a.pick_hashed(&s, h).unwrap().endpoint().address);
        assert_eq!(
            x,
            b.pick_hashed(&s_rev, h).unwrap().endpoint().address,
            "order-independent"
        );
        *per.entry(x.clone()).or_default() += 1;
        owner.insert(k, x);
    }
    for (addr, c) in &per {
        assert!((1500..=3500).contains(c), "{addr} got {c} of 10000");
    }
    // Removing one endpoint moves only the keys it owned.
    let s3 = set(eps[..3].to_vec());
    for (k, was) in &owner {
        let h = hash_key(format!("user-{k}").as_bytes());
        let now = a.pick_hashed(&s3, h).unwrap().endpoint().address.clone();
        if was != "10.0.0.4" {
            assert_eq!(&now, was, "key {k} moved though its endpoint stayed");
        }
    }
    // A fixed key gives a fixed, documented-stable hash.
    assert_eq!(hash_key(b"abc"), hash_key(b"abc"));
    assert_ne!(hash_key(b"abc"), hash_key(b"abd"));
}

#[test]
fn ring_hash_follows_weights() {
    let s = set(vec![ep(1, 1, Health::Serving), ep(2, 3, Health::Serving)]);
    let lb = LoadBalancer::new(Policy::RingHash);
    let mut heavy = 0;
    for k in 0..20_000u32 {
        let h = hash_key(format!("k{k}").as_bytes());
        if lb.pick_hashed(&s, h).unwrap().endpoint().address == "10.0.0.2" {
            heavy += 1;
        }
    }
    let share = f64::from(heavy) / 20_000.0;
    assert!((share - 0.75).abs() < 0.06, "share {share}");
}

#[test]
fn panic_threshold_uses_all_endpoints_when_too_few_are_healthy() {
    // 1 of 4 usable (25 %) < 50 %: panic, all four are candidates.
    let s = set(vec![
        ep(1, 1, Health::Serving),
        ep(2, 1, Health::NotServing),
        ep(3, 1, Health::NotServing),
        ep(4, 1, Health::Draining),
    ]);
    let lb = LoadBalancer::new(Policy::RoundRobin);
    let p = lb.pick(&s).unwrap();
    assert!(p.panic());
    assert_eq!(count(&lb, &s, 400).len(), 4);

    // The same set with the threshold at 20 %: only the healthy one.
    let lb = LoadBalancer::new(Policy::RoundRobin).panic_threshold(20.0);
    let m = count(&lb, &s, 100);
    assert_eq!(m.keys().collect::<Vec<_>>(), vec!["10.0.0.1"]);
    assert!(!lb.pick(&s).unwrap().panic());

    // 3 of 4 usable (75 %) ≥ 50 %: no panic.
    let s = set(vec![
        ep(1, 1, Health::Serving),
        ep(2, 1, Health::Serving),
        ep(3, 1, Health::Warning),
        ep(4, 1, Health::NotServing),
    ]);
    let lb = LoadBalancer::new(Policy::WeightedRandom);
    assert!(!count(&lb, &s, 400).contains_key("10.0.0.4"));

    // Threshold 0 disables panic: none usable means no pick.
    let s = set(vec![ep(1, 1, Health::NotServing)]);
    assert!(LoadBalancer::new(Policy::RoundRobin)
        .panic_threshold(0.0)
        .pick(&s)
        .is_none());
    assert!(LoadBalancer::new(Policy::RoundRobin)
        .pick(&set(vec![]))
        .is_none());
}

#[test]
fn a_new_snapshot_is_picked_up() {
    let lb = LoadBalancer::new(Policy::RoundRobin);
    let a = set(vec![ep(1, 1, Health::Serving)]);
    assert_eq!(lb.pick(&a).unwrap().endpoint().address, "10.0.0.1");
    let b = set(vec![ep(2, 1, Health::Serving)]);
    assert_eq!(lb.pick(&b).unwrap().endpoint().address, "10.0.0.2");
}

fn labelled(i: u8, version: &str, zone: &str, health: Health) -> Endpoint {
    let mut e = ep(i, 1, health);
    e.labels.insert("version".into(), version.into());
    e.locality = Locality {
        region: "r1".into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    e
}

fn sel(v: &str) -> BTreeMap<String, String> {
    [("version".to_string(), v.to_string())]
        .into_iter()
        .collect()
}

#[test]
fn subsets_pick_matching_labels_and_fall_back_as_configured() {
    let s = set(vec![
        labelled(1, "v1", "z1", Health::Serving),
        labelled(2, "v2", "z1", Health::Serving),
        labelled(3, "v2", "z2", Health::Serving),
    ]);
    let v2 = LoadBalancer::new(Policy::RoundRobin).subset(sel("v2"), SubsetFallback::NoFallback);
    let got = count(&v2, &s, 100);
    assert_eq!(got.keys().len(), 2);
    assert!(!got.contains_key("10.0.0.1"));
    // No match: each fallback policy.
    let none = LoadBalancer::new(Policy::RoundRobin).subset(sel("v9"), SubsetFallback::NoFallback);
    assert!(none.pick(&s).is_none());
    let any = LoadBalancer::new(Policy::RoundRobin).subset(sel("v9"), SubsetFallback::AnyEndpoint);
    assert_eq!(count(&any, &s, 90).len(), 3);
    let default = LoadBalancer::new(Policy::RoundRobin)
        .subset(sel("v9"), SubsetFallback::DefaultSubset(sel("v1")));
    assert_eq!(
        count(&default, &s, 10).keys().collect::<Vec<_>>(),
        vec!["10.0.0.1"]
    );
}

#[test]
fn locality_is_preferred_and_fails_over_when_the_zone_has_no_usable_endpoint() {
    let here = Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: String::new(),
    };
    let s = set(vec![
        labelled(1, "v1", "z1", Health::Serving),
        labelled(2, "v1", "z2", Health::Serving),
        labelled(3, "v1", "z2", Health::Serving),
    ]);
    let lb = LoadBalancer::new(Policy::RoundRobin).prefer_locality(here.clone());
    assert_eq!(
        count(&lb, &s, 50).keys().collect::<Vec<_>>(),
        vec!["10.0.0.1"],
        "same zone first"
    );
    // The zone's only endpoint goes unhealthy: the region's others take over.
    let s2 = set(vec![
        labelled(1, "v1", "z1", Health::NotServing),
        labelled(2, "v1", "z2", Health::Serving),
        labelled(3, "v1", "z2", Health::Serving),
    ]);
    let got = count(&lb, &s2, 50);
    assert!(!got.contains_key("10.0.0.1") && got.len() == 2, "{got:?}");
    // Subset and locality together.
    let lb = LoadBalancer::new(Policy::RoundRobin)
        .subset(sel("v1"), SubsetFallback::NoFallback)
        .prefer_locality(here);
    assert_eq!(
        count(&lb, &s, 20).keys().collect::<Vec<_>>(),
        vec!["10.0.0.1"]
    );
}
