//! Runs a registry adapter (ZooKeeper, etcd, Nacos) as a source: the adapter
//! keeps its catalog current with the registry's watches; bursts of
//! changes are debounced ([`QUIET`] of quiet, at most [`MAX_DELAY`] after
//! the first change) and then written through Raft: the whole catalog as
//! one `SyncSourceRanked` the first time in a run (and every
//! [`FULL_SYNC_EVERY`]), otherwise only the records that changed since the
//! last write, as one `SyncSourceDelta`, so that one change in a source of
//! 100k records writes one record, not 100k.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use meshreg_adapters::catalog::Records;
use meshreg_adapters::feed::Feed;
use meshreg_adapters::{etcd, nacos, zookeeper};
use meshreg_registry::command::Command;
use meshreg_registry::model::{InstanceKey, Registration};
use meshreg_registry::node::Node;
use tokio::time::Instant;

use super::{apply_sync, apply_write, Sinks, SourceConfig, SourceKind};

/// Quiet period after the last change before a write.
pub const QUIET: Duration = Duration::from_millis(100);

/// Longest a change waits for a write while changes keep coming.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// How often the records are written again while the source's namespace
/// does not exist here, so that they appear soon after it is created.
pub const NAMESPACE_RECHECK: Duration = Duration::from_secs(2);

/// How often an adapter source writes its whole set although a delta
/// would do, so that anything the registry lost of it outside the source's
/// own writes (a deleted and re-created namespace) comes back.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(600);

/// A record's fingerprint: a hash of its Raft encoding. Records read again
/// unchanged keep their provenance, so their fingerprint too.
fn fingerprint(r: &Registration) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(&postcard::to_allocvec(r).unwrap_or_default());
    h.finish()
}

/// What the registry holds of a source, as this run last wrote it.
#[derive(Debug)]
struct Written {
    /// Fingerprint of every record the registry took (backing or shadowed).
    records: HashMap<InstanceKey, u64>,
    /// When the whole set was last written.
    full_at: Instant,
}

/// One write of an adapter source: `SyncSourceDelta` against `written`
/// when there is one (and it is not time for a full write), else the whole
/// set; `written` then describes what the registry holds, or is `None`
/// when that is not known (a failed write: the next one is whole).
async fn write_records(
    node: &Node,
    src: &SourceConfig,
    sinks: &Sinks,
    records: Vec<(Registration, u64)>,
    quarantined: Vec<(String, String)>,
    written: &mut Option<Written>,
) -> Result<(), String> {
    let total = records.len();
    let now = Instant::now();
    let mut fingerprints: HashMap<InstanceKey, u64> = records
        .iter()
        .map(|(r, f)| (r.instance.key(), *f))
        .collect();
    let last = written
        .take()
        .filter(|w| now.duration_since(w.full_at) < FULL_SYNC_EVERY);
    let full_at = last.as_ref().map_or(now, |w| w.full_at);
    let cmd = match &last {
        Some(w) => Command::SyncSourceDelta {
            source: src.name.clone(),
            priority: src.priority,
            removed: w
                .records
                .keys()
                .filter(|k| !fingerprints.contains_key(*k))
                .cloned()
                .collect(),
            upserts: records
                .into_iter()
                .filter(|(r, f)| w.records.get(&r.instance.key()) != Some(f))
                .map(|(r, _)| r)
                .collect(),
        },
        None => Command::SyncSourceRanked {
            source: src.name.clone(),
            priority: src.priority,
            records: records.into_iter().map(|(r, _)| r).collect(),
        },
    };
    let rejected = apply_write(node, src, sinks, cmd, total, quarantined).await?;
    // Rejected records are not held: they are sent again with every write
    // until the registry takes them (e.g. once their namespace exists).
    if !rejected.is_empty() {
        let rejected: std::collections::HashSet<String> = rejected.into_iter().collect();
        fingerprints.retain(|key, _| !rejected.contains(&key.to_string()));
    }
    *written = Some(Written {
        records: fingerprints,
        full_at,
    });
    Ok(())
}

/// Quiet-period / maximum-delay debounce, sans I/O.
#[derive(Debug, Clone)]
pub(crate) struct Debounce {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub(crate) fn new(quiet: Duration, max: Duration) -> Self {
        Debounce {
            quiet,
            max,
            first: None,
            last: None,
        }
    }

    /// Something changed at `now`.
    pub(crate) fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to act on the changes seen so far; `None` when there are none.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some((self.last? + self.quiet).min(self.first? + self.max))
    }

    /// The changes are being acted on.
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

/// One run of the adapter: connect, load, follow, writing debounced full
/// sets, until leadership is lost or shutdown (Ok) or the adapter or a
/// write fails (Err).
pub(crate) async fn sync_adapter(
    node: &Arc<Node>,
    src: &SourceConfig,
    sinks: &Sinks,
    feed: &Arc<Feed>,
) -> Result<(), String> {
    let zk = src.zookeeper();
    let et = src.etcd();
    let nc = src.nacos();
    let adapter = async {
        match src.kind {
            SourceKind::Zookeeper => zookeeper::run(&zk, feed).await,
            SourceKind::Etcd => etcd::run(&et, feed).await,
            SourceKind::Nacos => nacos::run(&nc, feed).await,
            SourceKind::Mcp => Ok(()),
        }
    };
    tokio::pin!(adapter);
    // Only what this run loads is written: the catalog of an earlier run
    // (before a reconnect or a leadership change) may be stale.
    let mut generation = feed.subscribe();
    let mut debounce = Debounce::new(QUIET, MAX_DELAY);
    let mut leadership = tokio::time::interval(Duration::from_millis(300));
    let mut shutdown = node.shutdown_signal();
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut recheck: Option<Instant> = None;
    // What this run wrote last; the first write of a run is whole.
    let mut written: Option<Written> = None;
    loop {
        let deadline = debounce.deadline();
        tokio::select! {
            r = &mut adapter => {
                return Err(match r {
                    Err(e) => e.to_string(),
                    Ok(()) => "the adapter stopped".into(),
                });
            }
            changed = generation.changed() => {
                if changed.is_err() {
                    return Err("the adapter's feed closed".into());
                }
                if debounce.deadline().is_none() {
                    sinks.set(&src.name, |s| {
                        if s.state != "synced" {
                            s.state = "syncing";
                        }
                    });
                }
                debounce.changed(Instant::now());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                debounce.clear();
                generation.mark_unchanged();
                let ns = src.local_namespace().to_string();
                let name = src.name.clone();
                let f = feed.clone();
                // Mapping a large catalog takes a while: off the async workers.
                let records = tokio::task::spawn_blocking(move || {
                    f.records(&ns, &name).map(|Records { records, quarantined }| {
                        let records: Vec<(Registration, u64)> = records
                            .into_iter()
                            .map(|r| {
                                let f = fingerprint(&r);
                                (r, f)
                            })
                            .collect();
                        (records, quarantined)
                    })
                })
                .await
                .map_err(|e| format!("mapping the catalog: {e}"))?;
                if let Some((records, mut quarantined)) = records {
                    let ns = src.local_namespace();
                    if !node.shared().read().registry.has_namespace(ns) {
                        let why = format!(
                            "namespace {ns:?} does not exist here; create it or set the source's `namespace`"
                        );
                        for (r, _) in &records {
                            quarantined.push((r.instance.key().to_string(), why.clone()));
                        }
                        written = None;
                        apply_sync(node, src, sinks, Vec::new(), quarantined).await?;
                        recheck = Some(Instant::now() + NAMESPACE_RECHECK);
                    } else {
                        write_records(node, src, sinks, records, quarantined, &mut written).await?;
                    }
                }
            }
            _ = tokio::time::sleep_until(recheck.unwrap_or(far)), if recheck.is_some() => {
                recheck = None;
                debounce.changed(Instant::now());
            }
            _ = leadership.tick() => {
                if !node.is_leader() {
                    return Ok(());
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(100), ms(1000));
        assert_eq!(d.deadline(), None);
        d.changed(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(100)));
        d.changed(t0 + ms(50));
        assert_eq!(d.deadline(), Some(t0 + ms(150)), "quiet restarts");
        for i in 1..=20 {
            d.changed(t0 + ms(60 * i));
        }
        assert_eq!(
            d.deadline(),
            Some(t0 + ms(1000)),
            "bounded by the first change"
        );
        d.clear();
        assert_eq!(d.deadline(), None);
    }
}
