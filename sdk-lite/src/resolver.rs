//! [`Resolver`]: the mode-agnostic way to call a target. Each
//! [`Resolver::pick`] says where to send one call and what to name the
//! target in it: in direct mode an endpoint picked by the resolver's
//! [`LoadBalancer`], in mesh mode the sidecar's outbound listener with the
//! target as authority.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::client::Client;
use crate::endpoints::{Endpoint, EndpointSet, Origin};
use crate::grpc::Feed;
use crate::lb::{LoadBalancer, Pick};
use crate::mode::Mode;
use crate::target::Target;
use crate::{Error, Subscription};

/// One target as routed by a live [`Resolver`] or gRPC channel; the
/// client keeps a weak list of them to prepare mode switches.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The target.
    pub target: Target,
    /// Its ClusterLoadAssignment name in the client's namespace.
    pub name: String,
    /// Its authority for a sidecar, or why it has none.
    pub authority: Result<String, String>,
    /// The subscription used in direct mode; `None` in mesh mode.
    pub sub: Mutex<Option<Subscription>>,
    /// For a gRPC channel: what feeds its balancer.
    pub feed: Option<Arc<Feed>>,
}

impl Routed {
    pub(crate) fn new(target: Target, ns: &str, feed: Option<Arc<Feed>>) -> Routed {
        Routed {
            name: target.resource_name(ns),
            authority: target.mesh_authority(ns),
            target,
            sub: Mutex::new(None),
            feed,
        }
    }

    fn sub(&self) -> std::sync::MutexGuard<'_, Option<Subscription>> {
        self.sub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The direct-mode endpoint sets, if subscribed.
    pub(crate) fn receiver(&self) -> Option<watch::Receiver<Arc<EndpointSet>>> {
        self.sub().as_ref().map(Subscription::receiver)
    }

    pub(crate) fn set_subscription(&self, sub: Option<Subscription>) {
        *self.sub() = sub;
    }

    /// The direct-mode endpoint sets, subscribing first when needed. Only
    /// under the client's switch lock, with the mode known to be direct
    /// (else a switch to mesh could be undone by a late subscription).
    pub(crate) async fn ensure_receiver(
        &self,
        client: &Client,
    ) -> Result<watch::Receiver<Arc<EndpointSet>>, Error> {
        if let Some(rx) = self.receiver() {
            return Ok(rx);
        }
        // Subscribing twice to one name shares one watch, so a race here
        // costs nothing.
        let sub = client.watch_target(&self.target).await?;
        let rx = sub.receiver();
        *self.sub() = Some(sub);
        Ok(rx)
    }
}

/// Where to send one call: the address to connect to and the authority
/// (`Host` for HTTP/1.1, `:authority` for HTTP/2 and gRPC) to send.
///
/// | mode | `dial()` | `authority()` |
/// |---|---|---|
/// | direct | the picked endpoint, `10.0.4.2:9090` | the same |
/// | mesh | the sidecar's outbound listener, `127.0.0.1:15001` | the target: `pay.default:9090`, or a service name |
///
/// In direct mode with [`Policy::LeastRequest`](crate::lb::Policy::LeastRequest)
/// the call counts as in flight until this is dropped: keep it for the
/// duration of the call.
#[derive(Debug)]
pub struct Destination {
    mode: Mode,
    dial: String,
    authority: String,
    pick: Option<Pick>,
}

impl Destination {
    /// The mode this call was routed in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `host:port` to connect to.
    pub fn dial(&self) -> &str {
        &self.dial
    }

    /// The `Host` / `:authority` to send.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `http://<dial>`, a base URL for HTTP clients (which must then send
    /// [`Destination::authority`] as the `Host` header).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.dial)
    }

    /// In direct mode, the endpoint picked.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.pick.as_ref().map(Pick::endpoint)
    }

    /// In direct mode, whether the pick was made in panic mode (too few
    /// usable endpoints).
    pub fn panic(&self) -> bool {
        self.pick.as_ref().is_some_and(Pick::panic)
    }
}

/// Calls one target in whatever mode the client is in: made by
/// [`Client::resolve`]. Cheap to clone (clones share the balancer).
///
/// A mode switch ([`Client::set_mode`]) changes what the next
/// [`Resolver::pick`] returns; calls already made keep their
/// [`Destination`] and finish on their own connections. A resolver holds
/// its client (and so the client's background tasks) alive.
#[derive(Debug, Clone)]
pub struct Resolver {
    client: Client,
    routed: Arc<Routed>,
    lb: Arc<LoadBalancer>,
}

impl Resolver {
    pub(crate) fn new(client: Client, routed: Arc<Routed>, lb: LoadBalancer) -> Resolver {
        Resolver {
            client,
            routed,
            lb: Arc::new(lb),
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.routed.target
    }

    /// Where to send the next call. In direct mode this waits, at most
    /// the client's request timeout, for the target's first endpoint set
    /// (from a registry or the failover cache).
    ///
    /// Errors: [`Error::NoEndpoint`] in direct mode when there is nothing
    /// to pick; [`Error::InvalidTarget`] in mesh mode for a cluster name a
    /// sidecar cannot route; [`Error::Shutdown`].
    pub async fn pick(&self) -> Result<Destination, Error> {
        self.pick_inner(None).await
    }

    /// Like [`Resolver::pick`] with a request hash (see
    /// [`lb::hash_key`](crate::lb::hash_key)) for
    /// [`Policy::RingHash`](crate::lb::Policy::RingHash); in mesh mode the
    /// sidecar balances and the hash is not used.
    pub async fn pick_hashed(&self, hash: u64) -> Result<Destination, Error> {
        self.pick_inner(Some(hash)).await
    }

    async fn pick_inner(&self, hash: Option<u64>) -> Result<Destination, Error> {
        let d = self.client.decision().await?;
        match d.mode {
            Mode::Mesh => {
                let authority =
                    self.routed
                        .authority
                        .clone()
                        .map_err(|reason| Error::InvalidTarget {
                            target: self.routed.target.to_string(),
                            reason,
                        })?;
                Ok(Destination {
                    mode: Mode::Mesh,
                    dial: d.sidecar.outbound.to_string(),
                    authority,
                    pick: None,
                })
            }
            Mode::Direct | Mode::Auto => {
                let Some(mut rx) = self.client.routed_receiver(&self.routed).await? else {
                    // Switched to mesh since the decision was read.
                    return Box::pin(self.pick_inner(hash)).await;
                };
                let timeout = self.client.request_timeout();
                if rx.borrow().origin == Origin::Pending {
                    let waited =
                        tokio::time::timeout(timeout, rx.wait_for(|s| s.origin != Origin::Pending))
                            .await;
                    if waited.is_err() {
                        return Err(self.no_endpoint(format!(
                            "no endpoint set from a registry or the cache within {} ms",
                            timeout.as_millis()
                        )));
                    }
                }
                let set = rx.borrow().clone();
                let pick = match hash {
                    Some(h) => self.lb.pick_hashed(&set, h),
                    None => self.lb.pick(&set),
                };
                let pick = pick.ok_or_else(|| {
                    self.no_endpoint(format!(
                        "{} endpoints, none a candidate (origin {:?})",
                        set.len(),
                        set.origin
                    ))
                })?;
                let authority = pick.endpoint().authority();
                Ok(Destination {
                    mode: Mode::Direct,
                    dial: authority.clone(),
                    authority,
                    pick: Some(pick),
                })
            }
        }
    }

    fn no_endpoint(&self, reason: String) -> Error {
        Error::NoEndpoint {
            target: self.routed.target.to_string(),
            reason,
        }
    }
}
