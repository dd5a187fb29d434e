//! meshreg's registry adapters: read another registry with its own
//! watches and hand what it holds to the sink, which writes it through
//! Raft as that source's records (`meshreg_xds::sink`).
//!
//! - ZooKeeper, Dubbo's interface-level layout
//!   (`/dubbo/{interface}/providers/{URL}`) and application-level layout
//!   (`/services/{app}/{host:port}`, `/dubbo/mapping/{interface}`);
//! - etcd, Dubbo's application-level layout (`/services/{app}/{host:port}`);
//! - Nacos, the services of a namespace's groups (through `nacos-sdk`).
//!
//! Each adapter keeps a [`catalog::Catalog`] of the entries it read, by
//! their key in the source; turning a catalog into registrations (grouping
//! provider URLs into application instances, labels, services, validation
//! and quarantine) is a plain function over it. The adapters do not write
//! to the registry, run only while the sink runs them (on the Raft
//! leader), and do not serve MCP themselves (that is the bridge's job).
//!
//! Layout:
//! - [`dubbo`]: Dubbo's formats (provider URL, `ServiceInstance` JSON, mapping), parsed.
//! - [`catalog`]: what a source holds, and its records (docs/mcp.md has the mapping).
//! - [`feed`]: the catalog shared with the sink, with complete-load hand-over.
//! - [`zookeeper`]: the ZooKeeper adapter (watches, session expiry → resync).
//! - [`etcd`]: the etcd adapter (range read + watch, compaction → resync).
//! - [`nacos`]: the Nacos adapter (service list, subscriptions, reads).
//! - [`error`]: why an adapter stopped.

pub mod catalog;
pub mod dubbo;
pub mod error;
pub mod etcd;
pub mod feed;
pub mod nacos;
pub mod zookeeper;

pub use error::Error;
