//! meshreg's lightweight Rust SDK (`sdk-lite`): an application registers
//! itself with the registry and calls other applications by name, either
//! discovering and load-balancing them itself over delta xDS ("direct" or
//! SDK mode) or through its local sidecar, `meshreg-proxy` ("mesh" mode),
//! with the same code.
//!
//! What it does:
//! - **Registration**: grants a session (lease), registers the instance
//!   with it, keeps the session alive over one `KeepAlive` stream per
//!   [`Client`], fails over between registry nodes with capped exponential
//!   backoff and jitter, registers again under a new session when the old
//!   one is lost (`NOT_FOUND`), and revokes the session on
//!   [`Client::shutdown`].
//! - **Discovery**: one delta-ADS stream per [`Client`] for every target it
//!   subscribes to (ClusterLoadAssignments named as in `docs/xds.md`), with
//!   ACK/NACK, `initial_resource_versions` on reconnect, and a
//!   `tokio::sync::watch` channel of complete [`EndpointSet`] snapshots.
//! - **Load balancing** ([`lb`]): round robin, weighted random, least
//!   request (power of two choices) and ring hash, over the usable
//!   endpoints with a panic threshold.
//! - **Failover cache**: the last set of each target is written as JSON to
//!   a cache directory and served (with a warning in the log) when no
//!   registry node answers.
//! - **Modes** ([`mode`]): direct, mesh, or auto (decided from the code,
//!   a mode file, `MESHREG_MODE`, the sidecar's bootstrap file or admin
//!   port, and logged); switched at run time with [`Client::set_mode`]
//!   without failing calls in flight. Mesh mode registers
//!   `meshreg.io/sidecar-port`.
//! - **Calls**: a [`Resolver`] says where to send each call in the current
//!   mode ([`Destination`]); [`Client::grpc_channel`] gives a tonic
//!   `Channel` for `meshreg://` targets that follows the mode.
//!
//! What it does not do (yet): Maglev, a ready-made HTTP client (the
//! [`Destination`] is what an HTTP client needs), targets in other
//! namespaces. See `docs/sdk.md`.
//!
//! # Layout
//! - [`client`]: [`Client`], its builder and the subscription handle.
//! - [`mode`]: [`Mode`], the sans-I/O auto decision and its shell
//!   (environment, files, the sidecar probe).
//! - [`resolver`]: [`Resolver`] and [`Destination`].
//! - [`grpc`]: the tonic channel's balancer feed.
//! - [`session`]: the registration + keepalive task (sans-I/O decisions
//!   plus the async loop).
//! - [`ads`]: the delta-ADS client: a sans-I/O subscription state and the
//!   stream loop.
//! - [`endpoints`]: [`EndpointSet`] and its conversion from
//!   `ClusterLoadAssignment`.
//! - [`target`]: what a subscription names, and its xDS resource name.
//! - [`lb`]: load balancers.
//! - [`cache`]: the on-disk failover cache.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`error`]: the crate's [`Error`].

pub mod ads;
pub mod backoff;
pub mod cache;
pub mod client;
pub mod endpoints;
pub mod error;
pub mod grpc;
pub mod http;
pub mod lb;
pub mod mode;
pub mod resolver;
pub mod session;
pub mod target;

pub use client::{Builder, Client, ServiceSpec, Subscription};
pub use endpoints::{Endpoint, EndpointSet, Health, Locality, Origin};
pub use error::Error;
pub use mode::{Decision, Mode, Reason, SidecarConfig};
pub use resolver::{Destination, Resolver};
pub use session::{Registration, RegistrationState};
pub use target::Target;
