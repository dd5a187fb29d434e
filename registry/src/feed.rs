//! The watch feed: a bounded ring of the most recent instance changes, in
//! revision order. Watchers read it from their own cursor; one whose cursor
//! has been overwritten gets a full resync instead of an ever-growing
//! buffer (DESIGN.md, "Consistency and liveness").

use std::collections::VecDeque;
use std::sync::Arc;

use crate::model::{Instance, ServiceDef};

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Removed (deregistered, session expired or revoked, namespace gone).
    Delete,
}

/// One change, as recorded at apply time.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    /// Registry revision of the command that made the change.
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// The instance after a put, or as it was before a delete.
    pub instance: Arc<Instance>,
    /// Services of `instance.revision`.
    pub services: Arc<[ServiceDef]>,
    /// For a put that replaced an instance: its previous state and services.
    pub previous: Option<(Arc<Instance>, Arc<[ServiceDef]>)>,
}

/// Bounded ring of [`FeedEvent`]s.
#[derive(Debug)]
pub struct Feed {
    events: VecDeque<FeedEvent>,
    capacity: usize,
    /// Events at or below this revision may be missing from the ring.
    compacted_through: u64,
}

impl Feed {
    /// An empty feed holding at most `capacity` events, complete after `revision`.
    pub fn new(capacity: usize, revision: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            compacted_through: revision,
        }
    }

    /// Appends an event, dropping the oldest one when full.
    pub fn push(&mut self, ev: FeedEvent) {
        if self.events.len() == self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.compacted_through = old.revision;
            }
        }
        self.events.push_back(ev);
    }

    /// The events after revision `after`, or `None` when some of them were
    /// already dropped and the reader must resync.
    pub fn since(&self, after: u64) -> Option<impl Iterator<Item = &FeedEvent>> {
        if after < self.compacted_through {
            return None;
        }
        let start = self.events.partition_point(|e| e.revision <= after);
        Some(self.events.range(start..))
    }

    /// Forgets everything: after a snapshot install, the feed restarts at `revision`.
    pub fn reset(&mut self, revision: u64) {
        self.events.clear();
        self.compacted_through = revision;
    }

    /// Number of retained events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when no events are retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}
