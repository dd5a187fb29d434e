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

/// What the resources one stream was last sent (or told are absent)
/// depend on: the registry changes that can change what it is sent. The
/// server wakes a stream for a batch of [`Changes`] only when they touch
/// its interest (an application or service in it, anything in its
/// namespace when it watches the whole namespace, anything anywhere when it
/// watches everything), so a change costs work for the streams it
/// concerns, not for every stream.
///
/// It is built from the [`Dependency`] of every resource looked up while
/// the stream's responses are computed; over-approximating (a stale
/// dependency left from an earlier subscription) costs a spurious wake,
/// never a missed push.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Interest {
    /// A resource spanning namespaces: any change anywhere.
    pub everything: bool,
    /// A wildcard subscription or a name that does not resolve (yet): any
    /// change in the stream's namespace.
    pub namespace: bool,
    /// Applications whose instances the resources are built from.
    pub apps: HashSet<Arc<str>>,
    /// Services whose instances the resources are built from.
    pub services: HashSet<Arc<str>>,
}

impl Interest {
    /// Records one resource's dependency.
    pub fn note(&mut self, dep: &Dependency) {
        match dep {
            Dependency::Everything => self.everything = true,
            Dependency::Namespace => self.namespace = true,
            Dependency::App(a) => insert_missing(&mut self.apps, a),
            Dependency::Service(s) => insert_missing(&mut self.services, s),
            Dependency::Nothing => {}
        }
    }

    /// Adds everything `other` depends on.
    pub fn merge(&mut self, other: &Interest) {
        self.everything |= other.everything;
        self.namespace |= other.namespace;
        self.apps.extend(other.apps.iter().cloned());
        self.services.extend(other.services.iter().cloned());
    }

    /// True when everything `other` depends on, this does too.
    pub fn covers(&self, other: &Interest) -> bool {
        (self.everything || !other.everything)
            && (self.namespace || !other.namespace)
            && other.apps.is_subset(&self.apps)
            && other.services.is_subset(&self.services)
    }

    /// True when it depends on nothing.
    pub fn is_empty(&self) -> bool {
        !self.everything && !self.namespace && self.apps.is_empty() && self.services.is_empty()
    }

    /// Forgets everything, keeping the sets' allocations.
    pub fn clear(&mut self) {
        self.everything = false;
        self.namespace = false;
        self.apps.clear();
        self.services.clear();
    }
}

/// Inserts `name` unless present (a reference count, not a copy).
fn insert_missing(set: &mut HashSet<Arc<str>>, name: &Arc<str>) {
    if !set.contains(name) {
        set.insert(name.clone());
    }
}

/// Shared cache of built resources: namespace → type → name. Lookups take
/// `&str` at every level, so a hit allocates nothing and, through
/// [`ResourceCache::peek`], needs only shared access.
#[derive(Debug)]
pub struct ResourceCache {
    entries: HashMap<String, HashMap<ResourceType, HashMap<String, Entry>>>,
    wildcard: HashMap<(String, ResourceType), Arc<Vec<String>>>,
    len: usize,
    max_entries: usize,
}

impl ResourceCache {
    /// A cache holding at most `max_entries` resources (names that resolve
    /// to nothing are dropped first when it is full).
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            wildcard: HashMap::new(),
            len: 0,
            max_entries: max_entries.max(16),
        }
    }

    /// The cached state of a resource without building it: `None` when not
    /// cached, `Some(None)` when cached as nonexistent.
    pub fn peek(&self, ns: &str, ty: ResourceType, name: &str) -> Option<Option<Arc<Built>>> {
        self.entry(ns, ty, name).map(|e| e.built.clone())
    }

    /// [`ResourceCache::peek`], also noting in `interest` what the
    /// resource depends on when it is cached.
    pub fn peek_noting(
        &self,
        ns: &str,
        ty: ResourceType,
        name: &str,
        interest: &mut Interest,
    ) -> Option<Option<Arc<Built>>> {
        let e = self.entry(ns, ty, name)?;
        interest.note(&e.dep);
        Some(e.built.clone())
    }

    fn entry(&self, ns: &str, ty: ResourceType, name: &str) -> Option<&Entry> {
        self.entries.get(ns)?.get(&ty)?.get(name)
    }

    /// The cached wildcard names of `ty` in `ns`, if cached.
    pub fn peek_wildcard(&self, ns: &str, ty: ResourceType) -> Option<Arc<Vec<String>>> {
        self.wildcard.get(&(ns.to_string(), ty)).cloned()
    }

    /// Resource `name` of `ty` in `ns`, building it if needed.
    pub fn get(
        &mut self,
        reg: &Registry,
        ns: &str,
        ty: ResourceType,
        name: &str,
    ) -> Option<Arc<Built>> {
        self.get_noting(reg, ns, ty, name, &mut Interest::default())
    }

    /// [`ResourceCache::get`], also noting in `interest` what the resource
    /// depends on.
    pub fn get_noting(
        &mut self,
        reg: &Registry,
        ns: &str,
        ty: ResourceType,
        name: &str,
        interest: &mut Interest,
    ) -> Option<Arc<Built>> {
        if let Some(hit) = self.peek_noting(ns, ty, name, interest) {
            return hit;
        }
        if self.len >= self.max_entries {
            self.evict();
        }
        let (any, dep) = resources::build(reg, ns, ty, name);
        interest.note(&dep);
        let built = any.map(|any| {
            Arc::new(Built {
                name: name.to_string(),
                version: resources::version_of(&any.value),
                any,
            })
        });
        self.entries
            .entry(ns.to_string())
            .or_default()
            .entry(ty)
            .or_default()
            .insert(
                name.to_string(),
                Entry {
                    built: built.clone(),
                    dep,
                },
            );
        self.len += 1;
        built
    }

    /// Drops the entries for names that do not exist, then everything if
    /// that was not enough.
    fn evict(&mut self) {
        for types in self.entries.values_mut() {
            for names in types.values_mut() {
                names.retain(|_, e| e.built.is_some());
            }
        }
        self.recount();
        if self.len >= self.max_entries {
            self.entries.clear();
            self.len = 0;
        }
    }

    fn recount(&mut self) {
        self.entries.retain(|_, types| {
            types.retain(|_, names| !names.is_empty());
            !types.is_empty()
        });
        self.len = self
            .entries
            .values()
            .flat_map(|t| t.values())
            .map(HashMap::len)
            .sum();
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
            self.len = 0;
            return;
        }
        let touched: BTreeSet<&str> = changes.namespaces.keys().map(String::as_str).collect();
        self.wildcard
            .retain(|(ns, ty), _| !touched.contains(ns.as_str()) && ty.mcp_export().is_none());
        // Resources spanning namespaces are cached under each stream's namespace.
        for types in self.entries.values_mut() {
            for names in types.values_mut() {
                names.retain(|_, e| e.dep != Dependency::Everything);
            }
        }
        for (ns, c) in &changes.namespaces {
            let Some(types) = self.entries.get_mut(ns) else {
                continue;
            };
            for names in types.values_mut() {
                names.retain(|_, e| match &e.dep {
                    Dependency::Namespace | Dependency::Everything => false,
                    Dependency::Nothing => true,
                    Dependency::App(a) => !c.apps.contains(&**a),
                    Dependency::Service(s) => !c.services.contains(&**s),
                });
            }
        }
        self.recount();
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use meshreg_registry::command::Command;
    use meshreg_registry::model::{validate, InstanceSpec};

    use super::*;

    fn add(r: &mut Registry, app: &str, ip: &str) -> FeedEvent {
        let spec = InstanceSpec {
            namespace: "default".into(),
            app: app.into(),
            address: ip.into(),
            ports: [("grpc".to_string(), 9090)].into_iter().collect(),
            ..Default::default()
        };
        r.apply(&Command::Register {
            entries: vec![validate::registration("i", spec).unwrap()],
        });
        r.feed()
            .since(r.revision() - 1)
            .unwrap()
            .last()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_change_rebuilds_only_what_depends_on_it() {
        let mut r = Registry::new(100);
        add(&mut r, "pay", "10.0.0.1");
        add(&mut r, "bill", "10.0.0.2");
        let mut c = ResourceCache::new(100);
        let pay = c
            .get(
                &r,
                "default",
                ResourceType::Endpoint,
                "outbound|9090||pay.default",
            )
            .unwrap();
        let bill = c
            .get(
                &r,
                "default",
                ResourceType::Endpoint,
                "outbound|9090||bill.default",
            )
            .unwrap();
        assert!(c
            .get(
                &r,
                "default",
                ResourceType::Endpoint,
                "outbound|9090||ghost.default"
            )
            .is_none());
        assert_eq!(c.len(), 3);
        // Cached hits are shared, not rebuilt.
        assert!(Arc::ptr_eq(
            &pay,
            &c.peek(
                "default",
                ResourceType::Endpoint,
                "outbound|9090||pay.default"
            )
            .unwrap()
            .unwrap()
        ));
        let ev = add(&mut r, "pay", "10.0.0.3");
        let mut changes = Changes::default();
        changes.add(&ev);
        c.invalidate(&changes);
        // pay and the nonexistent name are dropped; bill stays.
        assert_eq!(c.len(), 1);
        assert!(c
            .peek(
                "default",
                ResourceType::Endpoint,
                "outbound|9090||bill.default"
            )
            .is_some());
        let pay2 = c
            .get(
                &r,
                "default",
                ResourceType::Endpoint,
                "outbound|9090||pay.default",
            )
            .unwrap();
        assert_ne!(pay.version, pay2.version);
        let bill2 = c
            .get(
                &r,
                "default",
                ResourceType::Endpoint,
                "outbound|9090||bill.default",
            )
            .unwrap();
        assert!(Arc::ptr_eq(&bill, &bill2));
    }

    #[test]
    fn lookups_note_what_the_resources_depend_on() {
        let mut r = Registry::new(100);
        add(&mut r, "pay", "10.0.0.1");
        let mut c = ResourceCache::new(100);
        let eds = |app: &str| format!("outbound|9090||{app}.default");
        let mut i = Interest::default();
        // Built, then a cache hit: both note the application.
        assert!(c
            .get_noting(&r, "default", ResourceType::Endpoint, &eds("pay"), &mut i)
            .is_some());
        let mut hit = Interest::default();
        assert!(c
            .peek_noting("default", ResourceType::Endpoint, &eds("pay"), &mut hit)
            .is_some());
        assert_eq!(i, hit);
        assert_eq!(i.apps, HashSet::from([Arc::from("pay")]));
        assert!(!i.namespace && !i.everything);

        // A name that does not resolve depends on the whole namespace.
        let mut ghost = Interest::default();
        assert!(c
            .get_noting(
                &r,
                "default",
                ResourceType::Endpoint,
                &eds("ghost"),
                &mut ghost
            )
            .is_none());
        assert!(ghost.namespace && ghost.apps.is_empty());

        assert!(!i.covers(&ghost) && !ghost.covers(&i));
        let mut both = i.clone();
        both.merge(&ghost);
        assert!(both.covers(&i) && both.covers(&ghost));
        both.clear();
        assert!(both.is_empty());
    }
}
