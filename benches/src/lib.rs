//! Benchmarks and load generators for meshreg. Figures are recorded in
//! `BENCHMARKS.md` at the workspace root, with the commands that produce them.
//!
//! The criterion benches in `benches/` measure the sans-I/O registry core
//! (subset index, state machine apply); they do no network or disk I/O.
//!
//! Layout:
//! - [`workload`]: deterministic synthetic registrations with a realistic
//!   label mix, shared by the benches.

pub mod workload;
