//! Which streams watch what: the inverse of each stream's [`Interest`],
//! so that a batch of [`Changes`] finds the streams it concerns in time
//! that grows with their number, not with the number of streams.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::cache::{Changes, Interest};

/// Streams by what their resources depend on. `T` is the handle a wake
/// needs (the server's stream slot); `u64` is the stream id.
#[derive(Debug)]
pub(super) struct Watchers<T> {
    /// Streams whose resources span namespaces.
    everything: HashMap<u64, T>,
    namespaces: HashMap<String, NsWatchers<T>>,
}

#[derive(Debug)]
struct NsWatchers<T> {
    /// Wildcard subscribers and streams waiting for a name to resolve.
    any: HashMap<u64, T>,
    apps: HashMap<Arc<str>, HashMap<u64, T>>,
    services: HashMap<Arc<str>, HashMap<u64, T>>,
}

impl<T> NsWatchers<T> {
    fn is_empty(&self) -> bool {
        self.any.is_empty() && self.apps.is_empty() && self.services.is_empty()
    }
}

/// Stops stream `id` watching `name` in `by`, dropping emptied names.
fn unwatch<T>(by: &mut HashMap<Arc<str>, HashMap<u64, T>>, name: &str, id: u64) {
    if let Some(ids) = by.get_mut(name) {
        ids.remove(&id);
        if ids.is_empty() {
            by.remove(name);
        }
    }
}

impl<T> Default for NsWatchers<T> {
    fn default() -> Self {
        Self {
            any: HashMap::new(),
            apps: HashMap::new(),
            services: HashMap::new(),
        }
    }
}

impl<T> Default for Watchers<T> {
    fn default() -> Self {
        Self {
            everything: HashMap::new(),
            namespaces: HashMap::new(),
        }
    }
}

impl<T: Clone> Watchers<T> {
    /// Stream `id` of namespace `ns` now watches `new` instead of `old`
    /// (an empty `new` when it is gone: `handle` is only taken for what is
    /// added).
    pub(super) fn replace(
        &mut self,
        id: u64,
        handle: &T,
        ns: &str,
        old: &Interest,
        new: &Interest,
    ) {
        if old.everything != new.everything {
            if new.everything {
                self.everything.insert(id, handle.clone());
            } else {
                self.everything.remove(&id);
            }
        }
        let w = self.namespaces.entry(ns.to_string()).or_default();
        if old.namespace != new.namespace {
            if new.namespace {
                w.any.insert(id, handle.clone());
            } else {
                w.any.remove(&id);
            }
        }
        for (by, old, new) in [
            (&mut w.apps, &old.apps, &new.apps),
            (&mut w.services, &old.services, &new.services),
        ] {
            for gone in old.difference(new) {
                unwatch(by, gone, id);
            }
            for added in new.difference(old) {
                by.entry(added.clone())
                    .or_default()
                    .insert(id, handle.clone());
            }
        }
        if w.is_empty() {
            self.namespaces.remove(ns);
        }
    }

    /// Calls `wake` once for each stream `changes` may concern (not for
    /// `changes.everything`: the caller wakes every stream then).
    pub(super) fn touched(&self, changes: &Changes, mut wake: impl FnMut(u64, &T)) {
        // The lists of streams concerned. A stream can be on several (it
        // watches two changed applications, or it is also a wildcard
        // subscriber): only then is a set needed to wake it once. The
        // common case, one changed application, is one list.
        let mut lists: Vec<&HashMap<u64, T>> = Vec::new();
        lists.push(&self.everything);
        for (ns, c) in &changes.namespaces {
            let Some(w) = self.namespaces.get(ns) else {
                continue;
            };
            lists.push(&w.any);
            for (by, names) in [(&w.apps, &c.apps), (&w.services, &c.services)] {
                lists.extend(names.iter().filter_map(|name| by.get(name.as_str())));
            }
        }
        lists.retain(|l| !l.is_empty());
        if let [only] = lists[..] {
            only.iter().for_each(|(id, h)| wake(*id, h));
            return;
        }
        let mut seen = HashSet::with_capacity(lists.iter().map(|l| l.len()).sum());
        for (id, h) in lists.into_iter().flatten() {
            if seen.insert(*id) {
                wake(*id, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::NsChanges;

    fn interest(apps: &[&str], services: &[&str], namespace: bool) -> Interest {
        Interest {
            everything: false,
            namespace,
            apps: apps.iter().map(|s| Arc::from(*s)).collect(),
            services: services.iter().map(|s| Arc::from(*s)).collect(),
        }
    }

    fn change(ns: &str, apps: &[&str], services: &[&str]) -> Changes {
        let mut c = Changes::default();
        c.namespaces.insert(
            ns.to_string(),
            NsChanges {
                apps: apps.iter().map(|s| s.to_string()).collect(),
                services: services.iter().map(|s| s.to_string()).collect(),
            },
        );
        c
    }

    fn woken(w: &Watchers<&'static str>, c: &Changes) -> Vec<&'static str> {
        let mut v = Vec::new();
        w.touched(c, |_, h| v.push(*h));
        v.sort_unstable();
        v
    }

    #[test]
    fn a_change_finds_only_the_streams_watching_what_it_touches() {
        let mut w = Watchers::default();
        let none = Interest::default();
        w.replace(1, &"pay", "default", &none, &interest(&["pay"], &[], false));
        w.replace(
            2,
            &"bill",
            "default",
            &none,
            &interest(&["bill"], &["svc.Bill"], false),
        );
        w.replace(3, &"wild", "default", &none, &interest(&["pay"], &[], true));
        w.replace(
            4,
            &"other-ns",
            "prod",
            &none,
            &interest(&["pay"], &[], false),
        );
        let all = Interest {
            everything: true,
            ..Interest::default()
        };
        w.replace(5, &"istiod", "istio-system", &none, &all);

        assert_eq!(
            woken(&w, &change("default", &["pay"], &[])),
            ["istiod", "pay", "wild"]
        );
        assert_eq!(
            woken(&w, &change("default", &[], &["svc.Bill"])),
            ["bill", "istiod", "wild"]
        );
        assert_eq!(
            woken(&w, &change("prod", &["pay"], &[])),
            ["istiod", "other-ns"]
        );
        assert_eq!(woken(&w, &change("staging", &["pay"], &[])), ["istiod"]);

        // Stream 1 moves from pay to bill; stream 3 stops being a wildcard.
        w.replace(
            1,
            &"pay",
            "default",
            &interest(&["pay"], &[], false),
            &interest(&["bill"], &[], false),
        );
        w.replace(
            3,
            &"wild",
            "default",
            &interest(&["pay"], &[], true),
            &interest(&["pay"], &[], false),
        );
        assert_eq!(
            woken(&w, &change("default", &["bill"], &[])),
            ["bill", "istiod", "pay"]
        );
        assert_eq!(
            woken(&w, &change("default", &["pay", "bill"], &["svc.Bill"])),
            ["bill", "istiod", "pay", "wild"],
            "each stream once"
        );

        // Gone streams are forgotten, and so are emptied namespaces.
        w.replace(4, &"", "prod", &interest(&["pay"], &[], false), &none);
        w.replace(5, &"", "istio-system", &all, &none);
        assert_eq!(
            woken(&w, &change("prod", &["pay"], &[])),
            Vec::<&str>::new()
        );
        assert!(!w.namespaces.contains_key("prod"));
        assert!(w.everything.is_empty());
        for (id, i) in [
            (1, interest(&["bill"], &[], false)),
            (2, interest(&["bill"], &["svc.Bill"], false)),
            (3, interest(&["pay"], &[], false)),
        ] {
            w.replace(id, &"", "default", &i, &none);
        }
        assert!(w.namespaces.is_empty());
    }
}
