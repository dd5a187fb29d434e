//! The SDK's error type.

/// Errors returned by the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given an invalid or incomplete configuration.
    #[error("invalid SDK configuration: {0}")]
    Config(String),
    /// A subscription target could not be parsed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry rejected the registration for a reason retrying will
    /// not fix (e.g. an invalid port name or label); check the instance
    /// definition given to the builder.
    #[error("the registry rejected the registration: {0}")]
    Rejected(String),
    /// The client was shut down; create a new one.
    #[error("the client is shut down")]
    Shutdown,
    /// Direct mode has no endpoint to call for the target: the registry
    /// has no usable instance of it (check `meshreg ctl` or
    /// `/v1/namespaces/<ns>/instances?app=<app>`), or no registry node
    /// answered in time and the failover cache had nothing.
    #[error("no endpoint for {target}: {reason}")]
    NoEndpoint {
        /// The target as the client names it.
        target: String,
        /// Why there is none.
        reason: String,
    },
    /// An HTTP call made by [`HttpClient`](crate::http::HttpClient) failed:
    /// the connection, the exchange, or the request timeout.
    #[error("call to {target} failed: {reason}")]
    Call {
        /// The target as the URL names it.
        target: String,
        /// What failed.
        reason: String,
    },
    /// A mode switch was refused and the client stays in its current mode:
    /// the sidecar is not ready (switching to mesh), or a target in use
    /// got no endpoint set from a registry in time (switching to direct).
    #[error("cannot switch to {to} mode: {reason}; the current mode stays in effect")]
    ModeSwitch {
        /// The mode asked for.
        to: crate::Mode,
        /// What is not ready.
        reason: String,
    },
}
