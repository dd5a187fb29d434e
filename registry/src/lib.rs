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
//! - [`store`]: openraft log and state-machine storage on sled.
//! - [`network`]: the Raft transport between nodes (tonic), with fault injection.
//! - [`peer`]: the peer service: Raft RPCs and requests forwarded to the leader.
//! - [`sessions`]: session deadlines kept in the leader's memory.
//! - [`node`]: a running node: Raft, lessor, read and write paths.
//! - [`watch`]: watch streams over the feed.
//! - [`api`]: gRPC and HTTP servers.
//! - [`server`]: runs a node with both APIs on bound listeners until shutdown.
//! - [`config`], [`metrics`], [`error`].

pub mod api;
pub mod command;
pub mod config;
pub mod error;
pub mod feed;
pub mod http2;
pub mod index;
pub mod metrics;
pub mod model;
pub mod network;
pub mod node;
pub mod peer;
pub mod selector;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod watch;
