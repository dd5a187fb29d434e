//! The registry's APIs. [`ops`] holds every operation once (validation,
//! then a Raft write or a local read); [`grpc`] and [`http`] only translate
//! requests and responses, and each maps errors in exactly one function.
//!
//! Layout:
//! - [`ops`]: operations shared by both APIs.
//! - [`convert`]: protobuf ⇄ domain conversions.
//! - [`grpc`]: `meshreg.registry.v1.Registry` on tonic.
//! - [`cluster`]: `meshreg.cluster.v1.Cluster`: status and membership.
//! - [`http`]: REST/JSON on axum under `/v1/`, plus `/healthz`, `/readyz`, `/metrics`.

pub mod cluster;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod ops;
