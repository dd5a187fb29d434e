//! tonic integration: a [`tonic::transport::Channel`] for a
//! `meshreg://<target>` URI, made by
//! [`Client::grpc_channel`](crate::Client::grpc_channel).
//!
//! The channel is tonic's balanced channel (`Channel::balance_channel`,
//! power of two choices over tower's `Balance`) in both modes; what feeds
//! it changes with the mode:
//! - direct: one entry per usable endpoint of the target's subscription
//!   (all endpoints when none is usable), kept in step with every
//!   snapshot by `Insert` / `Remove` changes;
//! - mesh: a single entry, the sidecar's outbound listener, with `origin`
//!   set to the target's authority (`http://pay.default:9090`), so every
//!   request carries the target as `:authority`.
//!
//! A mode switch inserts the new entries before removing the old ones.
//! tower's balancer drops a removed entry's service, but requests and
//! streams already sent on it keep their HTTP/2 connection until they end;
//! new requests go to the new entries. While the set is empty (no
//! endpoint), requests wait in the channel's buffer: give them a deadline.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Uri};

use crate::client::{Client, Inner};
use crate::endpoints::{EndpointSet, Origin};
use crate::mode::{Decision, Mode};
use crate::resolver::Routed;

/// Capacity of the balancer's change channel (changes per endpoint set).
const CHANGE_CAPACITY: usize = 1024;

/// A user hook applied to every tonic endpoint the channel dials.
pub(crate) type Configure = Arc<dyn Fn(TonicEndpoint) -> TonicEndpoint + Send + Sync>;

/// One balancer entry to have: the URI to dial and, in mesh mode, the
/// origin (authority) to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub uri: String,
    pub origin: Option<String>,
}

/// The entries a channel should have (key → entry): in mesh mode the
/// sidecar, in direct mode the usable endpoints of `set` (all of them
/// when none is usable, like the balancers' panic mode). `None` when
/// nothing can be said yet (direct mode without a set from a registry or
/// the cache), so the current entries stay.
pub(crate) fn desired(
    d: &Decision,
    authority: &Result<String, String>,
    set: Option<&EndpointSet>,
) -> Option<BTreeMap<String, Entry>> {
    match d.mode {
        Mode::Mesh => {
            let authority = authority.as_ref().ok()?;
            let uri = format!("http://{}", d.sidecar.outbound);
            Some(BTreeMap::from([(
                format!("mesh|{}|{authority}", d.sidecar.outbound),
                Entry {
                    uri,
                    origin: Some(format!("http://{authority}")),
                },
            )]))
        }
        Mode::Direct | Mode::Auto => {
            let set = set?;
            if set.origin == Origin::Pending {
                return None;
            }
            let usable: Vec<_> = set
                .endpoints
                .iter()
                .filter(|e| e.health.is_usable())
                .collect();
            let chosen: Vec<_> = if usable.is_empty() {
                set.endpoints.iter().collect()
            } else {
                usable
            };
            Some(
                chosen
                    .into_iter()
                    .map(|e| {
                        let a = e.authority();
                        (
                            format!("direct|{a}"),
                            Entry {
                                uri: format!("http://{a}"),
                                origin: None,
                            },
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// What [`Feed::sync`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synced {
    /// The balancer has (or has been sent) every change.
    Done,
    /// The change queue is full (a channel nobody sends requests on does
    /// not consume its changes): the rest is sent by a later sync.
    Backlog,
    /// The channel is gone.
    Closed,
}

/// What feeds one channel's balancer: the change sender and the keys it
/// has inserted. [`Feed::sync`] brings the balancer in line with the
/// client's current mode; it is called by the channel's task on every
/// endpoint snapshot and by a mode switch, under one lock, so the last
/// call always reflects the current state. It never waits for queue
/// space: a full queue leaves the rest to the task's next try.
pub(crate) struct Feed {
    tx: mpsc::Sender<Change<String, TonicEndpoint>>,
    have: tokio::sync::Mutex<HashSet<String>>,
    connect_timeout: Duration,
    configure: Option<Configure>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("connect_timeout", &self.connect_timeout)
            .field("configure", &self.configure.is_some())
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Sends the `Insert`s and then the `Remove`s that make the balancer
    /// hold [`desired`] for the current mode.
    pub(crate) async fn sync(
        &self,
        mode: &watch::Sender<Option<Arc<Decision>>>,
        routed: &Routed,
    ) -> Synced {
        let mut have = self.have.lock().await;
        let Some(d) = mode.borrow().clone() else {
            return Synced::Done;
        };
        let set = routed.receiver().map(|rx| rx.borrow().clone());
        let Some(want) = desired(&d, &routed.authority, set.as_deref()) else {
            return Synced::Done;
        };
        let send = |change| match self.tx.try_send(change) {
            Ok(()) => Synced::Done,
            Err(mpsc::error::TrySendError::Full(_)) => Synced::Backlog,
            Err(mpsc::error::TrySendError::Closed(_)) => Synced::Closed,
        };
        for (key, entry) in &want {
            if have.contains(key) {
                continue;
            }
            let Some(ep) = self.endpoint(entry) else {
                continue;
            };
            match send(Change::Insert(key.clone(), ep)) {
                Synced::Done => have.insert(key.clone()),
                other => return other,
            };
        }
        let gone: Vec<String> = have
            .iter()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match send(Change::Remove(key.clone())) {
                Synced::Done => have.remove(&key),
                other => return other,
            };
        }
        Synced::Done
    }

    fn endpoint(&self, e: &Entry) -> Option<TonicEndpoint> {
        let mut ep = match TonicEndpoint::from_shared(e.uri.clone()) {
            Ok(ep) => ep,
            Err(err) => {
                tracing::warn!(uri = %e.uri, error = %err, "cannot dial this endpoint; skipped");
                return None;
            }
        };
        ep = ep.connect_timeout(self.connect_timeout).tcp_nodelay(true);
        if let Some(origin) = &e.origin {
            match origin.parse::<Uri>() {
                Ok(o) => ep = ep.origin(o),
                Err(err) => {
                    tracing::warn!(%origin, error = %err, "not a valid authority; skipped");
                    return None;
                }
            }
        }
        Some(match &self.configure {
            Some(f) => f(ep),
            None => ep,
        })
    }
}

/// A balanced channel with an empty feed (filled by [`Feed::sync`]).
pub(crate) fn new_channel(
    connect_timeout: Duration,
    configure: Option<Configure>,
) -> (Channel, Arc<Feed>) {
    let (channel, tx) = Channel::balance_channel::<String>(CHANGE_CAPACITY);
    let feed = Arc::new(Feed {
        tx,
        have: tokio::sync::Mutex::new(HashSet::new()),
        connect_timeout,
        configure,
    });
    (channel, feed)
}

/// How long a feed with a full change queue waits before trying again.
const BACKLOG_RETRY: Duration = Duration::from_millis(100);

/// The task behind a channel: re-syncs its feed when the endpoint set or
/// the mode changes, and retries while the change queue is full.
pub(crate) async fn run(inner: Weak<Inner>, routed: Arc<Routed>, feed: Arc<Feed>) {
    let (mut mode_rx, mut shutdown) = match inner.upgrade() {
        Some(i) => (i.mode_tx().subscribe(), i.shutdown_rx()),
        None => return,
    };
    loop {
        let Some(client) = inner.upgrade().map(Client::from_inner) else {
            return;
        };
        let direct = matches!(&*mode_rx.borrow_and_update(), Some(d) if d.mode != Mode::Mesh);
        // Subscribed under the client's switch lock (never here, where
        // the mode may have changed since it was read).
        let mut set_rx = if direct {
            match client.routed_receiver(&routed).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::debug!(target = %routed.target, error = %e, "gRPC channel feed stops");
                    return;
                }
            }
        } else {
            None
        };
        if let Some(rx) = &mut set_rx {
            rx.borrow_and_update();
        }
        let synced = feed.sync(client.mode_tx(), &routed).await;
        if synced == Synced::Closed {
            return;
        }
        drop(client);
        tokio::select! {
            _ = feed.tx.closed() => return,
            _ = shutdown.changed() => return,
            r = mode_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(BACKLOG_RETRY), if synced == Synced::Backlog => {}
            // A closed set (unsubscribed on a switch to mesh) waits for
            // the mode change instead.
            _ = async {
                let open = match &mut set_rx {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                if !open {
                    std::future::pending::<()>().await;
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{Endpoint, Health, Locality};
    use crate::mode::{Reason, SidecarConfig};

    fn ep(addr: &str, health: Health) -> Endpoint {
        Endpoint {
            address: addr.into(),
            port: 9090,
            weight: 1,
            health,
            labels: Default::default(),
            locality: Locality::default(),
            instance_id: String::new(),
        }
    }

    fn decision(mode: Mode) -> Decision {
        Decision {
            mode,
            reason: Reason::Configured,
            sidecar: SidecarConfig::default(),
        }
    }

    #[test]
    fn feeds_the_sidecar_in_mesh_and_the_usable_endpoints_in_direct() {
        let auth = Ok("pay.default:9090".to_string());
        let mesh = desired(&decision(Mode::Mesh), &auth, None).unwrap();
        assert_eq!(mesh.len(), 1);
        let e = mesh.values().next().unwrap();
        assert_eq!(e.uri, "http://127.0.0.1:15001");
        assert_eq!(e.origin.as_deref(), Some("http://pay.default:9090"));
        assert!(desired(&decision(Mode::Mesh), &Err("no".into()), None).is_none());

        let mut set = EndpointSet::empty("outbound|9090||pay.default", Origin::Registry);
        set.endpoints = vec![
            ep("10.0.0.1", Health::Serving),
            ep("10.0.0.2", Health::Draining),
        ];
        let direct = desired(&decision(Mode::Direct), &auth, Some(&set)).unwrap();
        assert_eq!(
            direct.keys().collect::<Vec<_>>(),
            vec!["direct|10.0.0.1:9090"]
        );
        assert_eq!(direct["direct|10.0.0.1:9090"].origin, None);
        // None usable: all, rather than nothing.
        set.endpoints[0].health = Health::NotServing;
        assert_eq!(
            desired(&decision(Mode::Direct), &auth, Some(&set))
                .unwrap()
                .len(),
            2
        );
        // Nothing known yet: keep what is there.
        set.origin = Origin::Pending;
        assert!(desired(&decision(Mode::Direct), &auth, Some(&set)).is_none());
        assert!(desired(&decision(Mode::Direct), &auth, None).is_none());
    }
}
