//! Watch streams: the current matching state, then every change after it,
//! in revision order (DESIGN.md "Revisions and watch").
//!
//! [`Watcher`] is the sans-I/O cursor over the [`crate::feed::Feed`];
//! [`spawn`] runs one on a task and hands messages out through a bounded
//! channel. A client that reads slowly makes only its own task wait; if the
//! feed moves past its cursor meanwhile it gets a resync, so memory never
//! grows with a slow client.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::feed::EventKind;
use crate::model::Instance;
use crate::node::Node;
use crate::selector::Selector;
use crate::state::Registry;

/// One change as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    /// `PUT` or `DELETE`.
    #[serde(serialize_with = "ser_kind")]
    pub kind: EventKind,
    /// The instance (its last state, for a delete).
    pub instance: Arc<Instance>,
}

fn ser_kind<S: serde::Serializer>(k: &EventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match k {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    })
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchMessage {
    /// Registry revision after these events.
    pub revision: u64,
    /// The events are the whole matching state: replace the view with them.
    pub resync: bool,
    /// More messages for the same revision follow.
    pub more: bool,
    /// The events.
    pub events: Vec<WatchEvent>,
}

/// A cursor over the feed for one namespace and selector.
#[derive(Debug)]
pub struct Watcher {
    ns: String,
    sel: Selector,
    cursor: u64,
    started: bool,
    /// Resyncs after falling behind (not counting the initial state).
    pub resyncs: u64,
}

/// What [`Watcher::poll`] returns: events at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Registry revision the batch brings the client to.
    pub revision: u64,
    /// Whole state rather than changes.
    pub resync: bool,
    /// The events.
    pub events: Vec<WatchEvent>,
}

impl Watcher {
    /// A watcher of `ns` and `sel`: from the current state when
    /// `from_revision` is 0, else from the changes after `from_revision`.
    pub fn new(ns: String, sel: Selector, from_revision: u64) -> Self {
        Self {
            ns,
            sel,
            cursor: from_revision,
            started: from_revision != 0,
            resyncs: 0,
        }
    }

    fn resync(&mut self, reg: &Registry) -> WatchBatch {
        self.cursor = reg.revision();
        WatchBatch {
            revision: self.cursor,
            resync: true,
            events: reg
                .list(&self.ns, &self.sel)
                .into_iter()
                .map(|instance| WatchEvent {
                    kind: EventKind::Put,
                    instance,
                })
                .collect(),
        }
    }

    /// The next batch, or `None` when nothing this watcher sees changed.
    pub fn poll(&mut self, reg: &Registry) -> Option<WatchBatch> {
        if !self.started {
            self.started = true;
            return Some(self.resync(reg));
        }
        let now = reg.revision();
        if now <= self.cursor {
            return None;
        }
        let Some(changes) = reg.feed().since(self.cursor) else {
            self.resyncs += 1;
            return Some(self.resync(reg));
        };
        let mut events = Vec::new();
        for ev in changes {
            if ev.instance.namespace != self.ns {
                continue;
            }
            match ev.kind {
                EventKind::Put => {
                    if self.sel.matches(&ev.instance, &ev.services) {
                        events.push(WatchEvent {
                            kind: EventKind::Put,
                            instance: ev.instance.clone(),
                        });
                    } else if let Some((prev, prev_services)) = &ev.previous {
                        // It moved out of the selector.
                        if self.sel.matches(prev, prev_services) {
                            events.push(WatchEvent {
                                kind: EventKind::Delete,
                                instance: prev.clone(),
                            });
                        }
                    }
                }
                EventKind::Delete => {
                    if self.sel.matches(&ev.instance, &ev.services) {
                        events.push(WatchEvent {
                            kind: EventKind::Delete,
                            instance: ev.instance.clone(),
                        });
                    }
                }
            }
        }
        self.cursor = now;
        (!events.is_empty()).then_some(WatchBatch {
            revision: now,
            resync: false,
            events,
        })
    }
}

/// Splits a batch into messages of at most `max` events (an empty resync
/// still yields one message).
pub fn chunk(batch: WatchBatch, max: usize) -> Vec<WatchMessage> {
    let WatchBatch {
        revision,
        resync,
        events,
    } = batch;
    if events.is_empty() {
        return vec![WatchMessage {
            revision,
            resync,
            more: false,
            events,
        }];
    }
    let n = events.len().div_ceil(max.max(1));
    let mut it = events.into_iter();
    (0..n)
        .map(|i| WatchMessage {
            revision,
            // Only the first chunk replaces the view; the rest add to it.
            resync: resync && i == 0,
            more: i + 1 < n,
            events: it.by_ref().take(max.max(1)).collect(),
        })
        .collect()
}

struct WatcherGauge(Arc<Node>);

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        self.0.metrics.watchers.dec();
    }
}

/// Runs a watcher on its own task. Messages arrive on the returned bounded
/// receiver; dropping it ends the task.
pub fn spawn(
    node: Arc<Node>,
    ns: String,
    sel: Selector,
    from_revision: u64,
) -> mpsc::Receiver<WatchMessage> {
    let cfg = node.config().watch.clone();
    let (tx, rx) = mpsc::channel(cfg.stream_buffer);
    tokio::spawn(async move {
        node.metrics.watchers.inc();
        let _gauge = WatcherGauge(node.clone());
        let mut w = Watcher::new(ns, sel, from_revision);
        let mut revisions = node.shared().subscribe();
        let mut shutdown = node.shutdown_signal();
        loop {
            let before = w.resyncs;
            let batch = {
                let s = node.shared().read();
                w.poll(&s.registry)
            };
            if w.resyncs > before {
                node.metrics.watch_resyncs.inc();
            }
            if let Some(b) = batch {
                for msg in chunk(b, cfg.max_events_per_message) {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                r = revisions.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::model::{validate, InstanceKey, InstanceSpec};
    use crate::selector::Requirement;

    fn put(r: &mut Registry, id: &str, env: &str) {
        let spec = InstanceSpec {
            namespace: "default".into(),
            app: "pay".into(),
            id: id.into(),
            address: "10.0.0.1".into(),
            ports: [("http".to_string(), 80)].into_iter().collect(),
            labels: [("env".to_string(), env.to_string())].into_iter().collect(),
            ..Default::default()
        };
        r.apply(&Command::Register {
            entries: vec![validate::registration("i", spec).unwrap()],
        });
    }

    fn kinds(b: &WatchBatch) -> Vec<(EventKind, String)> {
        b.events
            .iter()
            .map(|e| (e.kind, e.instance.id.clone()))
            .collect()
    }

    #[test]
    fn initial_state_then_changes_in_order() {
        let mut r = Registry::new(100);
        put(&mut r, "a", "prod");
        let sel = Selector {
            labels: vec![Requirement::In("env".into(), vec!["prod".into()])],
            ..Default::default()
        };
        let mut w = Watcher::new("default".into(), sel, 0);
        let first = w.poll(&r).unwrap();
        assert!(first.resync);
        assert_eq!(kinds(&first), vec![(EventKind::Put, "a".into())]);
        assert_eq!(w.poll(&r), None);
        put(&mut r, "b", "prod");
        put(&mut r, "c", "dev");
        put(&mut r, "a", "dev"); // moves out of the selector
        r.apply(&Command::Deregister {
            keys: vec![InstanceKey {
                namespace: "default".into(),
                app: "pay".into(),
                id: "b".into(),
            }],
        });
        let next = w.poll(&r).unwrap();
        assert!(!next.resync);
        assert_eq!(
            kinds(&next),
            vec![
                (EventKind::Put, "b".into()),
                (EventKind::Delete, "a".into()),
                (EventKind::Delete, "b".into())
            ]
        );
        assert_eq!(next.revision, r.revision());
    }

    #[test]
    fn falling_behind_the_feed_resyncs() {
        let mut r = Registry::new(2);
        put(&mut r, "a", "prod");
        let mut w = Watcher::new("default".into(), Selector::default(), r.revision());
        for i in 0..5 {
            put(&mut r, &format!("x{i}"), "prod");
        }
        let b = w.poll(&r).unwrap();
        assert!(b.resync);
        assert_eq!(b.events.len(), 6);
        assert_eq!(w.resyncs, 1);
    }

    #[test]
    fn chunks_mark_more() {
        let mut r = Registry::new(100);
        for i in 0..5 {
            put(&mut r, &format!("x{i}"), "prod");
        }
        let mut w = Watcher::new("default".into(), Selector::default(), 0);
        let msgs = chunk(w.poll(&r).unwrap(), 2);
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs.iter()
                .map(|m| (m.resync, m.more, m.events.len()))
                .collect::<Vec<_>>(),
            vec![(true, true, 2), (false, true, 2), (false, false, 1)]
        );
    }
}
