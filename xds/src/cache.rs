//! Resources built once per version and shared by every stream: the
//! encoded `Any` of a resource is computed once, then handed to each
//! subscriber. Entries are invalidated per application or service when the
//! registry changes, so a change to one app rebuilds only its resources.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use meshreg_registry::feed::FeedEvent;
use meshreg_registry::state::Registry;

use crate::resources::{self, Dependency, ResourceType};

/// One built resource version.
#[derive(Debug, PartialEq)]
pub struct Built {
    /// Resource name.
    pub name: String,
    /// Content version ([`resources::version_of`]).
    pub version: String,
    /// The encoded resource.
    pub any: Any,
}

#[derive(Debug)]
struct Entry {
    built: Option<Arc<Built>>,
    dep: Dependency,
}

/// What changed in one namespace since the last push.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NsChanges {
    /// Applications whose instances changed.
    pub apps: HashSet<String>,
    /// Services whose instances changed.
    pub services: HashSet<String>,
}

/// What changed since the last push.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have changed (the feed overflowed, or a snapshot was installed).
    pub everything: bool,
    /// Per namespace.
    pub namespaces: HashMap<String, NsChanges>,
}

impl Changes {
    /// Records one feed event.
    pub fn add(&mut self, ev: &FeedEvent) {
        let mut note = |i: &meshreg_registry::model::Instance,
                        services: &[meshreg_registry::model::ServiceDef]| {
            let ns = self.namespaces.entry(i.namespace.clone()).or_default();
            ns.apps.insert(i.app.clone());
            ns.services.extend(services.iter().map(|s| s.name.clone()));
        };
        note(&ev.instance, &ev.services);
        if let Some((prev, prev_services)) = &ev.previous {
            note(prev, prev_services);
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.namespaces.is_empty()
    }
}

/// Shared cache of built resources, keyed by (namespace, type, name).
#[derive(Debug)]
pub struct ResourceCache {
    entries: HashMap<(String, ResourceType, String), Entry>,
    wildcard: HashMap<(String, ResourceType), Arc<Vec<String>>>,
    max_entries: usize,
}

impl ResourceCache {
    /// A cache holding at most `max_entries` resources (names that resolve
    /// to nothing are dropped first when it is full).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            wildcard: HashMap::new(),
            max_entries: max_entries.max(16),
        }
    }

    /// Resource `name` of `ty` in `ns`, building it if needed.
    pub fn get(
        &mut self,
        reg: &Registry,
        ns: &str,
        ty: ResourceType,
        name: &str,
    ) -> Option<Arc<Built>> {
        let key = (ns.to_string(), ty, name.to_string());
        if let Some(e) = self.entries.get(&key) {
            return e.built.clone();
        }
        if self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| e.built.is_some());
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        let (any, dep) = resources::build(reg, ns, ty, name);
        let built = any.map(|any| {
            Arc::new(Built {
                name: name.to_string(),
                version: resources::version_of(&any.value),
                any,
            })
        });
        self.entries.insert(
            key,
            Entry {
                built: built.clone(),
                dep,
            },
        );
        built
    }

    /// Names of every resource of `ty` in `ns` (for wildcard subscriptions).
    pub fn wildcard_names(
        &mut self,
        reg: &Registry,
        ns: &str,
        ty: ResourceType,
    ) -> Arc<Vec<String>> {
        self.wildcard
            .entry((ns.to_string(), ty))
            .or_insert_with(|| Arc::new(resources::all_names(reg, ns, ty)))
            .clone()
    }

    /// Drops what `changes` may have changed.
    pub fn invalidate(&mut self, changes: &Changes) {
        if changes.everything {
            self.entries.clear();
            self.wildcard.clear();
            return;
        }
        let touched: BTreeSet<&str> = changes.namespaces.keys().map(String::as_str).collect();
        self.wildcard
            .retain(|(ns, _), _| !touched.contains(ns.as_str()));
        self.entries.retain(|(ns, _, _), e| {
            let Some(c) = changes.namespaces.get(ns) else {
                return true;
            };
            match &e.dep {
                Dependency::Namespace => false,
                Dependency::App(a) => !c.apps.contains(a),
                Dependency::Service(s) => !c.services.contains(s),
            }
        });
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
