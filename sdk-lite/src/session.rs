//! Registration and keepalive: grant a session (lease), register the
//! instance under it, renew it over one `KeepAlive` stream, fail over
//! between registry nodes, register again under a new session when the
//! old one is lost, and revoke it on shutdown (`docs/api.md`, "Sessions
//! and keepalive").

use std::sync::Arc;
use std::time::Duration;

use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_client::RegistryClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

use crate::backoff::Backoff;
use crate::client::Config;
use crate::mode::{Decision, SIDECAR_PORT_KEY};

/// The mode in effect, as the client publishes it.
pub(crate) type ModeRx = watch::Receiver<Option<Arc<Decision>>>;

/// The sidecar port the current mode registers (`None` in direct mode).
fn sidecar_port(mode: &ModeRx) -> Option<u16> {
    mode.borrow().as_ref().and_then(|d| d.sidecar_port())
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The session the instance is bound to.
    pub session_id: u64,
    /// The instance ids the registry assigned (one per registered instance).
    pub ids: Vec<String>,
    /// The registry revision of the `Register` write.
    pub revision: u64,
    /// The registry address that took it.
    pub registry: String,
    /// The `meshreg.io/sidecar-port` registered: the sidecar's inbound
    /// port in mesh mode, `None` in direct mode.
    pub sidecar_port: Option<u16>,
}

/// Where registration stands, as published by [`Client::registration`](crate::Client::registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// [`Client::register`](crate::Client::register) was not called.
    Idle,
    /// Registering (first time, or again after a session loss).
    Registering,
    /// Registered and being kept alive.
    Registered(Registration),
    /// The registry rejected the instance; the message says why. No more attempts.
    Rejected(String),
    /// Shut down; the session was revoked when a registry node answered.
    Stopped,
}

/// What a registry error means for the registration loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Retrying will not help (invalid instance, permission).
    Reject,
    /// The session is gone: grant a new one and register again.
    SessionLost,
    /// Transient: try again (on the next node) after a backoff.
    Retry,
}

/// Classifies a status from `GrantSession`, `Register` or `KeepAlive`.
pub(crate) fn verdict(status: &tonic::Status) -> Verdict {
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::Unimplemented => Verdict::Reject,
        Code::NotFound => Verdict::SessionLost,
        _ => Verdict::Retry,
    }
}

enum Attempt {
    Shutdown(Option<RegistryClient<Channel>>),
    Rejected(String),
    Failed(String),
}

enum KeepAliveEnd {
    Shutdown,
    SessionLost,
    /// The mode changed what is registered: register again, same session.
    Reregister,
    Broken(String),
}

/// The registration loop; ends on shutdown (after revoking the session)
/// or on a rejection.
pub(crate) async fn run(
    cfg: Arc<Config>,
    state: watch::Sender<RegistrationState>,
    mut shutdown: watch::Receiver<bool>,
    mut mode: ModeRx,
) {
    let n = cfg.registries.len();
    let mut idx = fastrand::usize(..n);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut session: Option<u64> = None;
    let mut registered = false;
    state.send_replace(RegistrationState::Registering);
    loop {
        let addr = cfg.registries[idx].clone();
        let attempt = attempt(
            &cfg,
            &addr,
            &mut session,
            &mut registered,
            &state,
            &mut shutdown,
            &mut mode,
            &mut backoff,
        )
        .await;
        match attempt {
            Attempt::Shutdown(client) => {
                revoke(&cfg, client, session, idx).await;
                state.send_replace(RegistrationState::Stopped);
                return;
            }
            Attempt::Rejected(msg) => {
                tracing::error!(registry = %addr, error = %msg, "the registry rejected this instance; not retrying");
                revoke(&cfg, None, session, idx).await;
                state.send_replace(RegistrationState::Rejected(msg));
                return;
            }
            Attempt::Failed(reason) => {
                tracing::warn!(registry = %addr, %reason, "registry unreachable; trying the next node");
            }
        }
        idx = (idx + 1) % n;
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {
                revoke(&cfg, None, session, idx).await;
                state.send_replace(RegistrationState::Stopped);
                return;
            }
        }
    }
}

// The loop's state and channels, passed by reference (as `ads::stream_once`).
#[allow(clippy::too_many_arguments)]
async fn attempt(
    cfg: &Config,
    addr: &str,
    session: &mut Option<u64>,
    registered: &mut bool,
    state: &watch::Sender<RegistrationState>,
    shutdown: &mut watch::Receiver<bool>,
    mode: &mut ModeRx,
    backoff: &mut Backoff,
) -> Attempt {
    if *shutdown.borrow() {
        return Attempt::Shutdown(None);
    }
    let channel = match crate::client::connect(cfg, addr).await {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(e),
    };
    let mut client = RegistryClient::new(channel);
    loop {
        let id = match *session {
            Some(id) => id,
            None => {
                let req = pb::GrantSessionRequest {
                    ttl_ms: u64::try_from(cfg.session_ttl.as_millis()).unwrap_or(u64::MAX),
                };
                match call(cfg, client.grant_session(req)).await {
                    Ok(r) => {
                        tracing::debug!(registry = %addr, session = r.session_id, "session granted");
                        *session = Some(r.session_id);
                        *registered = false;
                        r.session_id
                    }
                    Err(s) if verdict(&s) == Verdict::Reject => {
                        return Attempt::Rejected(s.message().to_string())
                    }
                    Err(s) => return Attempt::Failed(format!("GrantSession: {s}")),
                }
            }
        };
        // What is registered follows the mode: marked seen here, so a
        // change from now on ends the keepalive below and comes back here.
        mode.borrow_and_update();
        let port = sidecar_port(mode);
        if !*registered {
            match call(cfg, client.register(register_request(cfg, id, port))).await {
                Ok(r) => {
                    *registered = true;
                    backoff.reset();
                    tracing::info!(registry = %addr, session = id, ids = ?r.ids, revision = r.revision, sidecar_port = port, "registered");
                    state.send_replace(RegistrationState::Registered(Registration {
                        session_id: id,
                        ids: r.ids,
                        revision: r.revision,
                        registry: addr.to_string(),
                        sidecar_port: port,
                    }));
                }
                Err(s) => match verdict(&s) {
                    Verdict::Reject => return Attempt::Rejected(s.message().to_string()),
                    // Unknown session (or namespace): grant anew, after a backoff
                    // so that a missing namespace does not spin.
                    Verdict::SessionLost => {
                        *session = None;
                        return Attempt::Failed(format!("Register: {s}"));
                    }
                    Verdict::Retry => return Attempt::Failed(format!("Register: {s}")),
                },
            }
        }
        match keepalive(cfg, &mut client, id, shutdown, mode, port).await {
            KeepAliveEnd::Shutdown => return Attempt::Shutdown(Some(client)),
            KeepAliveEnd::Reregister => {
                tracing::info!(registry = %addr, session = id, sidecar_port = sidecar_port(mode), "mode switched: registering again");
                *registered = false;
            }
            KeepAliveEnd::SessionLost => {
                tracing::warn!(registry = %addr, session = id, "session lost (expired or revoked): registering again under a new session");
                *session = None;
                *registered = false;
                state.send_replace(RegistrationState::Registering);
            }
            KeepAliveEnd::Broken(reason) => return Attempt::Failed(reason),
        }
    }
}

/// A unary call bounded by `request_timeout`.
async fn call<T>(
    cfg: &Config,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(cfg.request_timeout, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {} ms",
            cfg.request_timeout.as_millis()
        ))),
    }
}

/// The `Register` request for this instance, bound to `session`, with
/// `meshreg.io/sidecar-port` when `sidecar_port` is set (mesh mode).
pub(crate) fn register_request(
    cfg: &Config,
    session: u64,
    sidecar_port: Option<u16>,
) -> pb::RegisterRequest {
    let inst = &cfg.instance;
    let mut metadata: std::collections::HashMap<String, String> = inst
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(p) = sidecar_port {
        metadata.insert(SIDECAR_PORT_KEY.to_string(), p.to_string());
    }
    pb::RegisterRequest {
        instances: vec![pb::register_request::Entry {
            instance: Some(pb::Instance {
                namespace: cfg.namespace.clone(),
                app: inst.app.clone(),
                id: inst.id.clone(),
                address: inst.address.clone(),
                ports: inst
                    .ports
                    .iter()
                    .map(|(k, v)| (k.clone(), u32::from(*v)))
                    .collect(),
                labels: inst
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                metadata,
                weight: inst.weight,
                health: pb::Health::Serving as i32,
                locality: Some(pb::Locality {
                    region: cfg.locality.region.clone(),
                    zone: cfg.locality.zone.clone(),
                    subzone: cfg.locality.subzone.clone(),
                }),
                session,
                ..Default::default()
            }),
            services: inst
                .services
                .iter()
                .map(|s| pb::ServiceDef {
                    name: s.name.clone(),
                    protocol: s.protocol.clone(),
                    port_name: s.port_name.clone(),
                    params: s
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect(),
        }],
    }
}

/// Renews `session` every TTL/3 over one `KeepAlive` stream until the
/// stream breaks, the session is lost, shutdown is asked, or the mode
/// changes the sidecar port from `registered_port`. Two intervals
/// without an answer (2/3 of the TTL) count as a broken stream, which
/// leaves a third of the TTL to reach another node.
async fn keepalive(
    cfg: &Config,
    client: &mut RegistryClient<Channel>,
    session: u64,
    shutdown: &mut watch::Receiver<bool>,
    mode: &mut ModeRx,
    registered_port: Option<u16>,
) -> KeepAliveEnd {
    let interval = (cfg.session_ttl / 3).max(Duration::from_millis(100));
    let req = pb::KeepAliveRequest {
        session_id: session,
    };
    // At most a few renewals in flight; the ticker never queues more.
    let (tx, rx) = mpsc::channel(4);
    if tx.try_send(req).is_err() {
        return KeepAliveEnd::Broken("keepalive channel closed".into());
    }
    let mut stream = match call(cfg, client.keep_alive(ReceiverStream::new(rx))).await {
        Ok(s) => s,
        Err(s) if verdict(&s) == Verdict::SessionLost => return KeepAliveEnd::SessionLost,
        Err(s) => return KeepAliveEnd::Broken(format!("KeepAlive: {s}")),
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    let mut mode_open = true;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return KeepAliveEnd::Shutdown,
            r = mode.changed(), if mode_open => {
                if r.is_err() {
                    mode_open = false;
                } else if sidecar_port(mode) != registered_port {
                    return KeepAliveEnd::Reregister;
                }
            }
            _ = ticker.tick() => {
                if last_ok.elapsed() >= interval * 2 {
                    return KeepAliveEnd::Broken(format!(
                        "no keepalive answer for {} ms",
                        last_ok.elapsed().as_millis()
                    ));
                }
                if tx.try_send(req).is_err() {
                    return KeepAliveEnd::Broken("keepalive requests are not being consumed".into());
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(_)) => last_ok = Instant::now(),
                Ok(None) => return KeepAliveEnd::Broken("KeepAlive stream closed by the server".into()),
                Err(s) if verdict(&s) == Verdict::SessionLost => return KeepAliveEnd::SessionLost,
                Err(s) => return KeepAliveEnd::Broken(format!("KeepAlive: {s}")),
            },
        }
    }
}

/// Revokes `session` (removing the instance): on `client` if given, else
/// on each registry node in turn until one answers.
async fn revoke(
    cfg: &Config,
    client: Option<RegistryClient<Channel>>,
    session: Option<u64>,
    start: usize,
) {
    let Some(id) = session else { return };
    if let Some(c) = client {
        if revoke_on(cfg, c, id, "the current node").await {
            return;
        }
    }
    let n = cfg.registries.len();
    for k in 0..n {
        let addr = &cfg.registries[(start + k) % n];
        let Ok(channel) = crate::client::connect(cfg, addr).await else {
            continue;
        };
        if revoke_on(cfg, RegistryClient::new(channel), id, addr).await {
            return;
        }
    }
    tracing::warn!(
        session = id,
        "no registry node answered RevokeSession; the instance goes when the session expires"
    );
}

/// One `RevokeSession` call; true when the session is gone (revoked now,
/// or already unknown to the registry).
async fn revoke_on(cfg: &Config, mut c: RegistryClient<Channel>, id: u64, registry: &str) -> bool {
    let req = pb::RevokeSessionRequest { session_id: id };
    match call(cfg, c.revoke_session(req)).await {
        Ok(r) => {
            tracing::info!(
                session = id,
                removed = r.removed_instances,
                "session revoked"
            );
            true
        }
        Err(s) if s.code() == Code::NotFound => true,
        Err(s) => {
            tracing::warn!(%registry, session = id, error = %s, "RevokeSession failed; trying other nodes");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_registry_errors() {
        assert_eq!(
            verdict(&tonic::Status::not_found("session 3")),
            Verdict::SessionLost
        );
        assert_eq!(
            verdict(&tonic::Status::invalid_argument("port")),
            Verdict::Reject
        );
        assert_eq!(
            verdict(&tonic::Status::unavailable("not leader")),
            Verdict::Retry
        );
        assert_eq!(
            verdict(&tonic::Status::deadline_exceeded("slow")),
            Verdict::Retry
        );
    }
}
