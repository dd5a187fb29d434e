//! Runs a registry adapter (ZooKeeper, etcd, Nacos) as a source: the adapter
//! keeps its catalog current with the registry's watches; bursts of
//! changes are debounced ([`QUIET`] of quiet, at most [`MAX_DELAY`] after
//! the first change) and the whole catalog is then written as one
//! `SyncSource`, so a source of 100k records is not rewritten per event.

use std::sync::Arc;
use std::time::Duration;

use meshreg_adapters::catalog::Records;
use meshreg_adapters::feed::Feed;
use meshreg_adapters::{etcd, nacos, zookeeper};
use meshreg_registry::node::Node;
use tokio::time::Instant;

use super::{apply_sync, Sinks, SourceConfig, SourceKind};

/// Quiet period after the last change before a write.
pub const QUIET: Duration = Duration::from_millis(100);

/// Longest a change waits for a write while changes keep coming.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// How often the records are written again while the source's namespace
/// does not exist here, so that they appear soon after it is created.
pub const NAMESPACE_RECHECK: Duration = Duration::from_secs(2);

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
                let records = tokio::task::spawn_blocking(move || f.records(&ns, &name))
                    .await
                    .map_err(|e| format!("mapping the catalog: {e}"))?;
                if let Some(Records { records, mut quarantined }) = records {
                    let ns = src.local_namespace();
                    if !node.shared().read().registry.has_namespace(ns) {
                        let why = format!(
                            "namespace {ns:?} does not exist here; create it or set the source's `namespace`"
                        );
                        for r in &records {
                            quarantined.push((r.instance.key().to_string(), why.clone()));
                        }
                        apply_sync(node, src, sinks, Vec::new(), quarantined).await?;
                        recheck = Some(Instant::now() + NAMESPACE_RECHECK);
                    } else {
                        apply_sync(node, src, sinks, records, quarantined).await?;
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
