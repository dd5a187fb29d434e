//! Merging sources by priority: takeovers, promotions when a winner goes
//! away, ties, shadowed records across syncs and snapshots, determinism.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::feed::EventKind;
use crate::model::Provenance;

/// `source`'s record for `default/pay/<id>`, labelled `gen=<generation>`
/// so tests can tell which version of whose record backs the instance.
fn rec(source: &str, id: &str, generation: u32) -> Registration {
    let mut s = spec("pay", id, &[("gen", &generation.to_string())]);
    s.services = vec![svc("pay.Api")];
    s.provenance = Some(Provenance {
        source: source.into(),
        source_key: format!("{source}:{id}"),
        ..Default::default()
    });
    reg_of(s)
}

/// A native registration of `default/pay/<id>`, with the services of `rec`.
fn native(id: &str) -> InstanceSpec {
    let mut s = spec("pay", id, &[]);
    s.services = vec![svc("pay.Api")];
    s
}

fn key(id: &str) -> InstanceKey {
    InstanceKey {
        namespace: "default".into(),
        app: "pay".into(),
        id: id.into(),
    }
}

/// The outcome of one sync: (upserted, removed, skipped, shadowed).
type Outcome = (u32, u32, Vec<(String, String)>, Vec<(String, String)>);

fn sync(r: &mut Registry, source: &str, priority: i32, records: Vec<Registration>) -> Outcome {
    match r.apply(&Command::SyncSourceRanked {
        source: source.into(),
        priority,
        records,
    }) {
        CommandResponse::Synced {
            upserted,
            removed,
            skipped,
            shadowed,
            ..
        } => (upserted, removed, skipped, shadowed),
        other => panic!("{other:?}"),
    }
}

/// Which source backs `id` (None: native), or panics when nothing does.
fn owner(r: &Registry, id: &str) -> Option<String> {
    let inst = r.get(&key(id)).unwrap_or_else(|| panic!("{id} is gone"));
    inst.provenance.as_ref().map(|p| p.source.clone())
}

fn shadowed_sources(r: &Registry, id: &str) -> Vec<String> {
    r.shadowed(&key(id))
        .iter()
        .filter_map(|reg| reg.instance.provenance.as_ref())
        .map(|p| p.source.clone())
        .collect()
}

fn counts(r: &Registry, source: &str) -> (i32, u64, u64) {
    let c = r.source_counts().get(source).copied().unwrap_or_default();
    (c.priority, c.owned, c.shadowed)
}

/// No event since `rev` deleted `id`: it never disappeared.
fn never_deleted_since(r: &Registry, rev: u64, id: &str) -> bool {
    r.feed()
        .since(rev)
        .expect("feed holds the events")
        .all(|e| !(e.kind == EventKind::Delete && e.instance.id == id))
}

#[test]
fn a_higher_priority_source_takes_over() {
    let mut r = Registry::new(100);
    assert_eq!(sync(&mut r, "low", 1, vec![rec("low", "k", 1)]).0, 1);
    let rev = r.revision();
    let (upserted, removed, skipped, shadowed) = sync(&mut r, "high", 5, vec![rec("high", "k", 2)]);
    assert_eq!((upserted, removed), (1, 0));
    assert!(skipped.is_empty() && shadowed.is_empty());
    assert_eq!(owner(&r, "k").as_deref(), Some("high"));
    assert_eq!(r.get(&key("k")).unwrap().labels["gen"], "2");
    assert!(never_deleted_since(&r, rev, "k"));
    assert_eq!(shadowed_sources(&r, "k"), vec!["low"]);
    assert_eq!(counts(&r, "low"), (1, 0, 1));
    assert_eq!(counts(&r, "high"), (5, 1, 0));
    // The lower source's next sync reports its record shadowed, not skipped.
    let (upserted, _, skipped, shadowed) = sync(&mut r, "low", 1, vec![rec("low", "k", 3)]);
    assert_eq!(upserted, 0);
    assert!(skipped.is_empty());
    assert_eq!(
        shadowed,
        vec![(
            "default/pay/k".to_string(),
            "shadowed by source \"high\" (priority 5)".to_string()
        )]
    );
    // ... and its shadowed record is its latest one.
    assert_eq!(r.shadowed(&key("k"))[0].instance.labels["gen"], "3");
}

#[test]
fn the_best_candidate_is_promoted_when_the_winning_source_drops_its_record() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 1, vec![rec("a", "k", 1)]);
    sync(&mut r, "b", 2, vec![rec("b", "k", 2)]);
    sync(
        &mut r,
        "top",
        9,
        vec![rec("top", "k", 3), rec("top", "only", 3)],
    );
    assert_eq!(owner(&r, "k").as_deref(), Some("top"));
    let rev = r.revision();
    let (upserted, removed, _, _) = sync(&mut r, "top", 9, vec![]);
    assert_eq!((upserted, removed), (0, 2));
    // In the same apply: b (priority 2) beats a (priority 1).
    assert_eq!(owner(&r, "k").as_deref(), Some("b"));
    assert_eq!(r.get(&key("k")).unwrap().labels["gen"], "2");
    assert!(never_deleted_since(&r, rev, "k"));
    assert!(r.get(&key("only")).is_none(), "nothing else backed it");
    assert_eq!(shadowed_sources(&r, "k"), vec!["a"]);
    assert_eq!(
        r.source_counts().get("top"),
        None,
        "top contributes nothing"
    );
}

#[test]
fn a_native_registration_wins_and_the_source_comes_back_after_deregister() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 100, vec![rec("a", "k", 1)]);
    register(&mut r, vec![native("k")]);
    assert_eq!(owner(&r, "k"), None, "the instance speaks for itself");
    assert_eq!(shadowed_sources(&r, "k"), vec!["a"]);
    let (_, _, skipped, shadowed) = sync(&mut r, "a", 100, vec![rec("a", "k", 2)]);
    assert!(skipped.is_empty());
    assert_eq!(shadowed[0].1, "shadowed by a native registration");
    let rev = r.revision();
    let resp = r.apply(&Command::Deregister {
        keys: vec![key("k")],
    });
    assert!(matches!(resp, CommandResponse::Applied { count: 1, .. }));
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
    assert_eq!(r.get(&key("k")).unwrap().labels["gen"], "2");
    assert!(never_deleted_since(&r, rev, "k"));
    assert_eq!(counts(&r, "a"), (100, 1, 0));
}

#[test]
fn session_expiry_of_a_native_instance_promotes_the_source_record() {
    let mut r = Registry::new(100);
    let id = grant(&mut r);
    let mut native = native("k");
    native.session = Some(id);
    register(&mut r, vec![native]);
    sync(&mut r, "a", 0, vec![rec("a", "k", 1)]);
    assert_eq!(owner(&r, "k"), None);
    let rev = r.revision();
    let resp = r.apply(&Command::RevokeSessions { ids: vec![id] });
    assert!(matches!(resp, CommandResponse::Applied { count: 1, .. }));
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
    assert!(never_deleted_since(&r, rev, "k"));
    assert_eq!(r.get(&key("k")).unwrap().session, None);
}

#[test]
fn equal_priority_keeps_the_current_owner_and_ties_go_to_the_smaller_name() {
    let mut r = Registry::new(100);
    sync(&mut r, "b", 0, vec![rec("b", "k", 1)]);
    let rev = r.revision();
    for generation in 2..5 {
        let (upserted, ..) = sync(&mut r, "a", 0, vec![rec("a", "k", generation)]);
        assert_eq!(upserted, 0);
        sync(&mut r, "b", 0, vec![rec("b", "k", 1)]);
    }
    assert_eq!(owner(&r, "k").as_deref(), Some("b"), "no flapping");
    assert_eq!(r.revision(), rev, "nothing visible changed");
    // Three candidates tie behind a native registration; the order they
    // arrived in does not matter, the smaller name wins the promotion.
    let mut r = Registry::new(100);
    register(&mut r, vec![native("k")]);
    for s in ["c", "a", "b"] {
        sync(&mut r, s, 3, vec![rec(s, "k", 1)]);
    }
    r.apply(&Command::Deregister {
        keys: vec![key("k")],
    });
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
}

#[test]
fn a_lowered_priority_hands_the_identity_to_a_better_candidate() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 5, vec![rec("a", "k", 1)]);
    sync(&mut r, "b", 2, vec![rec("b", "k", 1)]);
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
    let (upserted, _, _, shadowed) = sync(&mut r, "a", 1, vec![rec("a", "k", 2)]);
    assert_eq!(upserted, 1);
    assert_eq!(shadowed[0].1, "shadowed by source \"b\" (priority 2)");
    assert_eq!(owner(&r, "k").as_deref(), Some("b"));
    assert_eq!(r.shadowed(&key("k"))[0].instance.labels["gen"], "2");
    // Raised again: it takes the identity back.
    sync(&mut r, "a", 3, vec![rec("a", "k", 3)]);
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
    assert_eq!(r.get(&key("k")).unwrap().labels["gen"], "3");
}

#[test]
fn a_resync_without_the_record_removes_the_shadowed_candidate() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 5, vec![rec("a", "k", 1)]);
    sync(&mut r, "b", 1, vec![rec("b", "k", 1), rec("b", "other", 1)]);
    assert_eq!(counts(&r, "b"), (1, 1, 1));
    let (upserted, removed, ..) = sync(&mut r, "b", 1, vec![rec("b", "other", 1)]);
    assert_eq!((upserted, removed), (0, 0), "no instance changed");
    assert!(shadowed_sources(&r, "k").is_empty());
    assert_eq!(counts(&r, "b"), (1, 1, 0));
    // With the winner gone too, nothing stale comes back.
    sync(&mut r, "a", 5, vec![]);
    assert!(r.get(&key("k")).is_none());
}

#[test]
fn real_rejections_are_still_skipped_not_shadowed() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 0, vec![rec("a", "k", 1)]);
    let mut conflicting = rec("b", "k", 1);
    conflicting.instance.revision = r.get(&key("k")).unwrap().revision.clone();
    conflicting.services = vec![svc("other.Api")];
    let mut elsewhere = rec("b", "x", 1);
    elsewhere.instance.namespace = "missing".into();
    let foreign = rec("c", "y", 1);
    let (_, _, skipped, shadowed) = sync(&mut r, "b", 9, vec![conflicting, elsewhere, foreign]);
    assert!(shadowed.is_empty());
    let reasons: Vec<&str> = skipped.iter().map(|(_, why)| why.as_str()).collect();
    assert!(
        reasons[0].contains("registered with other services"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("does not exist"), "{reasons:?}");
    assert!(reasons[2].contains("provenance"), "{reasons:?}");
    assert_eq!(owner(&r, "k").as_deref(), Some("a"));
}

#[test]
fn shadowed_records_survive_a_snapshot() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 1, vec![rec("a", "k", 1), rec("a", "j", 1)]);
    sync(&mut r, "b", 4, vec![rec("b", "k", 2), rec("b", "j", 2)]);
    sync(&mut r, "c", 4, vec![rec("c", "k", 3)]);
    let bytes = postcard::to_stdvec(&r.to_snapshot()).unwrap();
    let mut r2 = Registry::from_snapshot(RegistrySnapshot::decode(&bytes).unwrap(), 100);
    assert_eq!(r2.source_counts(), r.source_counts());
    assert_eq!(shadowed_sources(&r2, "k"), vec!["a", "c"]);
    // The restored follower promotes exactly as the original does: c ties
    // b's priority 4 and beats a.
    for reg in [&mut r, &mut r2] {
        sync(reg, "b", 4, vec![]);
        assert_eq!(owner(reg, "k").as_deref(), Some("c"));
        assert_eq!(owner(reg, "j").as_deref(), Some("a"));
    }
    assert_eq!(state_of(&r), state_of(&r2));
}

#[test]
fn a_snapshot_from_before_priorities_still_decodes() {
    let mut r = Registry::new(100);
    sync(&mut r, "a", 0, vec![rec("a", "k", 1)]);
    let snap = r.to_snapshot();
    // The old layout: every field but the trailing `sources`.
    let old = snap.clone().with_sources(());
    let bytes = postcard::to_stdvec(&old).unwrap();
    let restored = Registry::from_snapshot(RegistrySnapshot::decode(&bytes).unwrap(), 100);
    assert_eq!(owner(&restored, "k").as_deref(), Some("a"));
    assert_eq!(restored.revision(), r.revision());
    // A truncated snapshot is an error, not an empty registry.
    let current = postcard::to_stdvec(&snap).unwrap();
    assert!(RegistrySnapshot::decode(&current[..current.len() - 1]).is_err());
}

#[test]
fn the_pre_priority_sync_command_keeps_its_encoding_and_priority_zero() {
    // Raft logs written before `SyncSourceRanked` hold this exact encoding:
    // variant index 5, the source name, no records.
    let old = [5u8, 1, b'a', 0];
    let cmd: Command = postcard::from_bytes(&old).unwrap();
    assert_eq!(
        cmd,
        Command::SyncSource {
            source: "a".into(),
            records: vec![]
        }
    );
    let mut r = Registry::new(100);
    r.apply(&Command::SyncSource {
        source: "a".into(),
        records: vec![rec("a", "k", 1)],
    });
    assert_eq!(counts(&r, "a"), (0, 1, 0));
    // Priority 0 ties: the owner stays against another priority-0 source,
    // and loses to priority 1.
    assert_eq!(sync(&mut r, "b", 0, vec![rec("b", "k", 1)]).0, 0);
    assert_eq!(sync(&mut r, "c", 1, vec![rec("c", "k", 1)]).0, 1);
}

// ----- property test: same commands, same state; nothing is lost -----

/// Everything a user or a follower can observe: the instances, the
/// shadowed records behind each, and the per-source counts.
type Observed = (
    Vec<Arc<Instance>>,
    Vec<(InstanceKey, Vec<Registration>)>,
    BTreeMap<String, SourceCounts>,
    u64,
);

fn state_of(r: &Registry) -> Observed {
    let instances = r.list("default", &Selector::default());
    let shadowed = instances
        .iter()
        .map(|i| (i.key(), r.shadowed(&i.key()).into_iter().cloned().collect()))
        .collect();
    (instances, shadowed, r.source_counts(), r.revision())
}

const SOURCES: [&str; 3] = ["a", "b", "c"];
const IDS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];

#[derive(Debug, Clone)]
enum MergeOp {
    /// Source, priority, (id, generation) records.
    Sync(usize, i32, Vec<(usize, u32)>),
    /// Native registration; ephemeral (in a new session) when true.
    Register(usize, bool),
    /// Deregister, when a native registration backs it.
    DeregisterNative(usize),
    /// Revoke every session.
    RevokeAll,
    /// Replace the second registry by a rebuild from its own snapshot.
    Snapshot,
}

fn arb_merge_op() -> impl Strategy<Value = MergeOp> {
    prop_oneof![
        6 => (0..SOURCES.len(), 0..3i32, proptest::collection::vec((0..IDS.len(), 0..3u32), 0..5))
            .prop_map(|(s, p, recs)| MergeOp::Sync(s, p, recs)),
        2 => (0..IDS.len(), any::<bool>()).prop_map(|(i, e)| MergeOp::Register(i, e)),
        1 => (0..IDS.len()).prop_map(MergeOp::DeregisterNative),
        1 => Just(MergeOp::RevokeAll),
        1 => Just(MergeOp::Snapshot),
    ]
}

/// What the registry must hold, tracked independently of it: each
/// source's current set and priority, and the native registrations.
#[derive(Debug, Default)]
struct Model {
    /// Source → (priority, id → generation).
    sources: BTreeMap<String, (i32, BTreeMap<String, u32>)>,
    /// Native ids → ephemeral?
    natives: BTreeMap<String, bool>,
}

impl Model {
    /// Checks the merge invariants of `r` against the model.
    fn check(&self, r: &Registry) -> Result<(), TestCaseError> {
        let mut expected: BTreeSet<&str> = self.natives.keys().map(String::as_str).collect();
        for (_, recs) in self.sources.values() {
            expected.extend(recs.keys().map(String::as_str));
        }
        let live: BTreeSet<String> = r
            .list("default", &Selector::default())
            .iter()
            .map(|i| i.id.clone())
            .collect();
        let live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        prop_assert_eq!(
            &live,
            &expected,
            "an instance is present iff something backs it"
        );
        for id in live {
            let inst = r.get(&key(id)).unwrap();
            let owner_priority = match &inst.provenance {
                None => {
                    prop_assert!(self.natives.contains_key(id));
                    None
                }
                Some(p) => {
                    let (prio, recs) = &self.sources[&p.source];
                    // The backing record is the source's latest one.
                    prop_assert_eq!(
                        inst.labels["gen"].clone(),
                        recs[id].to_string(),
                        "{} backed by a stale record of {}",
                        id,
                        &p.source
                    );
                    Some(*prio)
                }
            };
            // Every other source listing the id has exactly its latest
            // record shadowed, none outranking the winner.
            let mut want: Vec<(&str, u32)> = Vec::new();
            for (s, (prio, recs)) in &self.sources {
                if inst.provenance.as_ref().is_some_and(|p| &p.source == s) {
                    continue;
                }
                if let Some(g) = recs.get(id) {
                    want.push((s, *g));
                    if let Some(op) = owner_priority {
                        prop_assert!(*prio <= op, "{} outranks the winner of {}", s, id);
                    }
                }
            }
            let got: Vec<(String, u32)> = r
                .shadowed(&key(id))
                .iter()
                .map(|reg| {
                    let source = reg.instance.provenance.as_ref().unwrap().source.clone();
                    (source, reg.instance.labels["gen"].parse().unwrap())
                })
                .collect();
            let got: Vec<(&str, u32)> = got.iter().map(|(s, g)| (s.as_str(), *g)).collect();
            prop_assert_eq!(got, want, "shadowed records of {}", id);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two registries applying the same random commands (one of them
    /// rebuilt from its own snapshot now and then, as a follower is)
    /// observe the same state, and that state keeps every source's latest
    /// record: backing its instance or shadowed behind the right winner.
    ///
    /// A third registry gets every sync the way the sink writes an
    /// adapter's: a [`Command::SyncSourceDelta`] against the set it sent
    /// that source last, unless the priority changed (then the full set);
    /// it must observe the same state too.
    #[test]
    fn merging_is_deterministic_and_loses_no_record(ops in proptest::collection::vec(arb_merge_op(), 1..60)) {
        let mut a = Registry::new(10_000);
        let mut b = Registry::new(10_000);
        let mut c = Registry::new(10_000);
        let mut sent: BTreeMap<String, (i32, BTreeMap<String, u32>)> = BTreeMap::new();
        let mut model = Model::default();
        for op in ops {
            let cmds: Vec<Command> = match op {
                MergeOp::Sync(s, priority, recs) => {
                    let source = SOURCES[s];
                    let set: BTreeMap<String, u32> = recs
                        .into_iter()
                        .map(|(i, g)| (IDS[i].to_string(), g))
                        .collect();
                    let records = set.iter().map(|(id, g)| rec(source, id, *g)).collect();
                    let delta = match sent.get(source) {
                        Some((p, last)) if *p == priority => Command::SyncSourceDelta {
                            source: source.into(),
                            priority,
                            upserts: set
                                .iter()
                                .filter(|(id, g)| last.get(*id) != Some(*g))
                                .map(|(id, g)| rec(source, id, *g))
                                .collect(),
                            removed: last.keys().filter(|id| !set.contains_key(*id)).map(|id| key(id)).collect(),
                        },
                        _ => Command::SyncSourceRanked { source: source.into(), priority, records: set.iter().map(|(id, g)| rec(source, id, *g)).collect() },
                    };
                    c.apply(&delta);
                    sent.insert(source.to_string(), (priority, set.clone()));
                    model.sources.insert(source.to_string(), (priority, set));
                    vec![Command::SyncSourceRanked { source: source.into(), priority, records }]
                }
                MergeOp::Register(i, ephemeral) => {
                    let mut native = native(IDS[i]);
                    if ephemeral {
                        let id = grant(&mut a);
                        prop_assert_eq!(grant(&mut b), id);
                        prop_assert_eq!(grant(&mut c), id);
                        native.session = Some(id);
                    }
                    model.natives.insert(IDS[i].to_string(), ephemeral);
                    vec![Command::Register { entries: vec![reg_of(native)] }]
                }
                MergeOp::DeregisterNative(i) => {
                    if a.get(&key(IDS[i])).is_some_and(|x| x.provenance.is_none()) {
                        model.natives.remove(IDS[i]);
                        vec![Command::Deregister { keys: vec![key(IDS[i])] }]
                    } else {
                        vec![]
                    }
                }
                MergeOp::RevokeAll => {
                    let ids: Vec<u64> = a.sessions().map(|(id, _)| id).collect();
                    model.natives.retain(|_, ephemeral| !*ephemeral);
                    vec![Command::RevokeSessions { ids }]
                }
                MergeOp::Snapshot => {
                    let bytes = postcard::to_stdvec(&b.to_snapshot()).unwrap();
                    b = Registry::from_snapshot(RegistrySnapshot::decode(&bytes).unwrap(), 10_000);
                    vec![]
                }
            };
            let syncs = matches!(cmds.first(), Some(Command::SyncSourceRanked { .. }));
            for cmd in cmds {
                let ra = a.apply(&cmd);
                let rb = b.apply(&cmd);
                prop_assert_eq!(ra, rb);
                if !syncs {
                    c.apply(&cmd);
                }
            }
            model.check(&a)?;
            prop_assert_eq!(state_of(&a), state_of(&b));
            prop_assert_eq!(state_of(&a), state_of(&c), "deltas give the state full syncs give");
        }
    }
}
