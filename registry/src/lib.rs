//! meshreg's registry: the application-level model, the roaring-bitmap
//! subset index, the Raft state machine stored in sled, sessions (leases),
//! the watch feed, and the gRPC + HTTP APIs served by the `meshreg` binary.
//!
//! It does not translate to xDS or talk to other registries; those are the
//! `meshreg-xds` and `meshreg-mcp` crates.
//!
//! Layout:
//! - [`model`]: domain types and [`model::validate`].
//! - [`selector`]: subset selectors and the Kubernetes selector syntax.
//! - [`index`]: roaring-bitmap subset index.
//! - [`feed`]: bounded change feed for watchers.
//! - [`command`]: Raft log commands and their responses.
//! - [`state`]: the registry state and its deterministic apply (sans-I/O).
//! - [`error`]: the crate's error type.

pub mod command;
pub mod error;
pub mod feed;
pub mod index;
pub mod model;
pub mod selector;
pub mod state;
