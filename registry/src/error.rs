//! The registry's error type. API layers turn it into a `tonic::Status` or
//! an HTTP response in exactly one function each (`api::grpc::to_status`,
//! `api::http::ApiError`).

use serde::{Deserialize, Serialize};

/// Everything that can go wrong serving a registry request.
///
/// Serializable because a command rejected while being applied carries its
/// error back through the Raft log's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A request field is invalid; `field` is its path in the request.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Path of the field, e.g. `instances[0].ports["http"]`.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {name:?} not found{hint}")]
    NotFound {
        /// What kind of object: `namespace`, `instance`, `session`, ...
        kind: String,
        /// Its name or id.
        name: String,
        /// What the client should do, starting with "; " (may be empty).
        hint: String,
    },
    /// The object to create already exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: String,
        /// Its name.
        name: String,
    },
    /// The request is valid but conflicts with the stored state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// This node cannot take writes: it is not the Raft leader.
    #[error("this node is not the Raft leader{}", leader_id.map(|l| format!("; the leader is node {l}")).unwrap_or_else(|| "; no leader is known yet, retry shortly".into()))]
    NotLeader {
        /// The leader's node id, when known.
        leader_id: Option<u64>,
        /// The leader's gRPC API address, when known.
        leader_addr: Option<String>,
        /// The leader's HTTP API address, when known.
        leader_http_addr: Option<String>,
    },
    /// The node cannot serve the request right now (no quorum, shutting down, lagging).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request's deadline passed before it could be served.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The data directory could not be read or written.
    #[error("storage error: {0}; check the data directory's disk space and permissions")]
    Storage(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`] without a hint.
    pub fn not_found(kind: &str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind: kind.into(),
            name: name.into(),
            hint: String::new(),
        }
    }
}

/// Result with the registry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
