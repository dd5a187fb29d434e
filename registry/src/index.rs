//! The roaring-bitmap subset index (DESIGN.md, "Subset index").
//!
//! Every instance has a `u32` ordinal. The index keeps one
//! [`RoaringBitmap`] of ordinals per namespace, per (namespace, app), per
//! (namespace, service), per label `key` and `key=value`, per health state
//! and per locality part. [`Index::select`] intersects the bitmaps a
//! selector names, smallest first, so its cost follows the size of the
//! answer rather than the size of the registry. Maintained incrementally by
//! the state machine and rebuilt from a snapshot.

use std::collections::HashMap;

use roaring::RoaringBitmap;

use crate::model::{Health, Instance, ServiceDef};
use crate::selector::{Requirement, Selector};

#[derive(Debug, Default)]
struct LabelPostings {
    /// Instances that have the key, whatever the value.
    any: RoaringBitmap,
    /// Instances per value.
    values: HashMap<String, RoaringBitmap>,
}

/// Bitmaps of instance ordinals, see the module doc.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: HashMap<String, RoaringBitmap>,
    apps: HashMap<String, HashMap<String, RoaringBitmap>>,
    services: HashMap<String, HashMap<String, RoaringBitmap>>,
    labels: HashMap<String, LabelPostings>,
    health: [RoaringBitmap; 5],
    regions: HashMap<String, RoaringBitmap>,
    zones: HashMap<String, RoaringBitmap>,
    subzones: HashMap<String, RoaringBitmap>,
}

fn add(map: &mut HashMap<String, RoaringBitmap>, key: &str, ord: u32) {
    match map.get_mut(key) {
        Some(b) => {
            b.insert(ord);
        }
        None => {
            map.insert(key.to_string(), std::iter::once(ord).collect());
        }
    }
}

fn del(map: &mut HashMap<String, RoaringBitmap>, key: &str, ord: u32) {
    if let Some(b) = map.get_mut(key) {
        b.remove(ord);
        if b.is_empty() {
            map.remove(key);
        }
    }
}

fn add2(
    map: &mut HashMap<String, HashMap<String, RoaringBitmap>>,
    outer: &str,
    key: &str,
    ord: u32,
) {
    match map.get_mut(outer) {
        Some(inner) => add(inner, key, ord),
        None => {
            let mut inner = HashMap::new();
            add(&mut inner, key, ord);
            map.insert(outer.to_string(), inner);
        }
    }
}

fn del2(
    map: &mut HashMap<String, HashMap<String, RoaringBitmap>>,
    outer: &str,
    key: &str,
    ord: u32,
) {
    if let Some(inner) = map.get_mut(outer) {
        del(inner, key, ord);
        if inner.is_empty() {
            map.remove(outer);
        }
    }
}

/// One positive term of a selector: a bitmap, or a union of bitmaps
/// (`in (a,b)`, several health states).
enum Term<'a> {
    One(&'a RoaringBitmap),
    AnyOf(Vec<&'a RoaringBitmap>),
}

impl Term<'_> {
    /// Upper bound of the term's cardinality.
    fn size(&self) -> u64 {
        match self {
            Term::One(b) => b.len(),
            Term::AnyOf(bs) => bs.iter().map(|b| b.len()).sum(),
        }
    }

    fn materialize(&self) -> RoaringBitmap {
        match self {
            Term::One(b) => (*b).clone(),
            Term::AnyOf(bs) => bs.iter().fold(RoaringBitmap::new(), |acc, b| acc | *b),
        }
    }

    /// `acc ∩ self`, touching only as much as `acc` needs.
    fn intersect_into(&self, acc: &mut RoaringBitmap) {
        match self {
            Term::One(b) => *acc &= *b,
            Term::AnyOf(bs) => {
                let mut out = RoaringBitmap::new();
                for b in bs {
                    out |= &*acc & *b;
                }
                *acc = out;
            }
        }
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes `instance` (whose revision exposes `services`) under `ord`.
    pub fn insert(&mut self, ord: u32, instance: &Instance, services: &[ServiceDef]) {
        let ns = instance.namespace.as_str();
        add(&mut self.namespaces, ns, ord);
        add2(&mut self.apps, ns, &instance.app, ord);
        for s in services {
            add2(&mut self.services, ns, &s.name, ord);
        }
        for (k, v) in &instance.labels {
            let p = match self.labels.get_mut(k.as_str()) {
                Some(p) => p,
                None => self.labels.entry(k.clone()).or_default(),
            };
            p.any.insert(ord);
            add(&mut p.values, v, ord);
        }
        self.health[instance.health.ordinal()].insert(ord);
        let l = &instance.locality;
        for (map, v) in [
            (&mut self.regions, &l.region),
            (&mut self.zones, &l.zone),
            (&mut self.subzones, &l.subzone),
        ] {
            if !v.is_empty() {
                add(map, v, ord);
            }
        }
    }

    /// Removes what [`Index::insert`] added for the same arguments.
    pub fn remove(&mut self, ord: u32, instance: &Instance, services: &[ServiceDef]) {
        let ns = instance.namespace.as_str();
        del(&mut self.namespaces, ns, ord);
        del2(&mut self.apps, ns, &instance.app, ord);
        for s in services {
            del2(&mut self.services, ns, &s.name, ord);
        }
        for (k, v) in &instance.labels {
            if let Some(p) = self.labels.get_mut(k.as_str()) {
                p.any.remove(ord);
                del(&mut p.values, v, ord);
                if p.any.is_empty() {
                    self.labels.remove(k.as_str());
                }
            }
        }
        self.health[instance.health.ordinal()].remove(ord);
        let l = &instance.locality;
        for (map, v) in [
            (&mut self.regions, &l.region),
            (&mut self.zones, &l.zone),
            (&mut self.subzones, &l.subzone),
        ] {
            if !v.is_empty() {
                del(map, v, ord);
            }
        }
    }

    /// The ordinals of the instances of namespace `ns` that match `sel`.
    ///
    /// Positive terms (namespace, app, service, health, locality, `in`,
    /// `exists`) are intersected smallest first, stopping as soon as the
    /// result is empty; negative terms (`notin`, `!exists`) are then
    /// subtracted from the (small) result.
    pub fn select(&self, ns: &str, sel: &Selector) -> RoaringBitmap {
        let mut terms: Vec<Term<'_>> = Vec::with_capacity(4 + sel.labels.len());
        let Some(ns_bits) = self.namespaces.get(ns) else {
            return RoaringBitmap::new();
        };
        terms.push(Term::One(ns_bits));
        fn lookup2<'m>(
            map: &'m HashMap<String, HashMap<String, RoaringBitmap>>,
            ns: &str,
            key: &str,
        ) -> Option<&'m RoaringBitmap> {
            map.get(ns).and_then(|m| m.get(key))
        }
        if let Some(app) = &sel.app {
            match lookup2(&self.apps, ns, app) {
                Some(b) => terms.push(Term::One(b)),
                None => return RoaringBitmap::new(),
            }
        }
        if let Some(svc) = &sel.service {
            match lookup2(&self.services, ns, svc) {
                Some(b) => terms.push(Term::One(b)),
                None => return RoaringBitmap::new(),
            }
        }
        if !sel.health.is_empty() {
            let mut hs: Vec<Health> = sel.health.clone();
            hs.sort();
            hs.dedup();
            terms.push(Term::AnyOf(
                hs.iter().map(|h| &self.health[h.ordinal()]).collect(),
            ));
        }
        for (map, want) in [
            (&self.regions, &sel.region),
            (&self.zones, &sel.zone),
            (&self.subzones, &sel.subzone),
        ] {
            if let Some(w) = want {
                match map.get(w) {
                    Some(b) => terms.push(Term::One(b)),
                    None => return RoaringBitmap::new(),
                }
            }
        }
        let mut negative: Vec<&RoaringBitmap> = Vec::new();
        for r in &sel.labels {
            let postings = self.labels.get(r.key());
            match r {
                Requirement::In(_, values) => {
                    let Some(p) = postings else {
                        return RoaringBitmap::new();
                    };
                    let mut bs: Vec<&RoaringBitmap> =
                        values.iter().filter_map(|v| p.values.get(v)).collect();
                    match bs.len() {
                        0 => return RoaringBitmap::new(),
                        1 => terms.push(Term::One(bs.remove(0))),
                        _ => terms.push(Term::AnyOf(bs)),
                    }
                }
                Requirement::Exists(_) => match postings {
                    Some(p) => terms.push(Term::One(&p.any)),
                    None => return RoaringBitmap::new(),
                },
                Requirement::NotIn(_, values) => {
                    if let Some(p) = postings {
                        negative.extend(values.iter().filter_map(|v| p.values.get(v)));
                    }
                }
                Requirement::DoesNotExist(_) => {
                    if let Some(p) = postings {
                        negative.push(&p.any);
                    }
                }
            }
        }
        terms.sort_by_key(Term::size);
        let mut acc = terms[0].materialize();
        for t in &terms[1..] {
            if acc.is_empty() {
                return acc;
            }
            t.intersect_into(&mut acc);
        }
        for n in negative {
            if acc.is_empty() {
                break;
            }
            acc -= n;
        }
        acc
    }

    /// Approximate heap bytes used by the bitmaps and their keys.
    pub fn heap_bytes(&self) -> usize {
        fn map_bytes(m: &HashMap<String, RoaringBitmap>) -> usize {
            m.iter()
                .map(|(k, b)| k.capacity() + b.serialized_size() + 48)
                .sum()
        }
        let nested = |m: &HashMap<String, HashMap<String, RoaringBitmap>>| -> usize {
            m.iter()
                .map(|(k, inner)| k.capacity() + map_bytes(inner) + 48)
                .sum()
        };
        map_bytes(&self.namespaces)
            + nested(&self.apps)
            + nested(&self.services)
            + self
                .labels
                .iter()
                .map(|(k, p)| k.capacity() + p.any.serialized_size() + map_bytes(&p.values) + 48)
                .sum::<usize>()
            + self
                .health
                .iter()
                .map(RoaringBitmap::serialized_size)
                .sum::<usize>()
            + map_bytes(&self.regions)
            + map_bytes(&self.zones)
            + map_bytes(&self.subzones)
    }
}
