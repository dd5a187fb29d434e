//! Session (lease) liveness, kept in the leader's memory (DESIGN.md,
//! "Consistency and liveness"): keepalives only move a deadline here and
//! are never written to the Raft log. When sessions expire the leader
//! proposes one batched `RevokeSessions` entry.
//!
//! [`LeaseTable`] is the sans-I/O core: it is fed the time, the leader term
//! (if this node leads) and the sessions of the applied state, and returns
//! the ids that expired.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Deadlines of the sessions, on the leader.
#[derive(Debug)]
pub struct LeaseTable {
    deadlines: HashMap<u64, Instant>,
    /// Extra time given to every session when this node becomes leader.
    grace: Duration,
    /// Term in which this node leads, if it does.
    leader_term: Option<u64>,
    /// Until when sessions first seen get `ttl + grace` instead of `ttl`.
    grace_until: Option<Instant>,
}

impl LeaseTable {
    /// A table that grants `grace` on top of the TTL after a leader change.
    pub fn new(grace: Duration) -> Self {
        Self {
            deadlines: HashMap::new(),
            grace,
            leader_term: None,
            grace_until: None,
        }
    }

    /// One check. `leader_term` is `Some(term)` while this node leads;
    /// `sessions` are the (id, ttl_ms) pairs of the applied state. Returns
    /// the ids whose deadline has passed, sorted.
    ///
    /// A node that just became leader (or started a new term) forgets every
    /// deadline and gives each session a full TTL plus the grace, so a
    /// failover never expires sessions whose clients kept alive against the
    /// old leader.
    pub fn tick(
        &mut self,
        now: Instant,
        leader_term: Option<u64>,
        sessions: impl Iterator<Item = (u64, u64)>,
    ) -> Vec<u64> {
        if leader_term != self.leader_term {
            self.deadlines.clear();
            self.leader_term = leader_term;
            self.grace_until = leader_term.map(|_| now + self.grace);
        }
        if leader_term.is_none() {
            return Vec::new();
        }
        let extra = match self.grace_until {
            Some(g) if now < g => self.grace,
            _ => Duration::ZERO,
        };
        let mut seen = HashMap::with_capacity(self.deadlines.len());
        let mut expired = Vec::new();
        for (id, ttl_ms) in sessions {
            let deadline = *self
                .deadlines
                .get(&id)
                .unwrap_or(&(now + Duration::from_millis(ttl_ms) + extra));
            if deadline <= now {
                expired.push(id);
            }
            seen.insert(id, deadline);
        }
        self.deadlines = seen;
        expired.sort_unstable();
        expired
    }

    /// Records a keepalive: the session lives `ttl_ms` from `now`.
    pub fn keepalive(&mut self, now: Instant, id: u64, ttl_ms: u64) {
        self.deadlines
            .insert(id, now + Duration::from_millis(ttl_ms));
    }

    /// Time left before `id` expires, if tracked.
    pub fn remaining(&self, now: Instant, id: u64) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|d| d.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn expires_without_keepalive() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(Duration::ZERO);
        let sessions = || [(1u64, 1000u64), (2, 1000)].into_iter();
        assert!(t.tick(t0, Some(1), sessions()).is_empty());
        t.keepalive(t0 + S / 2, 2, 1000);
        assert_eq!(t.tick(t0 + S, Some(1), sessions()), vec![1]);
        assert!(t
            .tick(t0 + S + S / 4, Some(1), [(2, 1000)].into_iter())
            .is_empty());
        assert_eq!(
            t.tick(t0 + 2 * S, Some(1), [(2, 1000)].into_iter()),
            vec![2]
        );
    }

    #[test]
    fn followers_never_expire() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(Duration::ZERO);
        assert!(t.tick(t0, None, [(1, 1000)].into_iter()).is_empty());
        assert!(t
            .tick(t0 + 10 * S, None, [(1, 1000)].into_iter())
            .is_empty());
    }

    #[test]
    fn new_leader_grants_ttl_plus_grace() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(2 * S);
        // Leader in term 1 has seen session 1 nearly expire...
        t.tick(t0, Some(1), [(1, 1000)].into_iter());
        // ...then leadership moves (term 2) at t0 + 0.9 s.
        let t1 = t0 + S * 9 / 10;
        assert!(t.tick(t1, Some(2), [(1, 1000)].into_iter()).is_empty());
        // Not expired at ttl after the change, because of the grace...
        assert!(t
            .tick(t1 + S + S / 2, Some(2), [(1, 1000)].into_iter())
            .is_empty());
        // ...but expired after ttl + grace.
        assert_eq!(
            t.tick(t1 + 3 * S, Some(2), [(1, 1000)].into_iter()),
            vec![1]
        );
    }

    #[test]
    fn forgets_removed_sessions() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(Duration::ZERO);
        t.tick(t0, Some(1), [(1, 1000)].into_iter());
        t.tick(t0, Some(1), std::iter::empty());
        assert_eq!(t.remaining(t0, 1), None);
    }
}
