//! Benchmarks and load generators for meshreg; results are recorded in
//! BENCHMARKS.md with the command and machine that produced them.
//!
//! Layout:
//! - `benches/index.rs`, `benches/apply.rs`: criterion benchmarks of the
//!   subset index and the state machine.
//! - `src/bin/register_load.rs`: end-to-end registration load against a
//!   running meshreg over gRPC.
//! - `nacos-load/` (outside the workspace): the same load against a Nacos
//!   server through the `nacos-sdk` crate.
//! - `e2e-register.sh`: runs both, in one run, and prints the ratio.
//! - [`LatencyStats`]: the summary both load generators print.
//! - [`workload`]: deterministic synthetic registrations with a realistic
//!   label mix, used by the criterion benches.

pub mod workload;

use std::time::Duration;

/// Throughput and latency summary of a load run, printed as one JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyStats {
    /// Requests completed.
    pub requests: usize,
    /// Instances registered.
    pub instances: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Median request latency, ms.
    pub p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
}

impl LatencyStats {
    /// Summarizes per-request latencies.
    pub fn from_samples(mut samples: Vec<Duration>, instances: usize, wall: Duration) -> Self {
        samples.sort_unstable();
        let pct = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        Self {
            requests: samples.len(),
            instances,
            seconds: wall.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }

    /// One JSON line: `{"target":..,"instances_per_s":..,...}`.
    pub fn json_line(&self, target: &str, concurrency: usize, batch: usize) -> String {
        format!(
            "{{\"target\":\"{target}\",\"concurrency\":{concurrency},\"batch\":{batch},\"requests\":{},\"instances\":{},\"seconds\":{:.3},\"instances_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
            self.requests,
            self.instances,
            self.seconds,
            self.instances as f64 / self.seconds.max(1e-9),
            self.p50_ms,
            self.p99_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let st = LatencyStats::from_samples(s, 100, Duration::from_secs(2));
        assert_eq!(st.p50_ms.round(), 51.0);
        assert_eq!(st.p99_ms.round(), 99.0);
        assert!(st.json_line("x", 1, 1).contains("\"instances_per_s\":50"));
    }
}
