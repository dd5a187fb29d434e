//! The registry state machine's data and its apply logic: plain data and
//! plain functions, no I/O (the openraft adapter in `store` feeds it).
//!
//! Layout of the state: namespaces → applications → (instance ids,
//! service revisions); a slab of instances addressed by `u32` ordinal; the
//! [`Index`] over those ordinals; sessions with the ordinals bound to them;
//! the derived service → application mapping; the [`Feed`] of changes;
//! and, per external source, its priority and its *shadowed* records (the
//! ones another record wins; module `shadows`, rules in
//! [`Command::SyncSourceRanked`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResponse};
use crate::error::Error;
use crate::feed::{EventKind, Feed, FeedEvent};
use crate::index::Index;
use crate::model::{
    Application, Instance, InstanceKey, Namespace, Registration, ServiceDef, ServiceRevision,
    DEFAULT_NAMESPACE,
};
use crate::selector::Selector;

mod shadows;

use shadows::{Owner, Shadows};

#[derive(Debug, Clone)]
struct RevisionState {
    services: Arc<[ServiceDef]>,
    /// Instances advertising this revision.
    refs: u32,
}

#[derive(Debug, Default)]
struct AppState {
    /// Instance id → ordinal.
    ids: HashMap<String, u32>,
    /// Revision id → services and reference count.
    revisions: BTreeMap<String, RevisionState>,
}

#[derive(Debug, Default)]
struct NamespaceState {
    labels: BTreeMap<String, String>,
    apps: HashMap<String, AppState>,
    /// Service → application → number of that app's live revisions exposing it.
    mapping: BTreeMap<String, BTreeMap<String, u32>>,
    /// Revision of the last change to anything in the namespace.
    mod_revision: u64,
}

/// A session (lease) as stored.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Time to live in milliseconds.
    pub ttl_ms: u64,
    /// Ordinals of the instances bound to it.
    members: RoaringBitmap,
}

/// The serializable content of a snapshot: enough to rebuild every
/// derived structure (index, mapping, reference counts). Encoded with
/// postcard (store); read it with [`RegistrySnapshot::decode`].
///
/// `S` is the type of the trailing `sources` field: [`SourcesSnapshot`].
/// Snapshots written before sources had priorities end before that field;
/// they decode as `RegistrySnapshot<()>`, since postcard encodes `()` as
/// nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrySnapshot<S = SourcesSnapshot> {
    /// Registry revision.
    pub revision: u64,
    /// Next session id to assign.
    pub next_session_id: u64,
    /// Namespaces with their last-change revision.
    pub namespaces: Vec<(Namespace, u64)>,
    /// Sessions: (id, ttl_ms).
    pub sessions: Vec<(u64, u64)>,
    /// Every live service revision.
    pub revisions: Vec<ServiceRevision>,
    /// Every instance.
    pub instances: Vec<Arc<Instance>>,
    /// The sources' merge state (appended last; see the type's doc).
    pub sources: S,
}

/// The sources' merge state in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourcesSnapshot {
    /// (source, the priority of its last sync), by source name.
    pub priorities: Vec<(String, i32)>,
    /// Every shadowed record; its provenance names its source.
    pub shadowed: Vec<Arc<Registration>>,
}

impl RegistrySnapshot {
    /// Decodes a postcard-encoded snapshot: the current layout, or the one
    /// before `sources` (it then has no shadowed record, and every source
    /// is at priority 0 until it syncs again).
    ///
    /// # Errors
    /// The error decoding the current layout, when neither layout fits
    /// `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let current = postcard::from_bytes::<RegistrySnapshot>(bytes);
        let Err(e) = current else { return current };
        match postcard::take_from_bytes::<RegistrySnapshot<()>>(bytes) {
            Ok((old, [])) => Ok(old.with_sources(SourcesSnapshot::default())),
            _ => Err(e),
        }
    }
}

impl<S> RegistrySnapshot<S> {
    fn with_sources<T>(self, sources: T) -> RegistrySnapshot<T> {
        RegistrySnapshot {
            revision: self.revision,
            next_session_id: self.next_session_id,
            namespaces: self.namespaces,
            sessions: self.sessions,
            revisions: self.revisions,
            instances: self.instances,
            sources,
        }
    }
}

/// What one source contributes now ([`Registry::source_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    /// The priority of its last sync (0 before its first).
    pub priority: i32,
    /// Instances its records back.
    pub owned: u64,
    /// Its records kept as shadowed candidates behind another winner.
    pub shadowed: u64,
}

/// The registry: see the module doc.
#[derive(Debug)]
pub struct Registry {
    revision: u64,
    namespaces: BTreeMap<String, NamespaceState>,
    slots: Vec<Option<Arc<Instance>>>,
    free: Vec<u32>,
    sessions: BTreeMap<u64, SessionState>,
    next_session_id: u64,
    index: Index,
    feed: Feed,
    /// Ordinals of the instances each external source contributed.
    by_source: HashMap<String, RoaringBitmap>,
    /// Source priorities and the records that lose their identity.
    shadows: Shadows,
}

impl Registry {
    /// An empty registry holding only the `default` namespace; the feed
    /// keeps at most `feed_capacity` events.
    pub fn new(feed_capacity: usize) -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(DEFAULT_NAMESPACE.to_string(), NamespaceState::default());
        Self {
            revision: 0,
            namespaces,
            slots: Vec::new(),
            free: Vec::new(),
            sessions: BTreeMap::new(),
            next_session_id: 1,
            index: Index::new(),
            feed: Feed::new(feed_capacity, 0),
            by_source: HashMap::new(),
            shadows: Shadows::default(),
        }
    }

    /// The current registry revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Applies one command. Deterministic: every node applying the same
    /// commands in the same order reaches the same state. A rejected command
    /// changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        self.apply_owned(cmd.clone())
    }

    /// [`Registry::apply`] taking the command by value: the instances it
    /// carries are moved into the registry instead of copied (the Raft
    /// state machine's path).
    pub fn apply_owned(&mut self, cmd: Command) -> CommandResponse {
        let rev = self.revision + 1;
        // Whether an `Ok` result is a change even when it touched no
        // instance: namespace changes are; re-registering identical
        // instances or removing absent ones are not, and do not use up a
        // revision; revoking a live session (even an empty one) is.
        let change_without_instances = match &cmd {
            Command::CreateNamespace { .. } | Command::DeleteNamespace { .. } => true,
            Command::RevokeSessions { ids } => ids.iter().any(|i| self.sessions.contains_key(i)),
            _ => false,
        };
        let result = match cmd {
            Command::CreateNamespace { name, labels } => self.create_namespace(&name, &labels, rev),
            Command::DeleteNamespace { name } => self.delete_namespace(&name, rev),
            Command::Register { entries } => self.register(entries, rev),
            Command::Deregister { keys } => Ok(self.deregister(&keys, rev)),
            Command::GrantSession { ttl_ms } => {
                let id = self.next_session_id;
                self.next_session_id += 1;
                self.sessions.insert(
                    id,
                    SessionState {
                        ttl_ms,
                        members: RoaringBitmap::new(),
                    },
                );
                self.revision = rev;
                return CommandResponse::SessionGranted {
                    id,
                    ttl_ms,
                    revision: rev,
                };
            }
            Command::RevokeSessions { ids } => Ok(self.revoke_sessions(&ids, rev)),
            Command::SyncSource { source, records } => {
                return self.sync_source(&source, 0, records, rev);
            }
            Command::SyncSourceRanked {
                source,
                priority,
                records,
            } => return self.sync_source(&source, priority, records, rev),
            Command::SyncSourceDelta {
                source,
                priority,
                upserts,
                removed,
            } => return self.sync_source_delta(&source, priority, upserts, removed, rev),
            // Taken apart above.
            Command::Batch { commands } => {
                return CommandResponse::Batch(
                    commands.into_iter().map(|c| self.apply_owned(c)).collect(),
                )
            }
        };
        match result {
            Ok(0) if !change_without_instances => CommandResponse::Applied {
                revision: self.revision,
                count: 0,
            },
            Ok(count) => {
                self.revision = rev;
                CommandResponse::Applied {
                    revision: rev,
                    count,
                }
            }
            Err(e) => CommandResponse::Rejected(e),
        }
    }

    fn create_namespace(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        rev: u64,
    ) -> Result<u32, Error> {
        if self.namespaces.contains_key(name) {
            return Err(Error::AlreadyExists {
                kind: "namespace".into(),
                name: name.into(),
            });
        }
        self.namespaces.insert(
            name.to_string(),
            NamespaceState {
                labels: labels.clone(),
                mod_revision: rev,
                ..Default::default()
            },
        );
        Ok(0)
    }

    fn delete_namespace(&mut self, name: &str, _rev: u64) -> Result<u32, Error> {
        if name == DEFAULT_NAMESPACE {
            return Err(Error::FailedPrecondition(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let ns = self
            .namespaces
            .get(name)
            .ok_or_else(|| Error::not_found("namespace", name))?;
        let n: usize = ns.apps.values().map(|a| a.ids.len()).sum();
        if n > 0 {
            return Err(Error::FailedPrecondition(format!(
                "namespace {name:?} still has {n} instances; deregister them first"
            )));
        }
        self.namespaces.remove(name);
        Ok(0)
    }

    fn register(&mut self, entries: Vec<Registration>, rev: u64) -> Result<u32, Error> {
        // Check everything first: a rejected command must change nothing.
        let mut batch_revisions: HashMap<(&str, &str, &str), &[ServiceDef]> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let inst = &e.instance;
            let ns = self
                .namespaces
                .get(&inst.namespace)
                .ok_or_else(|| Error::NotFound {
                    kind: "namespace".into(),
                    name: inst.namespace.clone(),
                    hint: format!(" (instances[{i}].namespace); create it first"),
                })?;
            if let Some(s) = inst.session {
                if !self.sessions.contains_key(&s) {
                    return Err(Error::NotFound {
                        kind: "session".into(),
                        name: s.to_string(),
                        hint: format!(" (instances[{i}].session); it expired or was revoked: grant a new session and register again"),
                    });
                }
            }
            let existing = ns
                .apps
                .get(&inst.app)
                .and_then(|a| a.revisions.get(&inst.revision))
                .map(|r| &*r.services);
            let key = (
                inst.namespace.as_str(),
                inst.app.as_str(),
                inst.revision.as_str(),
            );
            let known = existing.or_else(|| batch_revisions.get(&key).copied());
            match known {
                Some(s) if s != e.services.as_slice() => {
                    return Err(Error::invalid(
                        format!("instances[{i}].services"),
                        format!(
                            "revision {:?} of app {:?} is already registered with different services; a revision's services cannot change, use a new revision (or leave it empty to derive one)",
                            inst.revision, inst.app
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    batch_revisions.insert(key, &e.services);
                }
            }
        }
        drop(batch_revisions);
        let mut count = 0;
        for e in entries {
            if self.upsert(e, rev) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Takes a reference on (ns, app, revision), creating it with `services`.
    fn acquire_revision(
        &mut self,
        ns: &str,
        app: &str,
        revision: &str,
        services: &[ServiceDef],
    ) -> Arc<[ServiceDef]> {
        let nss = self
            .namespaces
            .get_mut(ns)
            .expect("namespace checked before upsert");
        if !nss.apps.contains_key(app) {
            nss.apps.insert(app.to_string(), AppState::default());
        }
        let Some(a) = nss.apps.get_mut(app) else {
            unreachable!("inserted above")
        };
        if let Some(r) = a.revisions.get_mut(revision) {
            r.refs += 1;
            return r.services.clone();
        }
        let services: Arc<[ServiceDef]> = services.into();
        a.revisions.insert(
            revision.to_string(),
            RevisionState {
                services: services.clone(),
                refs: 1,
            },
        );
        for s in services.iter() {
            *nss.mapping
                .entry(s.name.clone())
                .or_default()
                .entry(app.to_string())
                .or_default() += 1;
        }
        services
    }

    /// Drops a reference on (ns, app, revision); the last one removes it.
    fn release_revision(&mut self, ns: &str, app: &str, revision: &str) {
        let Some(nss) = self.namespaces.get_mut(ns) else {
            return;
        };
        let Some(a) = nss.apps.get_mut(app) else {
            return;
        };
        let Some(r) = a.revisions.get_mut(revision) else {
            return;
        };
        r.refs -= 1;
        if r.refs > 0 {
            return;
        }
        let services = r.services.clone();
        a.revisions.remove(revision);
        for s in services.iter() {
            if let Some(apps) = nss.mapping.get_mut(&s.name) {
                if let Some(n) = apps.get_mut(app) {
                    *n -= 1;
                    if *n == 0 {
                        apps.remove(app);
                    }
                }
                if apps.is_empty() {
                    nss.mapping.remove(&s.name);
                }
            }
        }
    }

    fn services_of(&self, inst: &Instance) -> Arc<[ServiceDef]> {
        self.namespaces
            .get(&inst.namespace)
            .and_then(|n| n.apps.get(&inst.app))
            .and_then(|a| a.revisions.get(&inst.revision))
            .map(|r| r.services.clone())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn ordinal_of(&self, ns: &str, app: &str, id: &str) -> Option<u32> {
        self.namespaces.get(ns)?.apps.get(app)?.ids.get(id).copied()
    }

    /// Creates or replaces one instance; false when it was already stored
    /// with the same content. The new record's source no longer has a
    /// shadowed candidate for it, and a replaced record of another source
    /// becomes that source's shadowed candidate.
    fn upsert(&mut self, reg: Registration, rev: u64) -> bool {
        let Registration {
            instance: mut new,
            services: new_services,
        } = reg;
        let existing = self.ordinal_of(&new.namespace, &new.app, &new.id);
        let old = existing.and_then(|o| self.slots[o as usize].clone());
        if let Some(old) = &old {
            if old.same_content(&new) {
                return false;
            }
        }
        if let Owner::Source(s) = Owner::of(&new) {
            if self.shadows.has_source(s) {
                self.shadows.remove(&new.key(), s);
            }
        }
        let services =
            self.acquire_revision(&new.namespace, &new.app, &new.revision, &new_services);
        new.mod_revision = rev;
        new.create_revision = old.as_ref().map_or(rev, |o| o.create_revision);
        let stored = Arc::new(new);
        let mut previous = None;
        let ord = match (existing, old) {
            (Some(ord), Some(old)) => {
                let old_services = self.services_of(&old);
                let old_owner = Owner::of(&old);
                if matches!(old_owner, Owner::Source(_)) && old_owner != Owner::of(&stored) {
                    // Stored as the source sent it (revisions are set
                    // when a record backs an instance), so a displaced
                    // record equals the same record offered again.
                    let mut instance = (*old).clone();
                    (instance.create_revision, instance.mod_revision) = (0, 0);
                    self.shadows.insert(Arc::new(Registration {
                        instance,
                        services: old_services.to_vec(),
                    }));
                }
                self.index.remove(ord, &old, &old_services);
                self.track_source(&old, ord, false);
                if let Some(s) = old.session.and_then(|s| self.sessions.get_mut(&s)) {
                    s.members.remove(ord);
                }
                self.release_revision(&old.namespace, &old.app, &old.revision);
                previous = Some((old, old_services));
                ord
            }
            _ => {
                let ord = match self.free.pop() {
                    Some(o) => o,
                    None => {
                        self.slots.push(None);
                        u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 instances")
                    }
                };
                let nss = self
                    .namespaces
                    .get_mut(&stored.namespace)
                    .expect("namespace checked before upsert");
                // acquire_revision above created the app if it was new.
                if let Some(a) = nss.apps.get_mut(&stored.app) {
                    a.ids.insert(stored.id.clone(), ord);
                }
                ord
            }
        };
        self.slots[ord as usize] = Some(stored.clone());
        self.index.insert(ord, &stored, &services);
        self.track_source(&stored, ord, true);
        if let Some(s) = stored.session.and_then(|s| self.sessions.get_mut(&s)) {
            s.members.insert(ord);
        }
        if let Some(nss) = self.namespaces.get_mut(&stored.namespace) {
            nss.mod_revision = rev;
        }
        self.feed.push(FeedEvent {
            revision: rev,
            kind: EventKind::Put,
            instance: stored,
            services,
            previous,
        });
        true
    }

    /// Removes the instance at `ord`, if any.
    fn remove_ordinal(&mut self, ord: u32, rev: u64) -> bool {
        let Some(old) = self.slots.get_mut(ord as usize).and_then(Option::take) else {
            return false;
        };
        let services = self.services_of(&old);
        self.index.remove(ord, &old, &services);
        self.track_source(&old, ord, false);
        if let Some(s) = old.session.and_then(|s| self.sessions.get_mut(&s)) {
            s.members.remove(ord);
        }
        self.release_revision(&old.namespace, &old.app, &old.revision);
        if let Some(nss) = self.namespaces.get_mut(&old.namespace) {
            if let Some(a) = nss.apps.get_mut(&old.app) {
                a.ids.remove(&old.id);
                if a.ids.is_empty() && a.revisions.is_empty() {
                    nss.apps.remove(&old.app);
                }
            }
            nss.mod_revision = rev;
        }
        self.free.push(ord);
        self.feed.push(FeedEvent {
            revision: rev,
            kind: EventKind::Delete,
            instance: old,
            services,
            previous: None,
        });
        true
    }

    /// Takes the record at `ord` out of its instance: the best shadowed
    /// candidate that can replace it does so in place (one Put event: the
    /// instance never disappears), else the instance is removed. False
    /// when `ord` is free.
    fn retire(&mut self, ord: u32, rev: u64) -> bool {
        if self.shadows.is_empty() {
            return self.remove_ordinal(ord, rev);
        }
        let Some(old) = self.slots.get(ord as usize).cloned().flatten() else {
            return false;
        };
        let key = old.key();
        if let Some(reg) = self.take_candidate(&key, None) {
            self.upsert(reg, rev);
            // `upsert` kept the retired record as its source's candidate.
            if let Owner::Source(s) = Owner::of(&old) {
                self.shadows.remove(&key, s);
            }
            return true;
        }
        // Candidates left cannot be stored (their revision conflicts) and
        // have no winner to stand behind: they come back with their
        // source's next sync, reported there.
        for dropped in self.shadows.remove_all(&key) {
            tracing::warn!(instance = %key, record = ?dropped.instance.provenance, "shadowed record dropped: its revision conflicts with a stored one");
        }
        self.remove_ordinal(ord, rev)
    }

    /// Takes out the best shadowed candidate for `key` that can be stored
    /// (its revision does not conflict) and, with `above`, has a priority
    /// above it.
    fn take_candidate(&mut self, key: &InstanceKey, above: Option<i32>) -> Option<Registration> {
        let source = self
            .shadows
            .ranked(key)
            .into_iter()
            .take_while(|(_, p, _)| above.is_none_or(|a| *p > a))
            .find(|(_, _, r)| self.revision_conflict(r).is_none())
            .map(|(s, _, _)| s.to_string())?;
        self.shadows.remove(key, &source).map(Arc::unwrap_or_clone)
    }

    fn deregister(&mut self, keys: &[InstanceKey], rev: u64) -> u32 {
        let mut n = 0;
        for k in keys {
            if let Some(ord) = self.ordinal_of(&k.namespace, &k.app, &k.id) {
                if self.retire(ord, rev) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Applies one source's sync at `priority`; the rules are in
    /// [`Command::SyncSourceRanked`]. Uses up revision `rev` when an
    /// instance changed.
    fn sync_source(
        &mut self,
        source: &str,
        priority: i32,
        records: Vec<Registration>,
        rev: u64,
    ) -> CommandResponse {
        self.shadows.set_priority(source, priority);
        let mut out = SyncOutcome::default();
        let mut keep: HashSet<InstanceKey> = HashSet::new();
        for r in records {
            if let Some(key) = self.offer(source, priority, r, rev, &mut out) {
                keep.insert(key);
            }
        }
        for key in self.shadows.keys_of(source) {
            if !keep.contains(&key) {
                self.shadows.remove(&key, source);
            }
        }
        let owned: Vec<u32> = self
            .by_source
            .get(source)
            .map(|b| b.iter().collect())
            .unwrap_or_default();
        for ord in owned {
            let gone = self.slots[ord as usize]
                .as_ref()
                .is_some_and(|i| !keep.contains(&i.key()));
            if gone && self.retire(ord, rev) {
                out.removed += 1;
            }
        }
        self.finish_sync(source, rev, out)
    }

    /// [`Command::SyncSourceDelta`]: `upserts` offered as in a full sync,
    /// the source's records for `removed` dropped, the rest untouched.
    fn sync_source_delta(
        &mut self,
        source: &str,
        priority: i32,
        upserts: Vec<Registration>,
        removed: Vec<InstanceKey>,
        rev: u64,
    ) -> CommandResponse {
        self.shadows.set_priority(source, priority);
        let mut out = SyncOutcome::default();
        for r in upserts {
            self.offer(source, priority, r, rev, &mut out);
        }
        for key in removed {
            if self.shadows.remove(&key, source).is_some() {
                continue;
            }
            let Some(ord) = self.ordinal_of(&key.namespace, &key.app, &key.id) else {
                continue;
            };
            let owned = self.slots[ord as usize]
                .as_deref()
                .is_some_and(|i| Owner::of(i) == Owner::Source(source));
            if owned && self.retire(ord, rev) {
                out.removed += 1;
            }
        }
        self.finish_sync(source, rev, out)
    }

    /// Takes one record of a sync: it backs its instance (created or
    /// replaced), or is kept shadowed behind what wins the identity, or is
    /// rejected. Returns its key unless rejected.
    fn offer(
        &mut self,
        source: &str,
        priority: i32,
        r: Registration,
        rev: u64,
        out: &mut SyncOutcome,
    ) -> Option<InstanceKey> {
        let key = r.instance.key();
        if let Some(why) = self.sync_rejection(source, &r) {
            out.skipped.push((key.to_string(), why));
            return None;
        }
        let live = self.get(&key);
        // What wins the identity instead of this record, if anything.
        let beaten_by = match live.as_deref().map(Owner::of) {
            None => None,
            Some(Owner::Native) => Some(SHADOWED_BY_NATIVE.to_string()),
            // The source's own record, outranked by a candidate
            // (its priority went down): the candidate takes over.
            Some(Owner::Source(s)) if s == source => {
                self.take_candidate(&key, Some(priority)).map(|winner| {
                    let name = owner_name(&winner);
                    let why = shadowed_by(name, self.shadows.priority(name));
                    if self.upsert(winner, rev) {
                        out.upserted += 1;
                    }
                    why
                })
            }
            Some(Owner::Source(other)) => {
                let p = self.shadows.priority(other);
                (p >= priority).then(|| shadowed_by(other, p))
            }
        };
        match beaten_by {
            None => {
                if self.upsert(r, rev) {
                    out.upserted += 1;
                }
            }
            Some(why) => {
                self.shadows.insert(Arc::new(r));
                out.shadowed.push((key.to_string(), why));
            }
        }
        Some(key)
    }

    /// Ends a sync: forgets a source that contributes nothing any more and
    /// uses up `rev` when something changed.
    fn finish_sync(&mut self, source: &str, rev: u64, out: SyncOutcome) -> CommandResponse {
        if !self.by_source.contains_key(source) {
            self.shadows.forget_source(source);
        }
        if out.upserted + out.removed > 0 {
            self.revision = rev;
        }
        CommandResponse::Synced {
            revision: self.revision,
            upserted: out.upserted,
            removed: out.removed,
            skipped: out.skipped,
            shadowed: out.shadowed,
        }
    }

    /// Why a source's record cannot be taken at all, if it cannot.
    fn sync_rejection(&self, source: &str, r: &Registration) -> Option<String> {
        let inst = &r.instance;
        if Owner::of(inst) != Owner::Source(source) {
            Some("its provenance does not name this source".to_string())
        } else if !self.namespaces.contains_key(&inst.namespace) {
            Some(format!("namespace {:?} does not exist", inst.namespace))
        } else {
            self.revision_conflict(r)
        }
    }

    /// Why `r` cannot be stored because its revision is stored with other
    /// services, if so.
    fn revision_conflict(&self, r: &Registration) -> Option<String> {
        let inst = &r.instance;
        self.namespaces
            .get(&inst.namespace)
            .and_then(|n| n.apps.get(&inst.app))
            .and_then(|a| a.revisions.get(&inst.revision))
            .filter(|e| *e.services != *r.services)
            .map(|_| {
                format!(
                    "revision {:?} is registered with other services",
                    inst.revision
                )
            })
    }

    fn track_source(&mut self, inst: &Instance, ord: u32, add: bool) {
        let Some(p) = &inst.provenance else { return };
        if add {
            self.by_source
                .entry(p.source.clone())
                .or_default()
                .insert(ord);
        } else if let Some(b) = self.by_source.get_mut(&p.source) {
            b.remove(ord);
            if b.is_empty() {
                self.by_source.remove(&p.source);
            }
        }
    }

    /// What each external source contributes: the instances its records
    /// back and its shadowed records, with its priority; by source name.
    pub fn source_counts(&self) -> BTreeMap<String, SourceCounts> {
        let mut out: BTreeMap<String, SourceCounts> = BTreeMap::new();
        for (s, b) in &self.by_source {
            out.entry(s.clone()).or_default().owned = b.len();
        }
        for (s, n) in self.shadows.counts() {
            out.entry(s.clone()).or_default().shadowed = n as u64;
        }
        for (s, c) in &mut out {
            c.priority = self.shadows.priority(s);
        }
        out
    }

    /// `source`'s shadowed records now, at most `limit`, as (instance
    /// key, why: what backs the instance instead), in key order.
    pub fn shadowed_records(&self, source: &str, limit: usize) -> Vec<(String, String)> {
        let mut keys = self.shadows.keys_of(source);
        keys.truncate(limit);
        keys.into_iter()
            .map(|key| {
                let why = match self.get(&key).as_deref().map(Owner::of) {
                    Some(Owner::Native) => SHADOWED_BY_NATIVE.to_string(),
                    Some(Owner::Source(s)) => shadowed_by(s, self.shadows.priority(s)),
                    None => "shadowed (no instance backs it)".to_string(),
                };
                (key.to_string(), why)
            })
            .collect()
    }

    /// The shadowed records for an identity (each source's record that
    /// another record wins), by source name.
    pub fn shadowed(&self, key: &InstanceKey) -> Vec<&Registration> {
        self.shadows.of(key).map(|r| &**r).collect()
    }

    fn revoke_sessions(&mut self, ids: &[u64], rev: u64) -> u32 {
        let mut n = 0;
        for id in ids {
            if let Some(s) = self.sessions.remove(id) {
                for ord in &s.members {
                    if self.retire(ord, rev) {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    // ----- reads -----

    /// Does the namespace exist?
    pub fn has_namespace(&self, ns: &str) -> bool {
        self.namespaces.contains_key(ns)
    }

    /// Revision of the last change in namespace `ns` (0 if unknown).
    pub fn namespace_revision(&self, ns: &str) -> u64 {
        self.namespaces.get(ns).map_or(0, |n| n.mod_revision)
    }

    /// All namespaces.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .map(|(name, n)| Namespace {
                name: name.clone(),
                labels: n.labels.clone(),
            })
            .collect()
    }

    /// One instance.
    pub fn get(&self, key: &InstanceKey) -> Option<Arc<Instance>> {
        let ord = self.ordinal_of(&key.namespace, &key.app, &key.id)?;
        self.slots[ord as usize].clone()
    }

    /// The ordinals matching `sel` in `ns` (index lookup).
    pub fn select(&self, ns: &str, sel: &Selector) -> RoaringBitmap {
        self.index.select(ns, sel)
    }

    /// The instances matching `sel` in `ns`, sorted by (app, id).
    pub fn list(&self, ns: &str, sel: &Selector) -> Vec<Arc<Instance>> {
        let mut out: Vec<Arc<Instance>> = self
            .select(ns, sel)
            .iter()
            .filter_map(|o| self.slots[o as usize].clone())
            .collect();
        out.sort_unstable_by(|a, b| (&a.app, &a.id).cmp(&(&b.app, &b.id)));
        out
    }

    /// Linear scan with [`Selector::matches`]: the reference the index is
    /// tested and benchmarked against.
    pub fn scan(&self, ns: &str, sel: &Selector) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        for (ord, slot) in self.slots.iter().enumerate() {
            if let Some(i) = slot {
                if i.namespace == ns && sel.matches(i, &self.services_of(i)) {
                    out.insert(ord as u32);
                }
            }
        }
        out
    }

    /// The services the instance's revision exposes.
    pub fn services_of_instance(&self, inst: &Instance) -> Arc<[ServiceDef]> {
        self.services_of(inst)
    }

    /// Applications of a namespace, sorted by name.
    pub fn applications(&self, ns: &str) -> Vec<Application> {
        let Some(nss) = self.namespaces.get(ns) else {
            return Vec::new();
        };
        let mut out: Vec<Application> = nss
            .apps
            .iter()
            .map(|(name, a)| {
                let mut services: Vec<String> = a
                    .revisions
                    .values()
                    .flat_map(|r| r.services.iter().map(|s| s.name.clone()))
                    .collect();
                services.sort();
                services.dedup();
                Application {
                    namespace: ns.to_string(),
                    name: name.clone(),
                    instance_count: a.ids.len() as u64,
                    revisions: a.revisions.keys().cloned().collect(),
                    services,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// ServiceMapping: the applications whose live revisions expose `service`.
    pub fn resolve(&self, ns: &str, service: &str) -> Vec<String> {
        self.namespaces
            .get(ns)
            .and_then(|n| n.mapping.get(service))
            .map(|apps| apps.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One service revision.
    pub fn service_revision(&self, ns: &str, app: &str, revision: &str) -> Option<ServiceRevision> {
        let r = self
            .namespaces
            .get(ns)?
            .apps
            .get(app)?
            .revisions
            .get(revision)?;
        Some(ServiceRevision {
            namespace: ns.to_string(),
            app: app.to_string(),
            revision: revision.to_string(),
            services: r.services.clone(),
        })
    }

    /// A session's TTL in milliseconds, if it exists.
    pub fn session_ttl(&self, id: u64) -> Option<u64> {
        self.sessions.get(&id).map(|s| s.ttl_ms)
    }

    /// Every session: (id, ttl_ms).
    pub fn sessions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.ttl_ms))
    }

    /// Number of instances.
    pub fn instance_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The change feed.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Approximate heap bytes of the subset index.
    pub fn index_bytes(&self) -> usize {
        self.index.heap_bytes()
    }

    // ----- snapshots -----

    /// Captures the state. Cheap: instances are shared, not copied.
    pub fn to_snapshot(&self) -> RegistrySnapshot {
        let mut revisions = Vec::new();
        for (ns, n) in &self.namespaces {
            for (app, a) in &n.apps {
                for (rev, r) in &a.revisions {
                    revisions.push(ServiceRevision {
                        namespace: ns.clone(),
                        app: app.clone(),
                        revision: rev.clone(),
                        services: r.services.clone(),
                    });
                }
            }
        }
        RegistrySnapshot {
            revision: self.revision,
            next_session_id: self.next_session_id,
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, n)| {
                    (
                        Namespace {
                            name: name.clone(),
                            labels: n.labels.clone(),
                        },
                        n.mod_revision,
                    )
                })
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(id, s)| (*id, s.ttl_ms))
                .collect(),
            revisions,
            instances: self.slots.iter().flatten().cloned().collect(),
            sources: SourcesSnapshot {
                priorities: self
                    .shadows
                    .priorities()
                    .map(|(s, p)| (s.clone(), p))
                    .collect(),
                shadowed: self.shadows.all().cloned().collect(),
            },
        }
    }

    /// Rebuilds a registry (index, mapping, counts) from a snapshot. The
    /// feed restarts at the snapshot's revision.
    pub fn from_snapshot(snap: RegistrySnapshot, feed_capacity: usize) -> Self {
        let mut reg = Registry::new(feed_capacity);
        reg.namespaces.clear();
        for (ns, mod_revision) in snap.namespaces {
            reg.namespaces.insert(
                ns.name,
                NamespaceState {
                    labels: ns.labels,
                    mod_revision,
                    ..Default::default()
                },
            );
        }
        for (id, ttl_ms) in snap.sessions {
            reg.sessions.insert(
                id,
                SessionState {
                    ttl_ms,
                    members: RoaringBitmap::new(),
                },
            );
        }
        let services: HashMap<(&str, &str, &str), &Arc<[ServiceDef]>> = snap
            .revisions
            .iter()
            .map(|r| {
                (
                    (r.namespace.as_str(), r.app.as_str(), r.revision.as_str()),
                    &r.services,
                )
            })
            .collect();
        for inst in snap.instances {
            if !reg.namespaces.contains_key(&inst.namespace) {
                tracing::warn!(instance = %inst.key(), "snapshot instance in an unknown namespace; skipped");
                continue;
            }
            let svc: &[ServiceDef] = services
                .get(&(
                    inst.namespace.as_str(),
                    inst.app.as_str(),
                    inst.revision.as_str(),
                ))
                .map(|s| &***s)
                .unwrap_or(&[]);
            let _ = reg.acquire_revision(&inst.namespace, &inst.app, &inst.revision, svc);
            let ord = u32::try_from(reg.slots.len()).expect("fewer than 2^32 instances");
            let services = reg.services_of(&inst);
            reg.index.insert(ord, &inst, &services);
            reg.track_source(&inst, ord, true);
            if let Some(s) = inst.session.and_then(|s| reg.sessions.get_mut(&s)) {
                s.members.insert(ord);
            }
            if let Some(nss) = reg.namespaces.get_mut(&inst.namespace) {
                nss.apps
                    .entry(inst.app.clone())
                    .or_default()
                    .ids
                    .insert(inst.id.clone(), ord);
            }
            reg.slots.push(Some(inst));
        }
        for (source, priority) in snap.sources.priorities {
            reg.shadows.set_priority(&source, priority);
        }
        for r in snap.sources.shadowed {
            reg.shadows.insert(r);
        }
        reg.revision = snap.revision;
        reg.next_session_id = snap.next_session_id;
        reg.feed.reset(snap.revision);
        reg
    }
}

/// What one sync did, for its [`CommandResponse::Synced`].
#[derive(Debug, Default)]
struct SyncOutcome {
    upserted: u32,
    removed: u32,
    skipped: Vec<(String, String)>,
    shadowed: Vec<(String, String)>,
}

/// Why a record is shadowed by a native registration.
const SHADOWED_BY_NATIVE: &str = "shadowed by a native registration";

/// Why a record is shadowed by `source`'s record at `priority`.
fn shadowed_by(source: &str, priority: i32) -> String {
    format!("shadowed by source {source:?} (priority {priority})")
}

/// The source named by a record's provenance ("" for a native one).
fn owner_name(r: &Registration) -> &str {
    r.instance
        .provenance
        .as_ref()
        .map_or("", |p| p.source.as_str())
}

#[cfg(test)]
mod tests;
