//! [`Client`]'s modes: deciding the mode ([`crate::mode`]), switching it
//! at run time, and what follows the mode: [`Resolver`]s and tonic
//! channels ([`crate::grpc`]).

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use super::{lock, Client};
use crate::endpoints::{EndpointSet, Origin};
use crate::grpc::{self, Configure};
use crate::lb::{LoadBalancer, Policy};
use crate::mode::{self, Decision, Mode};
use crate::resolver::{Resolver, Routed};
use crate::session::RegistrationState;
use crate::target::Target;
use crate::Error;

impl Client {
    /// The mode in effect, deciding it first if nothing did yet (see
    /// [`crate::mode`]; the decision and its reason are logged at info).
    /// Errors: [`Error::Config`] for a `MESHREG_MODE` or mode file value
    /// that is not a mode, or an unreadable sidecar bootstrap file.
    pub async fn mode(&self) -> Result<Decision, Error> {
        Ok((*self.decision().await?).clone())
    }

    pub(crate) async fn decision(&self) -> Result<Arc<Decision>, Error> {
        if let Some(d) = self.inner.mode.borrow().clone() {
            return Ok(d);
        }
        let _switching = self.inner.switch.lock().await;
        self.decision_locked().await
    }

    /// The decision, making the first one. Called with `switch` held.
    async fn decision_locked(&self) -> Result<Arc<Decision>, Error> {
        if let Some(d) = self.inner.mode.borrow().clone() {
            return Ok(d);
        }
        let configured = *lock(&self.inner.configured);
        let d = self.detect(configured).await?;
        log_decision("meshreg mode decided", None, &d);
        let d = Arc::new(d);
        self.inner.mode.send_replace(Some(d.clone()));
        Ok(d)
    }

    async fn detect(&self, configured: Mode) -> Result<Decision, Error> {
        let cfg = &self.inner.cfg;
        mode::detect(configured, &cfg.mode, cfg.connect_timeout).await
    }

    /// Switches to `mode` at run time. [`Mode::Auto`] decides again from
    /// the environment (mode file, `MESHREG_MODE`, the sidecar's bootstrap
    /// file and admin port); `Direct` or `Mesh` is taken as set in code
    /// from now on.
    ///
    /// Before switching it checks that the new mode can serve: to mesh,
    /// the sidecar's admin port answers `GET /ready` with 200 and every
    /// target in use has a name the sidecar routes; to direct, every
    /// target in use by a [`Resolver`] or gRPC channel is subscribed and
    /// has its first endpoint set (within the request timeout). If not, it
    /// returns [`Error::ModeSwitch`] and nothing changes.
    ///
    /// Then: new [`Resolver::pick`]s return the new route at once, gRPC
    /// channels get the new balancer entries (old ones are removed after
    /// the new ones are in; requests and streams in flight finish on their
    /// connections), the resolvers' own subscriptions are dropped when
    /// going to mesh, and a registered instance is registered again with
    /// (mesh) or without (direct) `meshreg.io/sidecar-port`. It resolves
    /// once that registration is acknowledged (at once when this client
    /// does not register); wrapping it in a timeout is safe: the switch
    /// has happened and the registration keeps being retried.
    pub async fn set_mode(&self, mode: Mode) -> Result<Decision, Error> {
        self.switch_to(Some(mode)).await
    }

    /// Decides the mode again with the mode set in code (as the builder
    /// or the last [`Client::set_mode`] left it), re-reading the mode
    /// file and probing for the sidecar, and switches if the result
    /// differs, as [`Client::set_mode`] does.
    pub async fn reload_mode(&self) -> Result<Decision, Error> {
        self.switch_to(None).await
    }

    /// Calls [`Client::reload_mode`] on every SIGHUP until the client
    /// shuts down: with `.mode_file(path)`, an operator writes `mesh` or
    /// `direct` there and sends SIGHUP; in auto mode, a SIGHUP after
    /// starting (or stopping) the sidecar re-detects it. A failed reload is
    /// logged (warn) and changes nothing. Errors when the signal handler
    /// cannot be installed.
    #[cfg(unix)]
    pub fn reload_mode_on_sighup(&self) -> Result<JoinHandle<()>, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| Error::Config(format!("cannot listen for SIGHUP: {e}")))?;
        let weak = Arc::downgrade(&self.inner);
        let mut shutdown = self.inner.shutdown.subscribe();
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    s = hup.recv() => if s.is_none() { return },
                    _ = shutdown.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                tracing::info!("SIGHUP: deciding the meshreg mode again");
                if let Err(e) = Client::from_inner(inner).reload_mode().await {
                    tracing::warn!(error = %e, "mode reload on SIGHUP failed");
                }
            }
        }))
    }

    async fn switch_to(&self, configured: Option<Mode>) -> Result<Decision, Error> {
        let switching = self.inner.switch.lock().await;
        if self.tasks().shut_down {
            return Err(Error::Shutdown);
        }
        let configured = configured.unwrap_or_else(|| *lock(&self.inner.configured));
        let new = self.detect(configured).await?;
        let old = self.inner.mode.borrow().clone();
        let Some(old) = old else {
            *lock(&self.inner.configured) = configured;
            log_decision("meshreg mode decided", None, &new);
            self.inner.mode.send_replace(Some(Arc::new(new.clone())));
            return Ok(new);
        };
        if old.mode == new.mode && old.sidecar == new.sidecar {
            *lock(&self.inner.configured) = configured;
            log_decision("meshreg mode unchanged", Some(old.mode), &new);
            self.inner.mode.send_replace(Some(Arc::new(new.clone())));
            return Ok(new);
        }
        let routes = self.live_routes();
        let ready = match new.mode {
            Mode::Mesh => self.prepare_mesh(&new, &routes).await,
            Mode::Direct | Mode::Auto => self.prepare_direct(&routes).await,
        };
        if let Err(reason) = ready {
            tracing::warn!(from = %old.mode, to = %new.mode, %reason, "meshreg mode switch refused; the current mode stays");
            return Err(Error::ModeSwitch {
                to: new.mode,
                reason,
            });
        }
        *lock(&self.inner.configured) = configured;
        let shared = Arc::new(new.clone());
        self.inner.mode.send_replace(Some(shared));
        log_decision("meshreg mode switched", Some(old.mode), &new);
        for r in &routes {
            if let Some(feed) = &r.feed {
                feed.sync(&self.inner.mode, r).await;
            }
        }
        if new.mode == Mode::Mesh {
            for r in &routes {
                r.set_subscription(None);
            }
            let user = lock(&self.inner.user_subs).clone();
            for name in self.subscriptions() {
                if !user.contains(&name) {
                    self.unsubscribe_name(name).await?;
                }
            }
        }
        drop(switching);
        self.wait_registered(new.sidecar_port()).await?;
        Ok(new)
    }

    /// Mesh needs a ready sidecar and targets it can route.
    async fn prepare_mesh(&self, d: &Decision, routes: &[Arc<Routed>]) -> Result<(), String> {
        for r in routes {
            if let Err(e) = &r.authority {
                return Err(format!("target {} in use: {e}", r.target));
            }
        }
        mode::probe_ready(d.sidecar.admin, self.inner.cfg.connect_timeout)
            .await
            .map_err(|e| format!("the sidecar is not ready: {e}"))
    }

    /// Direct needs every target in use subscribed with a first set; on
    /// failure the subscriptions made here are dropped again.
    async fn prepare_direct(&self, routes: &[Arc<Routed>]) -> Result<(), String> {
        let before: HashSet<String> = self.subscriptions().into_iter().collect();
        let mut waiting = Vec::new();
        let mut failed = None;
        for r in routes {
            match r.ensure_receiver(self).await {
                Ok(rx) => waiting.push((r.target.to_string(), rx)),
                Err(e) => {
                    failed = Some(format!("subscribing to {}: {e}", r.target));
                    break;
                }
            }
        }
        if failed.is_none() {
            let deadline = tokio::time::Instant::now() + self.inner.cfg.request_timeout;
            for (target, rx) in &mut waiting {
                let got =
                    tokio::time::timeout_at(deadline, rx.wait_for(|s| s.origin != Origin::Pending))
                        .await;
                if !matches!(got, Ok(Ok(_))) {
                    failed = Some(format!(
                        "no endpoint set for {target} from a registry or the cache within {} ms",
                        self.inner.cfg.request_timeout.as_millis()
                    ));
                    break;
                }
            }
        }
        let Some(reason) = failed else {
            return Ok(());
        };
        for r in routes {
            r.set_subscription(None);
        }
        for name in self.subscriptions() {
            if !before.contains(&name) {
                let _ = self.unsubscribe_name(name).await;
            }
        }
        Err(reason)
    }

    /// Waits until the registration carries `sidecar_port`, when this
    /// client registers.
    async fn wait_registered(&self, sidecar_port: Option<u16>) -> Result<(), Error> {
        let mut rx = self.inner.reg_tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                RegistrationState::Registered(r) if r.sidecar_port == sidecar_port => return Ok(()),
                RegistrationState::Idle
                | RegistrationState::Rejected(_)
                | RegistrationState::Stopped => return Ok(()),
                RegistrationState::Registered(_) | RegistrationState::Registering => {}
            }
            rx.changed().await.map_err(|_| Error::Shutdown)?;
        }
    }

    /// The endpoint sets of `routed` in direct mode: its subscription,
    /// made now (under the switch lock) if missing; `None` in mesh mode.
    pub(crate) async fn routed_receiver(
        &self,
        routed: &Routed,
    ) -> Result<Option<watch::Receiver<Arc<EndpointSet>>>, Error> {
        if let Some(rx) = routed.receiver() {
            return Ok(Some(rx));
        }
        let _switching = self.inner.switch.lock().await;
        if self.decision_locked().await?.mode == Mode::Mesh {
            return Ok(None);
        }
        routed.ensure_receiver(self).await.map(Some)
    }

    pub(super) fn live_routes(&self) -> Vec<Arc<Routed>> {
        let mut routes = lock(&self.inner.routes);
        routes.retain(|w| w.strong_count() > 0);
        routes.iter().filter_map(Weak::upgrade).collect()
    }

    /// A route for `target`, subscribed when the mode is direct.
    async fn route(
        &self,
        target: Target,
        feed: Option<Arc<grpc::Feed>>,
    ) -> Result<Arc<Routed>, Error> {
        let _switching = self.inner.switch.lock().await;
        let d = self.decision_locked().await?;
        let routed = Arc::new(Routed::new(target, &self.inner.cfg.namespace, feed));
        if d.mode == Mode::Mesh {
            if let Err(reason) = &routed.authority {
                return Err(Error::InvalidTarget {
                    target: routed.target.to_string(),
                    reason: reason.clone(),
                });
            }
        } else {
            let sub = self.watch_target(&routed.target).await?;
            routed.set_subscription(Some(sub));
        }
        let mut routes = lock(&self.inner.routes);
        routes.retain(|w| w.strong_count() > 0);
        routes.push(Arc::downgrade(&routed));
        Ok(routed)
    }

    /// A [`Resolver`] for `target` (as [`Target::parse`] reads it:
    /// `pay:9090`, `pay.default:9090`, `shop.PaymentService`) with a
    /// round-robin balancer that prefers this client's locality when one
    /// is set. Decides the mode first if nothing did; in direct mode it
    /// subscribes to the target, in mesh mode it does not.
    pub async fn resolve(&self, target: &str) -> Result<Resolver, Error> {
        let mut lb = LoadBalancer::new(Policy::RoundRobin);
        let loc = &self.inner.cfg.locality;
        if !loc.region.is_empty() || !loc.zone.is_empty() {
            lb = lb.prefer_locality(loc.clone());
        }
        self.resolve_with(&Target::parse(target)?, lb).await
    }

    /// An HTTP/1.1 client for `meshreg://<target>/<path>` URLs that follows
    /// the mode (see [`crate::http`]), timing calls out after the
    /// request timeout.
    ///
    /// ```no_run
    /// # async fn f(client: meshreg_sdk::Client) -> Result<(), meshreg_sdk::Error> {
    /// let http = client.http_client();
    /// let resp = http.get("meshreg://pay:8080/health").await?;
    /// assert!(resp.status().is_success());
    /// # Ok(()) }
    /// ```
    pub fn http_client(&self) -> crate::http::HttpClient {
        crate::http::HttpClient::new(self.clone(), self.inner.cfg.request_timeout)
    }

    /// A [`Resolver`] for `target` picking with `lb` in direct mode.
    pub async fn resolve_with(&self, target: &Target, lb: LoadBalancer) -> Result<Resolver, Error> {
        let routed = self.route(target.clone(), None).await?;
        Ok(Resolver::new(self.clone(), routed, lb))
    }

    /// A tonic [`Channel`] to `meshreg://<app>[.<namespace>]:<port>` or
    /// `meshreg://<service>` (see [`Target::parse_uri`]) that follows the
    /// mode: balanced over the target's endpoints in direct mode, to the
    /// sidecar's outbound listener with the target as `:authority` in mesh
    /// mode, and switched by [`Client::set_mode`] (see [`crate::grpc`]).
    /// In direct mode it waits, at most the request timeout, for the first
    /// endpoint set. The channel keeps the client alive while it lives.
    ///
    /// ```no_run
    /// # async fn f(client: meshreg_sdk::Client) -> Result<(), meshreg_sdk::Error> {
    /// let channel = client.grpc_channel("meshreg://pay:9090").await?;
    /// // let mut pay = PayClient::new(channel);
    /// # Ok(()) }
    /// ```
    pub async fn grpc_channel(&self, target: &str) -> Result<Channel, Error> {
        self.grpc_channel_inner(target, None).await
    }

    /// Like [`Client::grpc_channel`], with `configure` applied to every
    /// tonic endpoint the channel dials (timeouts, keep-alive, TLS, …;
    /// in mesh mode the sidecar's, whose `origin` is already set).
    pub async fn grpc_channel_with<F>(&self, target: &str, configure: F) -> Result<Channel, Error>
    where
        F: Fn(TonicEndpoint) -> TonicEndpoint + Send + Sync + 'static,
    {
        self.grpc_channel_inner(target, Some(Arc::new(configure)))
            .await
    }

    async fn grpc_channel_inner(
        &self,
        target: &str,
        configure: Option<Configure>,
    ) -> Result<Channel, Error> {
        let target = Target::parse_uri(target)?;
        let (channel, feed) = grpc::new_channel(self.inner.cfg.connect_timeout, configure);
        let routed = self.route(target, Some(feed.clone())).await?;
        if let Some(mut rx) = routed.receiver() {
            let _ = tokio::time::timeout(
                self.inner.cfg.request_timeout,
                rx.wait_for(|s| s.origin != Origin::Pending),
            )
            .await;
        }
        feed.sync(&self.inner.mode, &routed).await;
        tokio::spawn(grpc::run(Arc::downgrade(&self.inner), routed, feed));
        Ok(channel)
    }
}

/// Logs a decision at info: the mode, the one before (`from`, on a
/// re-evaluation), why, and in mesh mode where the sidecar is.
fn log_decision(what: &str, from: Option<Mode>, d: &Decision) {
    let from = from.map(|m| m.as_str());
    if d.mode == Mode::Mesh {
        tracing::info!(
            mode = %d.mode,
            from,
            reason = %d.reason,
            sidecar_outbound = %d.sidecar.outbound,
            sidecar_inbound_port = d.sidecar.inbound_port,
            "{what}"
        );
    } else {
        tracing::info!(mode = %d.mode, from, reason = %d.reason, "{what}");
    }
}
