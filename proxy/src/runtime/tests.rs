use super::*;
use crate::config::{LbPolicy, Limits};

fn host(i: u8, weight: u32, zone: &str, labels: &[(&str, &str)]) -> HostCfg {
    HostCfg {
        authority: format!("10.0.0.{i}:80"),
        app_port: None,
        weight,
        healthy: true,
        locality: ("r".into(), zone.into(), String::new()),
        priority: 0,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn cfg(lb: LbPolicy) -> ClusterCfg {
    ClusterCfg {
        name: "c".into(),
        eds_name: Some("c".into()),
        static_hosts: Vec::new(),
        lb,
        ring_size: 1024,
        connect_timeout: Duration::from_secs(1),
        outlier: Some(OutlierCfg {
            consecutive_5xx: 3,
            consecutive_gateway: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }),
        limits: Limits::default(),
        subset: Some(SubsetFallback::None),
        http2: false,
    }
}

fn none() -> (String, String, String) {
    Default::default()
}

fn counts(c: &Cluster, n: usize, ctx: &PickCtx<'_>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        if let Some(h) = c.pick(ctx) {
            *m.entry(h.cfg.authority.clone()).or_default() += 1;
        }
    }
    m
}

#[test]
fn round_robin_is_even_and_weighted() {
    let c = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        vec![
            host(1, 1, "a", &[]),
            host(2, 1, "a", &[]),
            host(3, 1, "a", &[]),
        ],
        None,
        &none(),
    );
    let m = counts(&c, 300, &PickCtx::default());
    assert!(m.values().all(|v| *v == 100), "{m:?}");
    let c = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        vec![host(1, 3, "a", &[]), host(2, 1, "a", &[])],
        None,
        &none(),
    );
    let m = counts(&c, 400, &PickCtx::default());
    assert_eq!((m["10.0.0.1:80"], m["10.0.0.2:80"]), (300, 100));
}

#[test]
fn subsets_pick_matching_endpoints_or_none() {
    let c = Cluster::build(
        cfg(LbPolicy::Random),
        vec![
            host(1, 1, "a", &[("version", "v1")]),
            host(2, 1, "a", &[("version", "v2"), ("env", "canary")]),
            host(3, 1, "a", &[("version", "v2")]),
        ],
        None,
        &none(),
    );
    let want = vec![("version".to_string(), "v2".to_string())];
    let m = counts(
        &c,
        200,
        &PickCtx {
            subset: &want,
            ..Default::default()
        },
    );
    assert!(!m.contains_key("10.0.0.1:80") && m.len() == 2, "{m:?}");
    let both = vec![
        ("env".to_string(), "canary".to_string()),
        ("version".to_string(), "v2".to_string()),
    ];
    let m = counts(
        &c,
        50,
        &PickCtx {
            subset: &both,
            ..Default::default()
        },
    );
    assert_eq!(m.keys().collect::<Vec<_>>(), vec!["10.0.0.2:80"]);
    let missing = vec![("version".to_string(), "v9".to_string())];
    assert!(
        c.pick(&PickCtx {
            subset: &missing,
            ..Default::default()
        })
        .is_none(),
        "NO_FALLBACK"
    );
}

#[test]
fn outlier_detection_ejects_up_to_the_max_percent() {
    let c = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        (1..=4).map(|i| host(i, 1, "a", &[])).collect(),
        None,
        &none(),
    );
    let s1 = Arc::clone(&c.hosts[0].state);
    let s2 = Arc::clone(&c.hosts[1].state);
    let s3 = Arc::clone(&c.hosts[2].state);
    assert!(!c.record(&s1, Outcome::Status(500)));
    assert!(
        !c.record(&s1, Outcome::Success),
        "a success resets the count"
    );
    for _ in 0..2 {
        c.record(&s1, Outcome::LocalFailure);
    }
    assert!(c.record(&s1, Outcome::Status(503)));
    assert!(s1.is_ejected());
    let m = counts(&c, 300, &PickCtx::default());
    assert!(!m.contains_key("10.0.0.1:80"), "{m:?}");
    for _ in 0..3 {
        c.record(&s2, Outcome::LocalFailure);
    }
    assert!(s2.is_ejected(), "2 of 4 = 50 % allowed");
    for _ in 0..3 {
        c.record(&s3, Outcome::LocalFailure);
    }
    assert!(!s3.is_ejected(), "a third ejection would exceed 50 %");
    assert_eq!(c.stats.ejections.load(Relaxed), 2);
    // State survives a rebuild that keeps the endpoint.
    let c2 = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        (1..=5).map(|i| host(i, 2, "a", &[])).collect(),
        Some(&c),
        &none(),
    );
    assert!(c2.hosts[0].state.is_ejected());
    assert!(!c2.hosts[4].state.is_ejected());
}

#[test]
fn panic_threshold_uses_all_endpoints_when_most_are_unhealthy() {
    let mut hosts: Vec<HostCfg> = (1..=4).map(|i| host(i, 1, "a", &[])).collect();
    for h in &mut hosts[..3] {
        h.healthy = false;
    }
    let c = Cluster::build(cfg(LbPolicy::RoundRobin), hosts.clone(), None, &none());
    assert_eq!(
        counts(&c, 100, &PickCtx::default()).len(),
        4,
        "1 of 4 healthy < 50 %: panic mode"
    );
    hosts[1].healthy = true;
    let c = Cluster::build(cfg(LbPolicy::RoundRobin), hosts, None, &none());
    assert_eq!(
        counts(&c, 100, &PickCtx::default()).len(),
        2,
        "2 of 4 healthy: only those"
    );
}

#[test]
fn locality_prefers_the_local_zone_and_fails_over() {
    let local = ("r".to_string(), "a".to_string(), String::new());
    let mut hosts = vec![
        host(1, 1, "a", &[]),
        host(2, 1, "b", &[]),
        host(3, 1, "b", &[]),
    ];
    let c = Cluster::build(cfg(LbPolicy::RoundRobin), hosts.clone(), None, &local);
    assert_eq!(
        counts(&c, 50, &PickCtx::default())
            .keys()
            .collect::<Vec<_>>(),
        vec!["10.0.0.1:80"]
    );
    hosts[0].healthy = false;
    let c = Cluster::build(cfg(LbPolicy::RoundRobin), hosts, None, &local);
    let m = counts(&c, 50, &PickCtx::default());
    assert!(!m.contains_key("10.0.0.1:80") && m.len() == 2, "{m:?}");
}

#[test]
fn ring_hash_is_consistent_and_moves_little() {
    let c = Cluster::build(
        cfg(LbPolicy::RingHash),
        (1..=5).map(|i| host(i, 1, "a", &[])).collect(),
        None,
        &none(),
    );
    let keys: Vec<u64> = (0..1000)
        .map(|k| hash64(format!("user-{k}").as_bytes()))
        .collect();
    let on = |c: &Cluster| -> Vec<String> {
        keys.iter()
            .map(|h| {
                let ctx = PickCtx {
                    hash: Some(*h),
                    ..Default::default()
                };
                c.pick(&ctx).unwrap().cfg.authority.clone()
            })
            .collect()
    };
    let first = on(&c);
    let again = on(&c);
    assert_eq!(first, again);
    let c6 = Cluster::build(
        cfg(LbPolicy::RingHash),
        (1..=6).map(|i| host(i, 1, "a", &[])).collect(),
        None,
        &none(),
    );
    let moved = on(&c6).iter().zip(&first).filter(|(a, b)| a != b).count();
    assert!(
        moved < 350,
        "adding a 6th endpoint moved {moved} of 1000 keys"
    );
}

#[test]
fn least_request_prefers_the_less_loaded() {
    let c = Cluster::build(
        cfg(LbPolicy::LeastRequest),
        vec![host(1, 1, "a", &[]), host(2, 1, "a", &[])],
        None,
        &none(),
    );
    c.hosts[0].state.stats.active.store(10, Relaxed);
    let m = counts(&c, 100, &PickCtx::default());
    assert_eq!(m.get("10.0.0.2:80"), Some(&100), "{m:?}");
}

#[test]
fn avoid_skips_the_previous_endpoint_when_others_exist() {
    let c = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        vec![host(1, 1, "a", &[]), host(2, 1, "a", &[])],
        None,
        &none(),
    );
    let prev = Arc::clone(&c.hosts[0].state);
    for _ in 0..20 {
        let h = c
            .pick(&PickCtx {
                avoid: Some(&prev),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(h.cfg.authority, "10.0.0.2:80");
    }
}

#[test]
fn weighted_round_robin_interleaves_instead_of_running() {
    let c = Cluster::build(
        cfg(LbPolicy::RoundRobin),
        vec![
            host(1, 500, "a", &[]),
            host(2, 100, "a", &[]),
            host(3, 100, "a", &[]),
        ],
        None,
        &none(),
    );
    let picks: Vec<String> = (0..700)
        .map(|_| c.pick(&PickCtx::default()).unwrap().cfg.authority.clone())
        .collect();
    let count = |a: &str| picks.iter().filter(|p| p.as_str() == a).count();
    assert_eq!(
        (
            count("10.0.0.1:80"),
            count("10.0.0.2:80"),
            count("10.0.0.3:80")
        ),
        (500, 100, 100)
    );
    let longest_run = picks
        .chunk_by(|a, b| a == b)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest_run <= 3, "runs of {longest_run}");
    // With one endpoint ejected the others keep their ratio.
    for _ in 0..3 {
        c.record(&c.hosts[1].state, Outcome::LocalFailure);
    }
    let m = counts(&c, 600, &PickCtx::default());
    assert!(!m.contains_key("10.0.0.2:80"));
    let (a, b) = (m["10.0.0.1:80"] as f64, m["10.0.0.3:80"] as f64);
    assert!((3.0..8.0).contains(&(a / b)), "{m:?}");
}

#[test]
fn latency_histogram_buckets_are_upper_bounds_and_cumulative() {
    let h = LatencyHistogram::default();
    for us in [0, 100, 101, 250, 900, 4_000_000_000] {
        h.record(Duration::from_micros(us));
    }
    let s = h.snapshot();
    // `le` is inclusive: 0 and 100 µs are in the first bucket, 101 in the
    // second with 250; 900 µs under 1 ms; 4,000 s above every bound.
    assert_eq!(&s.cumulative[..5], &[2, 4, 4, 5, 5]);
    assert_eq!(s.cumulative[LATENCY_BOUNDS.len() - 1], 5);
    assert_eq!(s.count, 6);
    assert_eq!(s.sum_us, 100 + 101 + 250 + 900 + 4_000_000_000);
    assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    // The bounds rise, and each `le` label says its bound in seconds.
    for w in LATENCY_BOUNDS.windows(2) {
        assert!(w[0].1 < w[1].1);
    }
    for (le, us) in LATENCY_BOUNDS {
        assert_eq!(le.parse::<f64>().unwrap(), us as f64 / 1e6, "{le}");
    }
}
