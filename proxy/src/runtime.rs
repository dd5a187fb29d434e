//! The data path's view of the configuration: route tables and clusters
//! with their live endpoint state (active requests, outlier ejection,
//! stats), swapped atomically on every accepted xDS update.
//!
//! Endpoint state outlives configuration updates: a new [`Cluster`]
//! reuses the [`EndpointState`] of every endpoint it keeps (same
//! `host:port`), so a weight change or a new endpoint does not reset an
//! ejection, in-flight requests keep their counters and idle HTTP/1.1
//! connections stay pooled.
//!
//! Load balancing (`pick`): candidates are the cluster's endpoints, or the
//! subset matching the route's `envoy.lb` metadata (a roaring-bitmap
//! intersection per label); then the usable ones (EDS health and not
//! ejected) in the best locality tier (same zone, then same region, then
//! any; lowest priority first); with Envoy's 50 % panic threshold (too few
//! usable → all candidates). Then the policy: weighted round robin, power
//! of two choices on active requests over weight, weighted random, or a
//! consistent-hash ring walked to the next usable endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;

use crate::config::{
    ClusterCfg, HostCfg, LbPolicy, OutlierCfg, Resources, RouteTable, SubsetFallback,
};

/// Counters of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Requests in flight.
    pub active: AtomicU32,
    /// Requests sent.
    pub total: AtomicU64,
    /// 5xx responses and local failures.
    pub errors: AtomicU64,
    /// Connect failures.
    pub connect_failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// One upstream endpoint's live state.
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port` dialled.
    pub authority: String,
    /// The same, parsed for request URIs (`None` if it does not parse).
    pub uri_authority: Option<http::uri::Authority>,
    /// The HTTP/1.1 client's view of it: socket address and idle
    /// connections (kept with the rest of this state across updates).
    pub h1: Arc<crate::h1::Endpoint>,
    /// Stats.
    pub stats: EndpointStats,
    outlier: Mutex<Outlier>,
    /// Nanoseconds since the proxy started until which it is ejected (0 = not).
    ejected_until_ns: AtomicU64,
}

/// What an attempt ended with, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response (502–504 also count as gateway errors).
    Status(u16),
    /// The connection could not be made, or was reset / timed out before a response.
    LocalFailure,
}

fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl EndpointState {
    fn new(authority: &str) -> Self {
        EndpointState {
            authority: authority.to_string(),
            uri_authority: authority.parse().ok(),
            h1: Arc::new(crate::h1::Endpoint::new(authority)),
            stats: EndpointStats::default(),
            outlier: Mutex::new(Outlier::default()),
            ejected_until_ns: AtomicU64::new(0),
        }
    }

    /// Whether outlier detection has this endpoint ejected now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ns.load(Relaxed);
        until != 0 && now_ns() < until
    }
}

/// Bucket upper bounds of [`LatencyHistogram`]: (Prometheus `le` label in
/// seconds, bound in microseconds). Envoy's default histogram buckets
/// (0.5 ms to 1 h) with two below them, where a sidecar hop on one host
/// lands.
pub const LATENCY_BOUNDS: [(&str, u64); 21] = [
    ("0.0001", 100),
    ("0.00025", 250),
    ("0.0005", 500),
    ("0.001", 1_000),
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
    ("10", 10_000_000),
    ("30", 30_000_000),
    ("60", 60_000_000),
    ("300", 300_000_000),
    ("600", 600_000_000),
    ("1800", 1_800_000_000),
    ("3600", 3_600_000_000),
];

/// A latency histogram over [`LATENCY_BOUNDS`], at microsecond resolution;
/// recording is three relaxed atomic additions.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket, not cumulative: index `i` counts those at
    /// most `LATENCY_BOUNDS[i]` and above the bound before; the last,
    /// those above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_us: AtomicU64,
}

/// A [`LatencyHistogram`]'s counts as Prometheus exposes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: `cumulative[i]` observations took at most
    /// `LATENCY_BOUNDS[i]`.
    pub cumulative: [u64; LATENCY_BOUNDS.len()],
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Records one observation of `d`.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS.partition_point(|&(_, bound)| bound < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts now (each read on its own: a snapshot taken while
    /// requests complete may be off by those in flight).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; LATENCY_BOUNDS.len()];
        let mut count = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            count += b.load(Relaxed);
            if let Some(c) = cumulative.get_mut(i) {
                *c = count;
            }
        }
        HistogramSnapshot {
            cumulative,
            count,
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// Counters of one cluster (kept across updates by cluster name).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Time of the upstream requests whose response was passed on, from
    /// the attempt's start to the end of the response body (or the
    /// downstream's going away): Envoy's `upstream_rq_time`.
    pub rq_time: LatencyHistogram,
    /// Requests in flight.
    pub active: AtomicU32,
    /// Retries in flight.
    pub active_retries: AtomicU32,
    /// Requests by response class: 1xx..5xx at index 1..5, local failures at 0.
    pub by_class: [AtomicU64; 6],
    /// Retries made.
    pub retries: AtomicU64,
    /// Attempts that timed out.
    pub timeouts: AtomicU64,
    /// Connect failures.
    pub connect_failures: AtomicU64,
    /// Requests refused by a circuit breaker.
    pub overflow: AtomicU64,
    /// Ejections made by outlier detection.
    pub ejections: AtomicU64,
    /// Picks that found no usable endpoint.
    pub no_healthy: AtomicU64,
}

/// A configured endpoint of a cluster with its live state.
#[derive(Debug)]
pub struct Host {
    /// Configuration.
    pub cfg: HostCfg,
    /// Live state.
    pub state: Arc<EndpointState>,
}

/// A cluster as the data path uses it.
#[derive(Debug)]
pub struct Cluster {
    /// Configuration.
    pub cfg: ClusterCfg,
    /// Endpoints.
    pub hosts: Vec<Host>,
    /// Live counters.
    pub stats: Arc<ClusterStats>,
    rr: AtomicUsize,
    /// Cumulative weights over all hosts (fast path).
    cumulative: Vec<u64>,
    /// Weighted round-robin schedule (earliest deadline first, so heavy
    /// endpoints are interleaved, not served in runs); empty when the
    /// weights are equal or the policy is not ROUND_ROBIN.
    schedule: Vec<u32>,
    /// (label key, value) → hosts carrying it.
    subsets: HashMap<(String, String), RoaringBitmap>,
    /// Sorted (hash, host index).
    ring: Vec<(u64, u32)>,
    /// Locality tier per host (0 best) for the proxy's locality.
    tiers: Vec<u8>,
    /// Whether every host is in tier 0 (no locality preference to apply).
    flat: bool,
    /// Upstream HTTP clients (set by the proxy after building).
    pub upstream: std::sync::OnceLock<crate::http::Upstream>,
}

/// Per-request inputs to a pick.
#[derive(Debug, Default)]
pub struct PickCtx<'a> {
    /// Hash of the route's hash-policy header value, for RING_HASH.
    pub hash: Option<u64>,
    /// Subset labels the route asks for (sorted).
    pub subset: &'a [(String, String)],
    /// Endpoint to avoid (the previous attempt's), when others exist.
    pub avoid: Option<&'a Arc<EndpointState>>,
}

/// 64-bit FNV-1a; stable across processes (ring positions, hash keys).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalise (splitmix) so nearby inputs spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Cluster {
    /// Builds a cluster, reusing endpoint state from `old` where the
    /// `host:port` is the same.
    pub fn build(
        cfg: ClusterCfg,
        hosts: Vec<HostCfg>,
        old: Option<&Cluster>,
        local: &(String, String, String),
    ) -> Cluster {
        let mut prev: HashMap<&str, &Arc<EndpointState>> = HashMap::new();
        if let Some(old) = old {
            for h in &old.hosts {
                prev.insert(h.state.authority.as_str(), &h.state);
            }
        }
        let hosts: Vec<Host> = hosts
            .into_iter()
            .map(|cfg| {
                let state = prev.get(cfg.authority.as_str()).map_or_else(
                    || Arc::new(EndpointState::new(&cfg.authority)),
                    |s| Arc::clone(s),
                );
                Host { cfg, state }
            })
            .collect();
        let mut acc = 0u64;
        let cumulative = hosts
            .iter()
            .map(|h| {
                acc += u64::from(h.cfg.weight);
                acc
            })
            .collect();
        let mut subsets: HashMap<(String, String), RoaringBitmap> = HashMap::new();
        if cfg.subset.is_some() {
            for (i, h) in hosts.iter().enumerate() {
                for kv in &h.cfg.labels {
                    subsets.entry(kv.clone()).or_default().insert(i as u32);
                }
            }
        }
        let uniform = hosts.windows(2).all(|w| w[0].cfg.weight == w[1].cfg.weight);
        let schedule = if cfg.lb == LbPolicy::RoundRobin && !uniform {
            wrr_schedule(&hosts)
        } else {
            Vec::new()
        };
        let ring = if cfg.lb == LbPolicy::RingHash {
            build_ring(&hosts, cfg.ring_size)
        } else {
            Vec::new()
        };
        let tiers: Vec<u8> = hosts
            .iter()
            .map(|h| {
                let l = &h.cfg.locality;
                let no_local = local.0.is_empty() && local.1.is_empty();
                let loc = if no_local || (l.0 == local.0 && l.1 == local.1) {
                    0
                } else if l.0 == local.0 {
                    1
                } else {
                    2
                };
                let prio = h.cfg.priority.min(20) as u8;
                prio * 3 + loc
            })
            .collect();
        let flat = tiers.iter().all(|t| *t == 0);
        let stats = old.map_or_else(Arc::default, |o| Arc::clone(&o.stats));
        Cluster {
            cfg,
            hosts,
            stats,
            rr: AtomicUsize::new(old.map_or(0, |o| o.rr.load(Relaxed))),
            cumulative,
            schedule,
            subsets,
            ring,
            tiers,
            flat,
            upstream: std::sync::OnceLock::new(),
        }
    }

    fn usable(&self, i: usize) -> bool {
        let h = &self.hosts[i];
        h.cfg.healthy && !h.state.is_ejected()
    }

    /// Picks an endpoint, or `None` when the cluster (or subset) has none.
    pub fn pick(&self, ctx: &PickCtx<'_>) -> Option<&Host> {
        if self.hosts.is_empty() {
            return None;
        }
        // Fast path: no subset, one locality tier, every host usable.
        if ctx.subset.is_empty()
            && self.flat
            && ctx.avoid.is_none()
            && (0..self.hosts.len()).all(|i| self.usable(i))
        {
            let i = self.pick_all(ctx);
            return Some(&self.hosts[i]);
        }
        let mut cands: Vec<u32> = match (ctx.subset.is_empty(), self.cfg.subset) {
            (false, Some(fallback)) => {
                let mut bm: Option<RoaringBitmap> = None;
                for kv in ctx.subset {
                    let s = self.subsets.get(kv).cloned().unwrap_or_default();
                    bm = Some(match bm {
                        None => s,
                        Some(b) => b & s,
                    });
                }
                let v: Vec<u32> = bm.unwrap_or_default().iter().collect();
                if v.is_empty() {
                    match fallback {
                        SubsetFallback::None => return None,
                        SubsetFallback::Any => (0..self.hosts.len() as u32).collect(),
                    }
                } else {
                    v
                }
            }
            _ => (0..self.hosts.len() as u32).collect(),
        };
        let usable: Vec<u32> = cands
            .iter()
            .copied()
            .filter(|i| self.usable(*i as usize))
            .collect();
        // Panic threshold (50 %): too few usable endpoints → use them all.
        if usable.len() * 2 >= cands.len() && !usable.is_empty() {
            cands = usable;
        } else {
            self.stats
                .no_healthy
                .fetch_add(u64::from(usable.is_empty()), Relaxed);
        }
        if !self.flat {
            let best = cands
                .iter()
                .map(|i| self.tiers[*i as usize])
                .min()
                .unwrap_or(0);
            cands.retain(|i| self.tiers[*i as usize] == best);
        }
        if let Some(avoid) = ctx.avoid {
            if cands.len() > 1 {
                cands.retain(|i| !Arc::ptr_eq(&self.hosts[*i as usize].state, avoid));
            }
        }
        let i = self.pick_among(&cands, ctx)?;
        Some(&self.hosts[i])
    }

    fn weight(&self, i: usize) -> u64 {
        u64::from(self.hosts[i].cfg.weight)
    }

    /// Pick over every host (all usable).
    fn pick_all(&self, ctx: &PickCtx<'_>) -> usize {
        let n = self.hosts.len();
        let total = *self.cumulative.last().unwrap_or(&1);
        let uniform = total == n as u64;
        match self.cfg.lb {
            LbPolicy::RoundRobin => {
                let c = self.rr.fetch_add(1, Relaxed);
                if self.schedule.is_empty() {
                    c % n
                } else {
                    self.schedule[c % self.schedule.len()] as usize
                }
            }
            LbPolicy::Random => {
                if uniform {
                    fastrand::usize(..n)
                } else {
                    let r = fastrand::u64(..total);
                    self.cumulative.partition_point(|cw| *cw <= r)
                }
            }
            LbPolicy::LeastRequest => {
                if n == 1 {
                    return 0;
                }
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                self.less_loaded(a, b)
            }
            LbPolicy::RingHash => self
                .ring_pick(ctx.hash.unwrap_or_else(|| fastrand::u64(..)), |_| true)
                .unwrap_or(0),
        }
    }

    fn less_loaded(&self, a: usize, b: usize) -> usize {
        // Compare active/weight without division.
        let la = u64::from(self.hosts[a].state.stats.active.load(Relaxed)) * self.weight(b);
        let lb = u64::from(self.hosts[b].state.stats.active.load(Relaxed)) * self.weight(a);
        if lb < la {
            b
        } else {
            a
        }
    }

    fn pick_among(&self, cands: &[u32], ctx: &PickCtx<'_>) -> Option<usize> {
        if cands.is_empty() {
            return None;
        }
        if cands.len() == 1 {
            return Some(cands[0] as usize);
        }
        let total: u64 = cands.iter().map(|i| self.weight(*i as usize)).sum();
        let by_weight = |r: u64| {
            let mut acc = 0;
            for i in cands {
                acc += self.weight(*i as usize);
                if r < acc {
                    return *i as usize;
                }
            }
            cands[cands.len() - 1] as usize
        };
        Some(match self.cfg.lb {
            LbPolicy::RoundRobin => {
                // The schedule's slot when it is a candidate; otherwise a
                // weighted random candidate (giving the slot to the next
                // candidate in the schedule would favour some).
                let c = self.rr.fetch_add(1, Relaxed);
                if self.schedule.is_empty() {
                    let uniform = cands
                        .iter()
                        .all(|i| self.weight(*i as usize) == self.weight(cands[0] as usize));
                    if uniform {
                        return Some(cands[c % cands.len()] as usize);
                    }
                    return Some(by_weight(fastrand::u64(..total)));
                }
                let slot = self.schedule[c % self.schedule.len()];
                if cands.binary_search(&slot).is_ok() {
                    slot as usize
                } else {
                    by_weight(fastrand::u64(..total))
                }
            }
            LbPolicy::Random => by_weight(fastrand::u64(..total)),
            LbPolicy::LeastRequest => {
                let a = fastrand::usize(..cands.len());
                let mut b = fastrand::usize(..cands.len() - 1);
                if b >= a {
                    b += 1;
                }
                self.less_loaded(cands[a] as usize, cands[b] as usize)
            }
            LbPolicy::RingHash => {
                let set: std::collections::HashSet<u32> = cands.iter().copied().collect();
                self.ring_pick(ctx.hash.unwrap_or_else(|| fastrand::u64(..)), |i| {
                    set.contains(&i)
                })?
            }
        })
    }

    fn ring_pick(&self, hash: u64, ok: impl Fn(u32) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(h, _)| *h < hash);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1)
            .find(|i| ok(*i))
            .map(|i| i as usize)
    }

    /// Records an attempt's outcome for outlier detection; returns true
    /// when it ejected the endpoint.
    pub fn record(&self, state: &EndpointState, outcome: Outcome) -> bool {
        let Some(od) = &self.cfg.outlier else {
            return false;
        };
        let eject = {
            let mut o = state.outlier.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Outcome::Success => {
                    o.consecutive_5xx = 0;
                    o.consecutive_gateway = 0;
                    false
                }
                Outcome::Status(s) => {
                    o.consecutive_5xx += 1;
                    if matches!(s, 502..=504) {
                        o.consecutive_gateway += 1;
                    } else {
                        o.consecutive_gateway = 0;
                    }
                    o.consecutive_5xx >= od.consecutive_5xx.max(1)
                        || o.consecutive_gateway >= od.consecutive_gateway.max(1)
                }
                Outcome::LocalFailure => {
                    o.consecutive_5xx += 1;
                    o.consecutive_gateway += 1;
                    o.consecutive_5xx >= od.consecutive_5xx.max(1)
                        || o.consecutive_gateway >= od.consecutive_gateway.max(1)
                }
            }
        };
        if eject && !state.is_ejected() && self.may_eject(od) {
            let mut o = state.outlier.lock().unwrap_or_else(|p| p.into_inner());
            o.times_ejected = o.times_ejected.saturating_add(1);
            let d = (od.base_ejection * o.times_ejected).min(od.max_ejection.max(od.base_ejection));
            let until = Instant::now() + d;
            o.ejected_until = Some(until);
            o.consecutive_5xx = 0;
            o.consecutive_gateway = 0;
            state
                .ejected_until_ns
                .store(now_ns() + d.as_nanos() as u64, Relaxed);
            self.stats.ejections.fetch_add(1, Relaxed);
            tracing::info!(cluster = %self.cfg.name, endpoint = %state.authority, for_ms = d.as_millis() as u64, "outlier detection ejected an endpoint");
            return true;
        }
        false
    }

    fn may_eject(&self, od: &OutlierCfg) -> bool {
        let ejected = self.hosts.iter().filter(|h| h.state.is_ejected()).count();
        // Envoy: always allow one ejection, even when the percentage rounds to zero.
        ejected == 0 || (ejected + 1) * 100 <= self.hosts.len() * od.max_ejection_percent as usize
    }
}

/// Earliest-deadline-first schedule over the weights: each endpoint
/// appears `weight` times (weights scaled so the schedule has at most
/// 65,536 slots, each at least 1), spread out rather than in runs
/// (the same construction as the SDK's round robin).
fn wrr_schedule(hosts: &[Host]) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let total: u64 = hosts.iter().map(|h| u64::from(h.cfg.weight)).sum();
    let cap = 65_536u64.max(hosts.len() as u64);
    let weights: Vec<u64> = hosts
        .iter()
        .map(|h| {
            let w = u64::from(h.cfg.weight);
            if total > cap {
                (w * cap / total).max(1)
            } else {
                w
            }
        })
        .collect();
    let len: u64 = weights.iter().sum();
    let n = weights.len() as u128;
    // Turn t (from 1) of endpoint i (of n) is due at (t - 1 + (i + ½)/n) / w:
    // the phase offsets keep endpoints of equal weight apart.
    let due = |i: usize, t: u64| {
        let num = (u128::from(t - 1) * 2 * n + 2 * i as u128 + 1) * u128::from(len);
        (num << 16) / (2 * n * u128::from(weights[i]))
    };
    let mut heap: BinaryHeap<Reverse<(u128, u32, u64)>> = (0..weights.len())
        .map(|i| Reverse((due(i, 1), i as u32, 1)))
        .collect();
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let Some(Reverse((_, i, t))) = heap.pop() else {
            break;
        };
        out.push(i);
        heap.push(Reverse((due(i as usize, t + 1), i, t + 1)));
    }
    out
}

fn build_ring(hosts: &[Host], min_size: usize) -> Vec<(u64, u32)> {
    let total: u64 = hosts
        .iter()
        .map(|h| u64::from(h.cfg.weight))
        .sum::<u64>()
        .max(1);
    let size = min_size.max(hosts.len()).min(1 << 23);
    let mut ring = Vec::with_capacity(size + hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let n = ((size as u64 * u64::from(h.cfg.weight)).div_ceil(total)).max(1);
        for k in 0..n {
            ring.push((
                hash64(format!("{}_{k}", h.cfg.authority).as_bytes()),
                i as u32,
            ));
        }
    }
    ring.sort_unstable();
    ring
}

/// What the data path reads: every route table and cluster.
#[derive(Debug, Default)]
pub struct Runtime {
    /// Route tables by name (RDS and listener-inline).
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
}

impl Runtime {
    /// Closes the expired and upstream-closed idle HTTP/1.1 connections of
    /// every endpoint ([`crate::h1::Endpoint::sweep`]); returns how many.
    pub fn sweep_pools(&self) -> usize {
        self.clusters
            .values()
            .flat_map(|c| &c.hosts)
            .map(|h| h.state.h1.sweep())
            .sum()
    }

    /// Builds the runtime from the accepted resources, reusing the state of
    /// `old`'s clusters and endpoints.
    pub fn build(res: &Resources, old: &Runtime, local: &(String, String, String)) -> Runtime {
        let mut routes: HashMap<String, Arc<RouteTable>> = res
            .routes
            .iter()
            .map(|(n, v)| (n.clone(), Arc::clone(&v.value)))
            .collect();
        for l in res.listeners.values() {
            if let Some(http) = &l.value.http {
                if let Some(inline) = &http.inline_routes {
                    routes.insert(http.route_name.clone(), Arc::clone(&inline.table));
                }
            }
        }
        let clusters = res
            .clusters
            .iter()
            .map(|(name, c)| {
                let hosts = match &c.value.eds_name {
                    Some(eds) => res
                        .endpoints
                        .get(eds)
                        .map(|v| v.value.clone())
                        .unwrap_or_default(),
                    None => c.value.static_hosts.clone(),
                };
                let old = old.clusters.get(name).map(Arc::as_ref);
                (
                    name.clone(),
                    Arc::new(Cluster::build(c.value.clone(), hosts, old, local)),
                )
            })
            .collect();
        Runtime { routes, clusters }
    }
}

/// Exponential backoff between retries: 25 ms × 2^n, capped at 250 ms, with full jitter.
pub fn retry_backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(4);
    Duration::from_millis(fastrand::u64(0..=base.min(250)))
}

#[cfg(test)]
mod tests;
