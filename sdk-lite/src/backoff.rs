//! Capped exponential backoff with jitter, for every reconnect loop.

use std::time::Duration;

/// Delays between attempts: `min · 2ⁿ`, capped at `max`, each drawn
/// uniformly from `[d/2, d]` ("equal jitter") so that clients restarted
/// together do not retry in lockstep. [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(ms / 2..=ms))
    }

    /// Starts over from `min` (call after a successful attempt).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[2] >= Duration::from_millis(200) && d[2] <= Duration::from_millis(400));
        for x in &d[4..] {
            assert!(*x >= Duration::from_millis(500) && *x <= Duration::from_millis(1000));
        }
        // Jitter: many draws at the cap are not all equal.
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 5, "no jitter: {draws:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
