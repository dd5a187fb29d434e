//! meshreg's xDS control plane: translates the registry view into Envoy
//! resources and serves them over ADS, state-of-the-world and delta, to
//! proxyless gRPC clients, Envoy-style sidecars and the SDK.
//!
//! The same ADS server is an MCP-over-xDS source for istiod: it serves
//! `networking.istio.io/v1alpha3/ServiceEntry` ([`mcp`]). On the leader it
//! also imports other registries ([`sink`]: MCP sources, and ZooKeeper and
//! etcd through `meshreg-adapters`). The bundled sidecar's listeners,
//! routes and inbound clusters are built from their names ([`sidecar`]); the
//! sidecar itself (`meshreg-proxy`) is another crate.
//!
//! Layout:
//! - [`resources`]: resource types, names and the translation (docs/xds.md).
//! - [`sidecar`]: the sidecar's listeners, routes and inbound clusters (`sidecar|…`, `inbound|…`).
//! - [`cache`]: built resources shared by all streams, invalidated per app/service.
//! - [`protocol`]: the per-stream SotW and delta protocol, sans I/O.
//! - [`sink`]: sources (MCP, ZooKeeper, etcd) written as each source's records.
//! - [`server`]: the ADS server, debouncer, client list and metrics.
//! - [`config`]: the `[xds]` settings.
//! - [`mcp`]: the registry view as Istio ServiceEntries for MCP-over-xDS (docs/mcp.md).

pub mod cache;
pub mod config;
pub mod mcp;
pub mod protocol;
pub mod resources;
pub mod server;
pub mod sidecar;
pub mod sink;
