//! Generated protobuf and gRPC code for meshreg's own APIs, and for the
//! parts of other systems' APIs that meshreg speaks (Istio's MCP
//! resources, an etcd v3 client).
//!
//! Generated code only: conversions to domain types live in the crates that
//! own those types. Built with a vendored `protoc` (see `build.rs`).
//!
//! Layout:
//! - [`registry::v1`]: `meshreg.registry.v1`, the registry API
//!   (`proto/meshreg/registry/v1/registry.proto`).
//! - [`raft::v1`]: `meshreg.raft.v1`, peer traffic between cluster nodes.
//! - [`cluster::v1`]: `meshreg.cluster.v1`, cluster administration.
//! - [`istio::mcp::v1alpha1`] and [`istio::networking::v1alpha3`]: the MCP
//!   `Resource`/`Metadata` envelope and `ServiceEntry`/`WorkloadEntry`,
//!   meshreg's own wire-compatible subset of istio/api
//!   (`proto/istio/`). `google.protobuf.Any`/`Timestamp` in them are
//!   `envoy_types::pb::google::protobuf` types; maps are `BTreeMap`s, so
//!   encoding is deterministic.
//! - [`etcd::etcdserverpb`] and [`etcd::mvccpb`]: a gRPC client for etcd v3's
//!   `KV.Range` and `Watch.Watch`, meshreg's own wire-compatible subset of
//!   etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto`
//!   (`proto/etcd/api/`), for the etcd adapter. Client only; no other RPCs.

/// `meshreg.registry.*` packages.
pub mod registry {
    /// `meshreg.registry.v1`: the registry API.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("meshreg.registry.v1");
    }
}

/// `meshreg.raft.*` packages.
pub mod raft {
    /// `meshreg.raft.v1`: peer traffic between cluster nodes (port 7072).
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("meshreg.raft.v1");
    }
}

/// `meshreg.cluster.*` packages.
pub mod cluster {
    /// `meshreg.cluster.v1`: cluster administration.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("meshreg.cluster.v1");
    }
}

/// `istio.*` packages: the subset of istio/api that meshreg serves over
/// MCP-over-xDS (docs/mcp.md).
pub mod istio {
    /// `istio.mcp.*` packages.
    pub mod mcp {
        /// `istio.mcp.v1alpha1`: `Resource` and `Metadata`, the MCP envelope
        /// (`proto/istio/mcp/v1alpha1/resource.proto`).
        #[allow(missing_docs, clippy::all, missing_debug_implementations)]
        pub mod v1alpha1 {
            tonic::include_proto!("istio.mcp.v1alpha1");

            /// Type URL of [`Resource`] inside a `google.protobuf.Any`.
            pub const RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
        }
    }

    /// `istio.networking.*` packages.
    pub mod networking {
        /// `istio.networking.v1alpha3`: `ServiceEntry`, `ServicePort`,
        /// `WorkloadEntry`, `WorkloadSelector`
        /// (`proto/istio/networking/v1alpha3/`).
        #[allow(missing_docs, clippy::all, missing_debug_implementations)]
        pub mod v1alpha3 {
            tonic::include_proto!("istio.networking.v1alpha3");

            /// Type URL of [`ServiceEntry`] inside a `google.protobuf.Any`.
            pub const SERVICE_ENTRY_TYPE_URL: &str =
                "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry";
        }
    }
}

/// etcd v3's API, the subset the etcd adapter uses (`proto/etcd/api/`).
/// The modules keep etcd's package names, so the generated code's
/// `super::mvccpb` paths resolve.
pub mod etcd {
    /// `etcdserverpb`: the `KV` client with `Range`
    /// ([`etcdserverpb::kv_client::KvClient`]) and the `Watch` client with
    /// the bidirectional `Watch` stream
    /// ([`etcdserverpb::watch_client::WatchClient`]), with their messages.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }

    /// `mvccpb`: `KeyValue` and the watch `Event`.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}
