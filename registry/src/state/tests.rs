use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::model::{validate, Health, InstanceSpec, Locality};
use crate::selector::Requirement;

fn reg_of(spec: InstanceSpec) -> Registration {
    validate::registration("i", spec).expect("valid spec")
}

fn spec(app: &str, id: &str, labels: &[(&str, &str)]) -> InstanceSpec {
    InstanceSpec {
        namespace: "default".into(),
        app: app.into(),
        id: id.into(),
        address: "10.0.0.1".into(),
        ports: [("http".to_string(), 8080)].into_iter().collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn svc(name: &str) -> ServiceDef {
    ServiceDef {
        name: name.into(),
        protocol: "grpc".into(),
        ..Default::default()
    }
}

fn register(r: &mut Registry, specs: Vec<InstanceSpec>) -> CommandResponse {
    r.apply(&Command::Register {
        entries: specs.into_iter().map(reg_of).collect(),
    })
}

/// Grants a 5 s session; its id.
fn grant(r: &mut Registry) -> u64 {
    match r.apply(&Command::GrantSession { ttl_ms: 5000 }) {
        CommandResponse::SessionGranted { id, .. } => id,
        other => panic!("grant failed: {other:?}"),
    }
}

#[test]
fn register_list_deregister() {
    let mut r = Registry::new(100);
    let resp = register(
        &mut r,
        vec![
            spec("pay", "a", &[("env", "prod")]),
            spec("pay", "b", &[("env", "dev")]),
        ],
    );
    assert_eq!(
        resp,
        CommandResponse::Applied {
            revision: 1,
            count: 2
        }
    );
    let sel = Selector {
        labels: vec![Requirement::In("env".into(), vec!["prod".into()])],
        ..Default::default()
    };
    let got: Vec<String> = r
        .list("default", &sel)
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(got, vec!["a"]);
    let resp = r.apply(&Command::Deregister {
        keys: vec![InstanceKey {
            namespace: "default".into(),
            app: "pay".into(),
            id: "a".into(),
        }],
    });
    assert_eq!(
        resp,
        CommandResponse::Applied {
            revision: 2,
            count: 1
        }
    );
    assert!(r.list("default", &sel).is_empty());
    assert_eq!(r.instance_count(), 1);
}

#[test]
fn rejected_register_changes_nothing() {
    let mut r = Registry::new(100);
    register(&mut r, vec![spec("pay", "a", &[])]);
    let before = r.revision();
    let mut bad = spec("pay", "b", &[]);
    bad.namespace = "missing".into();
    let resp = register(&mut r, vec![spec("pay", "c", &[]), bad]);
    assert!(
        matches!(resp, CommandResponse::Rejected(Error::NotFound { ref kind, .. }) if kind == "namespace")
    );
    assert_eq!(r.revision(), before);
    assert_eq!(r.instance_count(), 1);
    let mut bad = spec("pay", "d", &[]);
    bad.session = Some(99);
    assert!(
        matches!(register(&mut r, vec![bad]), CommandResponse::Rejected(Error::NotFound { ref kind, .. }) if kind == "session")
    );
    assert_eq!(r.instance_count(), 1);
}

#[test]
fn revision_services_are_immutable() {
    let mut r = Registry::new(100);
    let mut a = spec("pay", "a", &[]);
    a.revision = "r1".into();
    a.services = vec![svc("pay.Api")];
    register(&mut r, vec![a]);
    let mut b = spec("pay", "b", &[]);
    b.revision = "r1".into();
    b.services = vec![svc("pay.Other")];
    let resp = register(&mut r, vec![b]);
    assert!(
        matches!(resp, CommandResponse::Rejected(Error::InvalidArgument { ref field, .. }) if field == "instances[0].services")
    );
}

#[test]
fn service_mapping_follows_revisions() {
    let mut r = Registry::new(100);
    let mut a = spec("pay", "a", &[]);
    a.services = vec![svc("pay.Api"), svc("common.Health")];
    let mut b = spec("bill", "b", &[]);
    b.services = vec![svc("common.Health")];
    register(&mut r, vec![a, b]);
    assert_eq!(r.resolve("default", "common.Health"), vec!["bill", "pay"]);
    assert_eq!(r.resolve("default", "pay.Api"), vec!["pay"]);
    let sel = Selector {
        service: Some("common.Health".into()),
        ..Default::default()
    };
    assert_eq!(r.list("default", &sel).len(), 2);
    // Moving `pay/a` to a revision without common.Health drops the mapping.
    let mut a2 = spec("pay", "a", &[]);
    a2.services = vec![svc("pay.Api")];
    register(&mut r, vec![a2]);
    assert_eq!(r.resolve("default", "common.Health"), vec!["bill"]);
    assert_eq!(r.applications("default")[1].revisions.len(), 1);
    assert_eq!(r.list("default", &sel).len(), 1);
}

#[test]
fn sessions_remove_their_instances() {
    let mut r = Registry::new(100);
    let id = grant(&mut r);
    let mut a = spec("pay", "a", &[]);
    a.session = Some(id);
    register(&mut r, vec![a, spec("pay", "persistent", &[])]);
    let resp = r.apply(&Command::RevokeSessions {
        ids: vec![id, 12345],
    });
    assert!(matches!(resp, CommandResponse::Applied { count: 1, .. }));
    let left: Vec<String> = r
        .list("default", &Selector::default())
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(left, vec!["persistent"]);
    assert_eq!(r.session_ttl(id), None);
}

#[test]
fn identical_reregister_is_not_a_change() {
    let mut r = Registry::new(100);
    register(&mut r, vec![spec("pay", "a", &[])]);
    let n = r.feed().len();
    let rev = r.revision();
    let resp = register(&mut r, vec![spec("pay", "a", &[])]);
    assert!(matches!(resp, CommandResponse::Applied { count: 0, .. }));
    assert_eq!(r.feed().len(), n);
    // No-ops do not use up a revision.
    assert_eq!(r.revision(), rev);
    let gone = InstanceKey {
        namespace: "default".into(),
        app: "pay".into(),
        id: "nope".into(),
    };
    assert_eq!(
        r.apply(&Command::Deregister { keys: vec![gone] }),
        CommandResponse::Applied {
            revision: rev,
            count: 0
        }
    );
    assert_eq!(r.revision(), rev);
}

#[test]
fn feed_overflow_forces_resync() {
    let mut r = Registry::new(3);
    for i in 0..5 {
        register(&mut r, vec![spec("pay", &format!("i{i}"), &[])]);
    }
    assert!(r.feed().since(4).is_some());
    assert!(
        r.feed().since(1).is_none(),
        "revision 2 was dropped from the feed"
    );
    let after3: Vec<u64> = r.feed().since(3).unwrap().map(|e| e.revision).collect();
    assert_eq!(after3, vec![4, 5]);
}

#[test]
fn namespaces() {
    let mut r = Registry::new(10);
    let create = Command::CreateNamespace {
        name: "team-a".into(),
        labels: BTreeMap::new(),
    };
    assert!(matches!(r.apply(&create), CommandResponse::Applied { .. }));
    assert!(matches!(
        r.apply(&create),
        CommandResponse::Rejected(Error::AlreadyExists { .. })
    ));
    let mut s = spec("pay", "a", &[]);
    s.namespace = "team-a".into();
    register(&mut r, vec![s]);
    let del = Command::DeleteNamespace {
        name: "team-a".into(),
    };
    assert!(matches!(
        r.apply(&del),
        CommandResponse::Rejected(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        r.apply(&Command::DeleteNamespace {
            name: "default".into()
        }),
        CommandResponse::Rejected(Error::FailedPrecondition(_))
    ));
    // Instances in other namespaces are invisible.
    assert!(r.list("default", &Selector::default()).is_empty());
    assert_eq!(r.list("team-a", &Selector::default()).len(), 1);
}

#[test]
fn snapshot_roundtrip_rebuilds_everything() {
    let mut r = Registry::new(100);
    let id = grant(&mut r);
    let mut a = spec("pay", "a", &[("env", "prod")]);
    a.services = vec![svc("pay.Api")];
    a.session = Some(id);
    register(&mut r, vec![a, spec("bill", "b", &[("env", "dev")])]);
    let bytes = postcard::to_stdvec(&r.to_snapshot()).unwrap();
    let mut r2 = Registry::from_snapshot(postcard::from_bytes(&bytes).unwrap(), 100);
    assert_eq!(r2.revision(), r.revision());
    assert_eq!(r2.resolve("default", "pay.Api"), vec!["pay"]);
    assert_eq!(
        r2.list("default", &Selector::default()),
        r.list("default", &Selector::default())
    );
    // Sessions still own their instances after the rebuild.
    r2.apply(&Command::RevokeSessions { ids: vec![id] });
    assert_eq!(r2.instance_count(), 1);
    // The next session id carries over.
    assert!(
        matches!(r2.apply(&Command::GrantSession { ttl_ms: 5000 }), CommandResponse::SessionGranted { id: i2, .. } if i2 == id + 1)
    );
}

// ----- property test: index == linear scan -----

const APPS: [&str; 4] = ["pay", "bill", "user", "cart"];
const ZONES: [&str; 3] = ["z1", "z2", "z3"];
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
const ENVS: [&str; 2] = ["prod", "dev"];
const SERVICES: [&str; 3] = ["s.A", "s.B", "s.C"];

fn arb_spec() -> impl Strategy<Value = InstanceSpec> {
    (
        0..APPS.len(),
        0..40u32,
        0..ZONES.len(),
        proptest::option::of(0..VERSIONS.len()),
        proptest::option::of(0..ENVS.len()),
        0..5usize,
        proptest::collection::vec(0..SERVICES.len(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(app, id, zone, ver, env, health, svcs, canary)| {
            let mut labels = BTreeMap::new();
            if let Some(v) = ver {
                labels.insert("version".to_string(), VERSIONS[v].to_string());
            }
            if let Some(e) = env {
                labels.insert("env".to_string(), ENVS[e].to_string());
            }
            if canary {
                labels.insert("canary".to_string(), String::new());
            }
            let mut services: Vec<ServiceDef> =
                svcs.into_iter().map(|s| svc(SERVICES[s])).collect();
            services.sort();
            services.dedup();
            InstanceSpec {
                namespace: if id % 7 == 0 {
                    "other".into()
                } else {
                    "default".into()
                },
                app: APPS[app].into(),
                id: format!("i{id}"),
                address: "10.0.0.1".into(),
                ports: [("http".to_string(), 80)].into_iter().collect(),
                labels,
                health: Some(Health::ALL[health]),
                locality: Locality {
                    region: "r1".into(),
                    zone: ZONES[zone].into(),
                    subzone: String::new(),
                },
                services,
                ..Default::default()
            }
        })
}

fn arb_requirement() -> impl Strategy<Value = Requirement> {
    let key = prop_oneof![Just("version"), Just("env"), Just("canary"), Just("absent")];
    let values = proptest::collection::vec(
        prop_oneof![Just("v1"), Just("v2"), Just("prod"), Just("dev"), Just("")],
        1..3,
    );
    (key, values, 0..4u8).prop_map(|(k, vs, op)| {
        let k = k.to_string();
        let vs: Vec<String> = vs.into_iter().map(String::from).collect();
        match op {
            0 => Requirement::In(k, vs),
            1 => Requirement::NotIn(k, vs),
            2 => Requirement::Exists(k),
            _ => Requirement::DoesNotExist(k),
        }
    })
}

fn arb_selector() -> impl Strategy<Value = Selector> {
    (
        proptest::option::of(0..APPS.len()),
        proptest::option::of(0..SERVICES.len()),
        proptest::collection::vec(0..5usize, 0..3),
        proptest::option::of(0..ZONES.len()),
        proptest::collection::vec(arb_requirement(), 0..3),
    )
        .prop_map(|(app, service, health, zone, labels)| Selector {
            app: app.map(|a| APPS[a].to_string()),
            service: service.map(|s| SERVICES[s].to_string()),
            health: health.into_iter().map(|h| Health::ALL[h]).collect(),
            region: None,
            zone: zone.map(|z| ZONES[z].to_string()),
            subzone: None,
            labels,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Register(Box<InstanceSpec>),
    Deregister(usize, u32),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => arb_spec().prop_map(|s| Op::Register(Box::new(s))),
        1 => (0..APPS.len(), 0..40u32).prop_map(|(a, i)| Op::Deregister(a, i)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For random registries (built by random registers and deregisters, so
    /// ordinals get reused) and random selectors, the index returns exactly
    /// what a linear scan returns.
    #[test]
    fn index_matches_linear_scan(ops in proptest::collection::vec(arb_op(), 1..120), sels in proptest::collection::vec(arb_selector(), 1..8)) {
        let mut r = Registry::new(1000);
        r.apply(&Command::CreateNamespace { name: "other".into(), labels: BTreeMap::new() });
        for op in ops {
            match op {
                Op::Register(s) => {
                    let mut s = *s;
                    // A revision's services are immutable: derive the revision.
                    s.revision.clear();
                    r.apply(&Command::Register { entries: vec![reg_of(s)] });
                }
                Op::Deregister(a, i) => {
                    for ns in ["default", "other"] {
                        r.apply(&Command::Deregister { keys: vec![InstanceKey { namespace: ns.into(), app: APPS[a].into(), id: format!("i{i}") }] });
                    }
                }
            }
        }
        for sel in &sels {
            for ns in ["default", "other", "missing"] {
                prop_assert_eq!(r.select(ns, sel), r.scan(ns, sel), "namespace {} selector {:?}", ns, sel);
            }
        }
        // And a snapshot rebuild indexes the same.
        let r2 = Registry::from_snapshot(r.to_snapshot(), 10);
        for sel in &sels {
            let a: Vec<_> = r.list("default", sel);
            let b: Vec<_> = r2.list("default", sel);
            prop_assert_eq!(a, b);
        }
    }
}

fn from_source(source: &str, app: &str, id: &str) -> Registration {
    let mut s = spec(app, id, &[]);
    s.provenance = Some(crate::model::Provenance {
        source: source.into(),
        source_key: format!("{app}/{id}"),
        ..Default::default()
    });
    reg_of(s)
}

#[test]
fn source_syncs_are_state_of_the_world_per_source() {
    let mut r = Registry::new(100);
    register(&mut r, vec![spec("pay", "native", &[])]);
    let sync = |r: &mut Registry, source: &str, records: Vec<Registration>| match r.apply(
        &Command::SyncSource {
            source: source.into(),
            records,
        },
    ) {
        CommandResponse::Synced {
            upserted,
            removed,
            skipped,
            ..
        } => (upserted, removed, skipped.len()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sync(
            &mut r,
            "a",
            vec![from_source("a", "pay", "a1"), from_source("a", "pay", "a2")]
        ),
        (2, 0, 0)
    );
    assert_eq!(
        sync(&mut r, "b", vec![from_source("b", "bill", "b1")]),
        (1, 0, 0)
    );
    // Same set again: nothing changes, no revision used.
    let rev = r.revision();
    assert_eq!(
        sync(
            &mut r,
            "a",
            vec![from_source("a", "pay", "a1"), from_source("a", "pay", "a2")]
        ),
        (0, 0, 0)
    );
    assert_eq!(r.revision(), rev);
    // a2 missing from a's next set: removed; b's and the native instance stay.
    assert_eq!(
        sync(&mut r, "a", vec![from_source("a", "pay", "a1")]),
        (0, 1, 0)
    );
    // Collisions with a native instance or another source's (equal
    // priority) instance are not errors: they are kept shadowed.
    assert_eq!(
        sync(
            &mut r,
            "a",
            vec![
                from_source("a", "pay", "a1"),
                from_source("a", "pay", "native"),
                from_source("a", "bill", "b1")
            ]
        ),
        (0, 0, 0)
    );
    let ids: Vec<String> = r
        .list("default", &Selector::default())
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids, vec!["b1", "a1", "native"]);
    assert_eq!(
        r.source_counts().get("a"),
        Some(&SourceCounts {
            priority: 0,
            owned: 1,
            shadowed: 2
        })
    );
    // Ownership survives a snapshot rebuild.
    let mut r2 = Registry::from_snapshot(r.to_snapshot(), 10);
    assert_eq!(sync(&mut r2, "a", vec![]), (0, 1, 0));
    assert_eq!(r2.instance_count(), 2);
    assert_eq!(r2.source_counts().get("a"), None);
}

mod merge;

#[test]
fn a_batch_applies_like_its_commands_one_by_one() {
    let mut bad = spec("pay", "x", &[]);
    bad.namespace = "missing".into();
    let commands = vec![
        Command::Register {
            entries: vec![reg_of(spec("pay", "a", &[]))],
        },
        Command::GrantSession { ttl_ms: 5000 },
        Command::Register {
            entries: vec![reg_of(bad)],
        },
        Command::Register {
            entries: vec![reg_of(spec("pay", "b", &[("v", "1")]))],
        },
        Command::Deregister {
            keys: vec![InstanceKey {
                namespace: "default".into(),
                app: "pay".into(),
                id: "a".into(),
            }],
        },
    ];
    let mut one_by_one = Registry::new(100);
    let expected: Vec<CommandResponse> = commands.iter().map(|c| one_by_one.apply(c)).collect();
    let mut batched = Registry::new(100);
    let got = batched.apply(&Command::Batch {
        commands: commands.clone(),
    });
    assert_eq!(got, CommandResponse::Batch(expected.clone()));
    // The rejected command changed nothing and the others went through.
    assert!(matches!(expected[2], CommandResponse::Rejected(_)));
    assert_eq!(batched.revision(), one_by_one.revision());
    assert_eq!(batched.instance_count(), 1);
    assert_eq!(
        postcard::to_stdvec(&batched.to_snapshot()).unwrap(),
        postcard::to_stdvec(&one_by_one.to_snapshot()).unwrap()
    );
}
