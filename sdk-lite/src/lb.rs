//! Load balancing over an [`EndpointSet`].
//!
//! A [`LoadBalancer`] picks one endpoint per call with a [`Policy`]:
//! round robin, weighted random, least request (power of two choices) or
//! ring hash (consistent hashing, as Envoy's `RING_HASH`). It considers the
//! *usable* endpoints ([`Health::is_usable`](crate::Health::is_usable)),
//! unless fewer than `panic_threshold` percent of them are usable: then,
//! like Envoy's panic mode and Nacos's protect threshold, it uses all of
//! them rather than overload the few.
//!
//! Per-snapshot work (filtering, cumulative weights, the ring) is done
//! once when a new snapshot is first picked from, and shared by every pick
//! from it.
//!
//! Before that, the candidates can be narrowed to a **subset** (endpoints
//! whose labels match a selector, with Envoy's `LbSubsetConfig` fallback
//! policies when none match) and to the **preferred locality** (same zone,
//! then same region, then anywhere: the first tier with a usable endpoint
//! wins, so a zone that loses its last healthy endpoint fails over).
//!
//! Not here yet: Maglev.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::endpoints::{Endpoint, EndpointSet, Locality};

/// What a subset selection does when no endpoint matches (Envoy's
/// `LbSubsetConfig.fallback_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubsetFallback {
    /// No endpoint: the pick fails.
    NoFallback,
    /// Any endpoint of the set.
    AnyEndpoint,
    /// The endpoints matching this other selector.
    DefaultSubset(BTreeMap<String, String>),
}

/// How to pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each candidate in turn, as often as its weight, interleaved
    /// (earliest-deadline-first schedule, like Envoy's weighted round robin).
    RoundRobin,
    /// Random, proportional to weight.
    WeightedRandom,
    /// Two random candidates, the one with fewer requests in flight per
    /// unit of weight (counted by the [`Pick`]'s guard).
    LeastRequest,
    /// Consistent hashing on a request key ([`LoadBalancer::pick_hashed`]);
    /// each endpoint owns ring points in proportion to its weight.
    RingHash,
}

/// Earliest-deadline-first schedule over `weights`: position `k` appears
/// `weights[k]` times (scaled so that there are at most 65,536 slots, each
/// weight at least 1), spread out: a slot goes to the position whose next
/// turn is due first, turn `t` of position `k` (of `n`) being due at
/// `(t - 1 + (k + ½) / n) / weight`: the phase offsets keep endpoints of
/// equal weight apart instead of side by side.
fn edf_schedule(weights: &[u64]) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let total: u64 = weights.iter().sum();
    let cap = 65_536u64.max(weights.len() as u64);
    let w: Vec<u64> = weights
        .iter()
        .map(|x| {
            if total > cap {
                (x * cap / total).max(1)
            } else {
                *x
            }
        })
        .collect();
    let slots: u64 = w.iter().sum();
    let n = w.len() as u128;
    // Due time of turn t (from 1) of position k, as a fixed-point fraction.
    let due = |k: usize, t: u64| {
        let num = (u128::from(t - 1) * 2 * n + 2 * k as u128 + 1) * u128::from(slots);
        (num << 16) / (2 * n * u128::from(w[k]))
    };
    let mut heap: BinaryHeap<Reverse<(u128, usize, u64)>> =
        (0..w.len()).map(|k| Reverse((due(k, 1), k, 1))).collect();
    let mut out = Vec::with_capacity(slots as usize);
    while (out.len() as u64) < slots {
        let Some(Reverse((_, k, t))) = heap.pop() else {
            break;
        };
        out.push(k);
        heap.push(Reverse((due(k, t + 1), k, t + 1)));
    }
    out
}

/// Default panic threshold, percent (Envoy's default).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// Default ring points of the lightest endpoint ([`LoadBalancer::replicas`]).
pub const DEFAULT_REPLICAS: usize = 160;

/// Largest ring built, to bound memory (as Envoy's `maximum_ring_size`).
const MAX_RING_SIZE: usize = 8 * 1024 * 1024;

/// A load balancer; share it (`Arc`) between callers of one target.
#[derive(Debug)]
pub struct LoadBalancer {
    policy: Policy,
    panic_threshold: f64,
    replicas: usize,
    subset: Option<(BTreeMap<String, String>, SubsetFallback)>,
    locality: Option<Locality>,
    next: AtomicUsize,
    /// In-flight counts by `address:port`, kept across snapshots.
    in_flight: Mutex<HashMap<(String, u16), Arc<AtomicUsize>>>,
    prepared: Mutex<Option<Arc<Prepared>>>,
}

/// What one snapshot needs for picking.
#[derive(Debug)]
struct Prepared {
    set: Arc<EndpointSet>,
    /// Indexes into `set.endpoints` of the candidates.
    candidates: Vec<usize>,
    panic: bool,
    /// WeightedRandom: running sums of candidate weights.
    cumulative: Vec<u64>,
    /// RoundRobin with unequal weights: positions into `candidates`, each
    /// as often as its weight (scaled to at most 65,536 slots), interleaved.
    schedule: Vec<usize>,
    /// LeastRequest: weight per candidate.
    weights: Vec<u64>,
    /// RingHash: (point, index into `set.endpoints`), sorted by point.
    ring: Vec<(u64, usize)>,
    /// LeastRequest: counter per candidate.
    counters: Vec<Arc<AtomicUsize>>,
}

/// One picked endpoint. For [`Policy::LeastRequest`] it counts as in
/// flight until dropped: keep it for the duration of the request.
#[derive(Debug)]
pub struct Pick {
    set: Arc<EndpointSet>,
    index: usize,
    panic: bool,
    _guard: Option<InFlight>,
}

impl Pick {
    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.set.endpoints[self.index]
    }

    /// Whether it was picked in panic mode (too few usable endpoints, so
    /// unusable ones were candidates too).
    pub fn panic(&self) -> bool {
        self.panic
    }
}

/// Decrements an endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoadBalancer {
    /// A balancer with `policy`, the default panic threshold (50 %) and
    /// ring replicas (160).
    pub fn new(policy: Policy) -> LoadBalancer {
        LoadBalancer {
            policy,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            replicas: DEFAULT_REPLICAS,
            subset: None,
            locality: None,
            next: AtomicUsize::new(fastrand::usize(..)),
            in_flight: Mutex::new(HashMap::new()),
            prepared: Mutex::new(None),
        }
    }

    /// Sets the panic threshold in percent (0..=100; 0 disables panic
    /// mode).
    pub fn panic_threshold(mut self, percent: f64) -> LoadBalancer {
        self.panic_threshold = percent.clamp(0.0, 100.0);
        self
    }

    /// Sets the ring points of the lightest endpoint for
    /// [`Policy::RingHash`] (default 160; more points, more even spread).
    pub fn replicas(mut self, replicas: usize) -> LoadBalancer {
        self.replicas = replicas.clamp(1, 65_536);
        self
    }

    /// Picks only among endpoints whose labels include every `selector`
    /// pair; `fallback` says what to do when none does.
    pub fn subset(
        mut self,
        selector: BTreeMap<String, String>,
        fallback: SubsetFallback,
    ) -> LoadBalancer {
        self.subset = Some((selector, fallback));
        self
    }

    /// Prefers endpoints in `locality`'s zone, then its region, then any;
    /// a tier is used only if it has a usable endpoint.
    pub fn prefer_locality(mut self, locality: Locality) -> LoadBalancer {
        self.locality = Some(locality);
        self
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an endpoint of `set`; `None` when there is no candidate.
    /// [`Policy::RingHash`] without a key picks a random ring point.
    pub fn pick(&self, set: &Arc<EndpointSet>) -> Option<Pick> {
        self.pick_inner(set, None)
    }

    /// Picks with a request hash (see [`hash_key`]); only
    /// [`Policy::RingHash`] uses it, the others behave as [`Self::pick`].
    pub fn pick_hashed(&self, set: &Arc<EndpointSet>, hash: u64) -> Option<Pick> {
        self.pick_inner(set, Some(hash))
    }

    fn pick_inner(&self, set: &Arc<EndpointSet>, hash: Option<u64>) -> Option<Pick> {
        let p = self.prepare(set);
        let n = p.candidates.len();
        if n == 0 {
            return None;
        }
        let (index, guard) = match self.policy {
            Policy::RoundRobin => {
                let c = self.next.fetch_add(1, Ordering::Relaxed);
                let k = if p.schedule.is_empty() {
                    c % n
                } else {
                    p.schedule[c % p.schedule.len()]
                };
                (p.candidates[k], None)
            }
            Policy::WeightedRandom => {
                let total = *p.cumulative.last()?;
                let r = fastrand::u64(..total);
                let k = p.cumulative.partition_point(|c| *c <= r);
                (p.candidates[k.min(n - 1)], None)
            }
            Policy::LeastRequest => {
                let a = fastrand::usize(..n);
                let k = if n == 1 {
                    a
                } else {
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    // load(b)/w(b) < load(a)/w(a), without division.
                    let load = |i: usize| p.counters[i].load(Ordering::Acquire) as u64;
                    if load(b) * p.weights[a] < load(a) * p.weights[b] {
                        b
                    } else {
                        a
                    }
                };
                let c = p.counters[k].clone();
                c.fetch_add(1, Ordering::AcqRel);
                (p.candidates[k], Some(InFlight(c)))
            }
            Policy::RingHash => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let at = p.ring.partition_point(|(point, _)| *point < h);
                let (_, index) = p.ring.get(at).or_else(|| p.ring.first())?;
                (*index, None)
            }
        };
        Some(Pick {
            set: p.set.clone(),
            index,
            panic: p.panic,
            _guard: guard,
        })
    }

    fn prepare(&self, set: &Arc<EndpointSet>) -> Arc<Prepared> {
        let mut slot = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = slot.as_ref() {
            if Arc::ptr_eq(&p.set, set) {
                return p.clone();
            }
        }
        let p = Arc::new(self.build(set));
        *slot = Some(p.clone());
        p
    }

    /// The endpoints the subset and locality settings leave (indexes).
    fn scope(&self, set: &EndpointSet) -> Vec<usize> {
        let matches = |sel: &BTreeMap<String, String>, e: &Endpoint| {
            sel.iter().all(|(k, v)| e.labels.get(k) == Some(v))
        };
        let all: Vec<usize> = (0..set.endpoints.len()).collect();
        let mut scope = match &self.subset {
            None => all,
            Some((sel, fallback)) => {
                let hit: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|i| matches(sel, &set.endpoints[*i]))
                    .collect();
                if !hit.is_empty() {
                    hit
                } else {
                    match fallback {
                        SubsetFallback::NoFallback => Vec::new(),
                        SubsetFallback::AnyEndpoint => all,
                        SubsetFallback::DefaultSubset(d) => all
                            .into_iter()
                            .filter(|i| matches(d, &set.endpoints[*i]))
                            .collect(),
                    }
                }
            }
        };
        if let Some(me) = &self.locality {
            let same_zone =
                |e: &Endpoint| e.locality.region == me.region && e.locality.zone == me.zone;
            let same_region = |e: &Endpoint| e.locality.region == me.region;
            for tier in [&same_zone as &dyn Fn(&Endpoint) -> bool, &same_region] {
                let t: Vec<usize> = scope
                    .iter()
                    .copied()
                    .filter(|i| tier(&set.endpoints[*i]))
                    .collect();
                if t.iter().any(|i| set.endpoints[*i].health.is_usable()) {
                    scope = t;
                    break;
                }
            }
        }
        scope
    }

    fn build(&self, set: &Arc<EndpointSet>) -> Prepared {
        let scope = self.scope(set);
        let all = scope.len();
        let usable: Vec<usize> = scope
            .iter()
            .copied()
            .filter(|i| set.endpoints[*i].health.is_usable())
            .collect();
        // Panic when usable/all < threshold%.
        let panic = all > 0 && (usable.len() as f64) * 100.0 < self.panic_threshold * (all as f64);
        let candidates: Vec<usize> = if panic { scope } else { usable };
        let mut cumulative = Vec::new();
        let mut ring = Vec::new();
        let mut counters = Vec::new();
        let mut schedule = Vec::new();
        let weights: Vec<u64> = candidates
            .iter()
            .map(|i| u64::from(set.endpoints[*i].weight.max(1)))
            .collect();
        match self.policy {
            Policy::RoundRobin if weights.windows(2).any(|w| w[0] != w[1]) => {
                schedule = edf_schedule(&weights);
            }
            Policy::WeightedRandom => {
                let mut sum = 0u64;
                for i in &candidates {
                    sum += u64::from(set.endpoints[*i].weight.max(1));
                    cumulative.push(sum);
                }
            }
            Policy::RingHash => ring = self.build_ring(set, &candidates),
            Policy::LeastRequest => {
                let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                // Forget endpoints that left (guards still hold their counters).
                map.retain(|(a, port), _| {
                    set.endpoints
                        .iter()
                        .any(|e| e.address == *a && e.port == *port)
                });
                for i in &candidates {
                    let e = &set.endpoints[*i];
                    counters.push(map.entry((e.address.clone(), e.port)).or_default().clone());
                }
            }
            Policy::RoundRobin => {}
        }
        Prepared {
            set: set.clone(),
            candidates,
            panic,
            cumulative,
            ring,
            counters,
            schedule,
            weights,
        }
    }

    /// Ring points: `replicas · weight / min_weight` per endpoint (so the
    /// lightest endpoint gets `replicas`), scaled down only if the ring
    /// would exceed 8 Mi points. Point `k` of an endpoint is
    /// `hash_key("<address>:<port>_<k>")`. The ring therefore depends
    /// only on the endpoints, never on their order, and while the lightest
    /// weight is unchanged, adding or removing an endpoint moves only the
    /// keys that endpoint gains or owned.
    fn build_ring(&self, set: &EndpointSet, candidates: &[usize]) -> Vec<(u64, usize)> {
        let weight = |i: &usize| u64::from(set.endpoints[*i].weight.max(1));
        let Some(min_w) = candidates.iter().map(weight).min() else {
            return Vec::new();
        };
        let replicas = self.replicas as u64;
        let total: u64 = candidates
            .iter()
            .map(|i| replicas * weight(i) / min_w)
            .sum();
        let cap = MAX_RING_SIZE as u64;
        let mut ring = Vec::new();
        for i in candidates {
            let e = &set.endpoints[*i];
            let mut points = replicas * weight(i) / min_w;
            if total > cap {
                points = points * cap / total;
            }
            let base = format!("{}:{}_", e.address, e.port);
            for k in 0..points.max(1) {
                let key = format!("{base}{k}");
                ring.push((hash_key(key.as_bytes()), *i));
            }
        }
        // Ties (vanishingly rare) broken by address so the ring is
        // deterministic whatever the endpoint order.
        ring.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let (x, y) = (&set.endpoints[a.1], &set.endpoints[b.1]);
                (&x.address, x.port).cmp(&(&y.address, y.port))
            })
        });
        ring
    }
}

/// A stable 64-bit hash of a request key (FNV-1a, then the SplitMix64
/// finalizer for avalanche): the same on every process and platform.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
