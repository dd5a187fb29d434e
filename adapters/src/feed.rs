//! The hand-over between an adapter and the sink: the adapter edits the
//! [`Catalog`] as its watches fire, the sink is told that something
//! changed (a generation counter, so bursts coalesce) and, after its
//! debounce, reads the records of the whole catalog.
//!
//! A full (re)load goes into a separate catalog that replaces the current
//! one only when it is complete ([`Feed::begin_resync`],
//! [`Feed::finish_resync`]): while an adapter reconnects, the sink keeps
//! the last complete state instead of seeing a half-read source (which it
//! would write as deletions).

use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::catalog::{Catalog, Records};

/// Unix time now, ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Default)]
struct Inner {
    current: Catalog,
    pending: Option<Catalog>,
    complete: bool,
}

/// A source's catalog shared between its adapter and the sink.
#[derive(Debug)]
pub struct Feed {
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            inner: Mutex::default(),
            generation: watch::Sender::new(0),
        }
    }
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that sees a new generation after every change to the
    /// complete catalog.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Starts a full load: edits go to a new, empty catalog until
    /// [`Feed::finish_resync`].
    pub fn begin_resync(&self) {
        self.lock().pending = Some(Catalog::default());
    }

    /// Makes the catalog loaded since [`Feed::begin_resync`] the current
    /// one (keeping first-observed times of unchanged entries) and
    /// announces it.
    pub fn finish_resync(&self) {
        let mut g = self.lock();
        if let Some(mut next) = g.pending.take() {
            next.carry_observed_from(&g.current);
            g.current = next;
            g.complete = true;
            drop(g);
            self.bump();
        }
    }

    /// Applies `f` to the catalog being loaded, or to the current one
    /// (announcing the change when `f` returns true).
    pub fn edit(&self, f: impl FnOnce(&mut Catalog) -> bool) -> bool {
        let mut g = self.lock();
        if let Some(p) = g.pending.as_mut() {
            return f(p);
        }
        let changed = f(&mut g.current);
        drop(g);
        if changed {
            self.bump();
        }
        changed
    }

    /// True once a full load has completed.
    pub fn is_complete(&self) -> bool {
        self.lock().complete
    }

    /// The records of the current catalog ([`Catalog::records`]), or
    /// `None` before the first full load completed.
    pub fn records(&self, namespace: &str, source: &str) -> Option<Records> {
        let g = self.lock();
        g.complete.then(|| g.current.records(namespace, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_is_invisible_until_complete_and_keeps_observed_times() {
        let feed = Feed::default();
        let mut rx = feed.subscribe();
        assert!(feed.records("default", "zk").is_none());
        feed.begin_resync();
        feed.edit(|c| {
            c.put_instance(
                "/services/a/1",
                Ok("a"),
                br#"{"address":"10.0.0.1","port":1}"#,
                7,
                1000,
            )
        });
        assert!(
            feed.records("default", "zk").is_none(),
            "half a load is not shown"
        );
        assert!(!rx.has_changed().unwrap());
        feed.finish_resync();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let r = feed.records("default", "zk").unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(
            r.records[0]
                .instance
                .provenance
                .as_ref()
                .unwrap()
                .observed_at_ms,
            1000
        );

        // Reconnect: the old state stays visible while the new one loads;
        // an entry read again at the same revision keeps its time.
        feed.begin_resync();
        feed.edit(|c| {
            c.put_instance(
                "/services/a/1",
                Ok("a"),
                br#"{"address":"10.0.0.1","port":1}"#,
                7,
                5000,
            )
        });
        feed.edit(|c| {
            c.put_instance(
                "/services/a/2",
                Ok("a"),
                br#"{"address":"10.0.0.2","port":1}"#,
                9,
                5000,
            )
        });
        assert_eq!(feed.records("default", "zk").unwrap().records.len(), 1);
        feed.finish_resync();
        let r = feed.records("default", "zk").unwrap();
        let times: Vec<i64> = r
            .records
            .iter()
            .map(|r| r.instance.provenance.as_ref().unwrap().observed_at_ms)
            .collect();
        assert_eq!(times, vec![1000, 5000]);

        // Live edits announce only real changes.
        rx.mark_unchanged();
        assert!(!feed.edit(|c| c.put_instance(
            "/services/a/2",
            Ok("a"),
            br#"{"address":"10.0.0.2","port":1}"#,
            9,
            6000
        )));
        assert!(!rx.has_changed().unwrap());
        assert!(feed.edit(|c| c.remove("/services/a/2")));
        assert!(rx.has_changed().unwrap());
    }
}
