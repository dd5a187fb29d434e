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
}
