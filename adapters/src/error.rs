//! The adapters' error type: why a source's connection or watch ended.
//! The sink shows it as the source's `last_error` and retries with backoff.

/// Why an adapter stopped reading its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source's configuration cannot work (bad path, no endpoint).
    #[error("invalid source configuration: {0}")]
    Config(String),
    /// A ZooKeeper request or the session failed; check that the ensemble
    /// at `address` is up and reachable, and its logs for why the session ended.
    #[error("ZooKeeper {address}: {source}")]
    Zookeeper {
        /// The configured connect string.
        address: String,
        /// The client's error.
        #[source]
        source: zookeeper_client::Error,
    },
    /// The ZooKeeper session ended (expired, closed or failed to
    /// authenticate); the adapter reconnects and reads everything again.
    #[error("ZooKeeper {address}: session ended ({state})")]
    SessionEnded {
        /// The configured connect string.
        address: String,
        /// The terminal session state.
        state: String,
    },
    /// No etcd endpoint accepted a connection; check that the endpoints
    /// are up and reachable at the configured `host:port` (each one's
    /// reason is listed).
    #[error("etcd {address}: no endpoint could be connected to ({reasons})")]
    EtcdUnreachable {
        /// The configured endpoints.
        address: String,
        /// Each endpoint's connection error, `uri: error; ...`.
        reasons: String,
    },
    /// An etcd request or the watch stream failed; check that the
    /// endpoints are up and reachable, and etcd's logs for the status.
    #[error("etcd {address}: {source}")]
    Etcd {
        /// The configured endpoints.
        address: String,
        /// The gRPC status of the failed request or stream.
        #[source]
        source: tonic::Status,
    },
    /// The etcd watch stream ended without an error.
    #[error("etcd {address}: the watch stream was closed")]
    WatchClosed {
        /// The configured endpoints.
        address: String,
    },
    /// A Nacos request failed or the server could not be reached; check
    /// that the server is up at `address` (HTTP port; gRPC on port + 1000),
    /// and the namespace and credentials.
    #[error("Nacos {address}: {message}")]
    Nacos {
        /// The configured server addresses.
        address: String,
        /// What failed.
        message: String,
    },
}
