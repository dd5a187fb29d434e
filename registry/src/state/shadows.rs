//! The records that do not back their instance: each source's record for
//! an identity another record wins, kept apart per source (a *shadowed
//! candidate*), and the priority each source last synced with. Plain data;
//! the merge rules themselves are in the parent module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::{Instance, InstanceKey, Registration};

/// Who a stored instance speaks for: itself (registered natively, no
/// provenance) or an external source (the source named by its provenance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner<'a> {
    /// Registered natively: always wins its identity.
    Native,
    /// Imported from this source.
    Source(&'a str),
}

impl<'a> Owner<'a> {
    /// The owner of `inst`.
    pub(super) fn of(inst: &'a Instance) -> Self {
        inst.provenance
            .as_ref()
            .map_or(Owner::Native, |p| Owner::Source(&p.source))
    }
}

/// Shadowed candidates and source priorities; see the module doc.
///
/// Invariants kept by the registry: a source has at most one record per
/// identity (backing the instance or shadowed, never both), and an
/// identity has shadowed candidates only while an instance backs it.
#[derive(Debug, Default)]
pub(super) struct Shadows {
    /// Identity → source → the source's record for it.
    by_key: BTreeMap<InstanceKey, BTreeMap<String, Arc<Registration>>>,
    /// Source → the identities it has a shadowed record for.
    by_source: BTreeMap<String, BTreeSet<InstanceKey>>,
    /// Source → the priority of its last sync.
    priorities: BTreeMap<String, i32>,
}

impl Shadows {
    /// The priority `source` last synced with; 0 for a source never
    /// synced (records registered with its provenance through the API).
    pub(super) fn priority(&self, source: &str) -> i32 {
        self.priorities.get(source).copied().unwrap_or(0)
    }

    /// Records the priority `source` syncs with.
    pub(super) fn set_priority(&mut self, source: &str, priority: i32) {
        self.priorities.insert(source.to_string(), priority);
    }

    /// Forgets the priority of a source that contributes nothing any more.
    pub(super) fn forget_source(&mut self, source: &str) {
        if !self.by_source.contains_key(source) {
            self.priorities.remove(source);
        }
    }

    /// True when no source has a shadowed record.
    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// True when `source` has a shadowed record.
    pub(super) fn has_source(&self, source: &str) -> bool {
        self.by_source.contains_key(source)
    }

    /// Keeps `reg` as its source's shadowed candidate for its identity,
    /// replacing the source's previous one. A record without provenance
    /// (native) is never shadowed and is dropped.
    pub(super) fn insert(&mut self, reg: Arc<Registration>) {
        let Owner::Source(source) = Owner::of(&reg.instance) else {
            return;
        };
        let source = source.to_string();
        let key = reg.instance.key();
        self.by_source
            .entry(source.clone())
            .or_default()
            .insert(key.clone());
        self.by_key.entry(key).or_default().insert(source, reg);
    }

    /// Takes `source`'s shadowed candidate for `key` out.
    pub(super) fn remove(&mut self, key: &InstanceKey, source: &str) -> Option<Arc<Registration>> {
        let candidates = self.by_key.get_mut(key)?;
        let reg = candidates.remove(source)?;
        if candidates.is_empty() {
            self.by_key.remove(key);
        }
        if let Some(keys) = self.by_source.get_mut(source) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_source.remove(source);
            }
        }
        Some(reg)
    }

    /// Takes every shadowed candidate for `key` out.
    pub(super) fn remove_all(&mut self, key: &InstanceKey) -> Vec<Arc<Registration>> {
        let sources: Vec<String> = self
            .by_key
            .get(key)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        sources.iter().filter_map(|s| self.remove(key, s)).collect()
    }

    /// The shadowed candidates for `key` as (source, its priority,
    /// record), best first: the higher priority, then the
    /// lexicographically smaller source name (every node picks the same).
    pub(super) fn ranked(&self, key: &InstanceKey) -> Vec<(&str, i32, &Arc<Registration>)> {
        let mut out: Vec<(&str, i32, &Arc<Registration>)> = self
            .by_key
            .get(key)
            .into_iter()
            .flatten()
            .map(|(s, r)| (s.as_str(), self.priority(s), r))
            .collect();
        // Stable sort over the by-name order: ties keep the smaller name first.
        out.sort_by_key(|(_, p, _)| std::cmp::Reverse(*p));
        out
    }

    /// The shadowed candidates for `key`, by source name.
    pub(super) fn of(&self, key: &InstanceKey) -> impl Iterator<Item = &Arc<Registration>> {
        self.by_key.get(key).into_iter().flat_map(BTreeMap::values)
    }

    /// The identities `source` has a shadowed candidate for.
    pub(super) fn keys_of(&self, source: &str) -> Vec<InstanceKey> {
        self.by_source
            .get(source)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of shadowed candidates per source.
    pub(super) fn counts(&self) -> impl Iterator<Item = (&String, usize)> {
        self.by_source.iter().map(|(s, k)| (s, k.len()))
    }

    /// Every source's priority, by name.
    pub(super) fn priorities(&self) -> impl Iterator<Item = (&String, i32)> {
        self.priorities.iter().map(|(s, p)| (s, *p))
    }

    /// Every shadowed candidate, by identity then source.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Registration>> {
        self.by_key.values().flat_map(BTreeMap::values)
    }
}
