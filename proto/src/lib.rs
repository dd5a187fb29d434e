//! Generated protobuf and gRPC code for meshreg's own APIs.
//!
//! Generated code only: conversions to domain types live in the crates that
//! own those types. Built with a vendored `protoc` (see `build.rs`).
//!
//! Layout:
//! - [`registry::v1`]: `meshreg.registry.v1`, the registry API
//!   (`proto/meshreg/registry/v1/registry.proto`).
//! - [`raft::v1`]: `meshreg.raft.v1`, peer traffic between cluster nodes.
//! - [`cluster::v1`]: `meshreg.cluster.v1`, cluster administration.

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
