//! The REST/JSON API on axum (port 7070), mirroring the gRPC API under
//! `/v1/`, plus `/healthz`, `/readyz` and `/metrics`. Routes are listed in
//! [`router`] and documented in docs/api.md.
//!
//! List endpoints support Consul-style blocking queries: `?index=R&wait=30s`
//! waits until the namespace changes after revision `R` (or `wait` passes)
//! and returns the namespace's revision in the `X-Meshreg-Index` header.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::api::ops;
use crate::error::Error;
use crate::model::{Health, InstanceKey, InstanceSpec};
use crate::node::{Node, ReadOptions};
use crate::selector::{parse_labels, Selector};

/// Largest request body accepted, bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Header carrying the namespace revision of a list response.
pub const INDEX_HEADER: &str = "x-meshreg-index";

/// A registry error as an HTTP response: the one place errors become
/// status codes. Body: `{"error": {"code": "...", "message": "...", "field": "..."}}`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, code) = match &e {
            Error::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            Error::FailedPrecondition(_) => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
            Error::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "NOT_LEADER"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
            Error::Storage(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
            }
        };
        let mut body = json!({"code": code, "message": e.to_string()});
        match &e {
            Error::InvalidArgument { field, .. } => body["field"] = json!(field),
            Error::NotLeader {
                leader_id,
                leader_addr,
                leader_http_addr,
            } => {
                body["leader_id"] = json!(leader_id);
                body["leader_addr"] = json!(leader_addr);
                body["leader_http_addr"] = json!(leader_http_addr);
            }
            _ => {}
        }
        (status, Json(json!({ "error": body }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body, naming the path of the offending field on error.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Error::invalid(field, e.inner().to_string())
    })
}

fn parse_query<T: DeserializeOwned + Default>(q: Option<String>) -> Result<T, Error> {
    match q {
        None => Ok(T::default()),
        Some(q) => {
            serde_urlencoded::from_str(&q).map_err(|e| Error::invalid("query", e.to_string()))
        }
    }
}

/// Parses `30s`, `500ms`, `5m` or a bare number of seconds.
fn parse_wait(s: &str) -> Result<Duration, Error> {
    let s = s.trim();
    let bad = || {
        Error::invalid(
            "wait",
            format!("{s:?} is not a duration like 30s, 500ms or 5m"),
        )
    };
    let (num, mult_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(Duration::from_millis(n.saturating_mul(mult_ms)))
}

/// Selector query parameters.
const SELECTOR: [&str; 7] = [
    "app", "service", "health", "region", "zone", "subzone", "labels",
];
/// Read-option query parameters.
const READ: [&str; 2] = ["min_revision", "linearizable"];
/// Blocking-query parameters.
const BLOCKING: [&str; 2] = ["index", "wait"];
/// Watch-only parameters.
const WATCH: [&str; 1] = ["from_revision"];

/// Query parameters of list and watch endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ListQuery {
    app: Option<String>,
    service: Option<String>,
    /// Comma-separated health states.
    health: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    subzone: Option<String>,
    /// Kubernetes label selector string.
    labels: Option<String>,
    min_revision: Option<u64>,
    linearizable: Option<bool>,
    index: Option<u64>,
    wait: Option<String>,
    from_revision: Option<u64>,
}

impl ListQuery {
    /// Rejects parameters the route does not use, naming them. `groups`
    /// are the parameter groups the route takes.
    fn only(&self, groups: &[&[&str]]) -> Result<(), Error> {
        let allowed: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        let set = [
            ("app", self.app.is_some()),
            ("service", self.service.is_some()),
            ("health", self.health.is_some()),
            ("region", self.region.is_some()),
            ("zone", self.zone.is_some()),
            ("subzone", self.subzone.is_some()),
            ("labels", self.labels.is_some()),
            ("min_revision", self.min_revision.is_some()),
            ("linearizable", self.linearizable.is_some()),
            ("index", self.index.is_some()),
            ("wait", self.wait.is_some()),
            ("from_revision", self.from_revision.is_some()),
        ];
        for (name, present) in set {
            if present && !allowed.contains(&name) {
                return Err(Error::invalid(
                    name,
                    format!(
                        "not accepted by this route; it takes: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn selector(&self) -> Result<Selector, Error> {
        let mut health = Vec::new();
        if let Some(h) = &self.health {
            for part in h.split(',').filter(|p| !p.trim().is_empty()) {
                health.push(
                    part.parse::<Health>()
                        .map_err(|e| Error::invalid("health", e))?,
                );
            }
        }
        let labels = match &self.labels {
            Some(l) => parse_labels("labels", l)?,
            None => Vec::new(),
        };
        let sel = Selector {
            app: self.app.clone().filter(|s| !s.is_empty()),
            service: self.service.clone().filter(|s| !s.is_empty()),
            health,
            region: self.region.clone().filter(|s| !s.is_empty()),
            zone: self.zone.clone().filter(|s| !s.is_empty()),
            subzone: self.subzone.clone().filter(|s| !s.is_empty()),
            labels,
        };
        sel.validate("selector")?;
        Ok(sel)
    }

    fn read(&self) -> ReadOptions {
        ReadOptions {
            min_revision: self.min_revision.unwrap_or(0),
            linearizable: self.linearizable.unwrap_or(false),
        }
    }

    /// Runs the blocking part of a blocking query, if one was asked for.
    async fn block(&self, node: &Node, ns: &str) -> Result<(), Error> {
        let Some(index) = self.index else {
            return Ok(());
        };
        let max = Duration::from_millis(node.config().watch.max_blocking_wait_ms);
        let wait = match &self.wait {
            Some(w) => parse_wait(w)?.min(max),
            None => Duration::from_secs(300).min(max),
        };
        ops::require_namespace(node, "namespace", ns)?;
        node.block_on_namespace(ns, index, wait).await;
        Ok(())
    }
}

fn with_index<T: Serialize>(body: T, ns_revision: u64) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&ns_revision.to_string()) {
        resp.headers_mut().insert(INDEX_HEADER, v);
    }
    resp
}

/// The HTTP router for `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/v1/namespaces/{ns}",
            axum::routing::delete(delete_namespace),
        )
        .route(
            "/v1/namespaces/{ns}/instances",
            get(list_instances).post(register),
        )
        .route(
            "/v1/namespaces/{ns}/instances/{app}/{id}",
            get(get_instance).delete(deregister),
        )
        .route("/v1/namespaces/{ns}/apps", get(list_apps))
        .route(
            "/v1/namespaces/{ns}/apps/{app}/revisions/{revision}",
            get(get_revision),
        )
        .route("/v1/namespaces/{ns}/services/{service}", get(resolve))
        .route("/v1/namespaces/{ns}/watch", get(watch))
        .route("/v1/cluster", get(cluster_status))
        .route("/debug/faults", get(get_faults).put(put_faults))
        .route("/v1/sessions", post(grant_session))
        .route("/v1/sessions/{id}", axum::routing::delete(revoke_session))
        .route("/v1/sessions/{id}/keepalive", put(keepalive))
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                let e = Error::FailedPrecondition(format!(
                    "method {method} is not allowed on {}; see docs/api.md",
                    uri.path()
                ));
                let mut resp = ApiError(e).into_response();
                *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                resp
            },
        )
        .fallback(|uri: axum::http::Uri| async move {
            ApiError(Error::NotFound {
                kind: "route".into(),
                name: uri.path().to_string(),
                hint: "; see docs/api.md for the HTTP API".into(),
            })
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

type S = State<Arc<Node>>;

async fn readyz(State(node): S) -> Response {
    if node.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no Raft leader yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(node): S) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceBody {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn list_namespaces(State(node): S, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&READ])?;
    let (ns, revision) = ops::namespaces(&node, q.read()).await?;
    Ok(Json(json!({"revision": revision, "namespaces": ns})).into_response())
}

async fn create_namespace(State(node): S, body: Bytes) -> ApiResult<Response> {
    let b: NamespaceBody = parse_json(&body)?;
    let revision = ops::create_namespace(&node, b.name, b.labels).await?;
    Ok((StatusCode::CREATED, Json(json!({"revision": revision}))).into_response())
}

async fn delete_namespace(State(node): S, Path(ns): Path<String>) -> ApiResult<Response> {
    let revision = ops::delete_namespace(&node, ns).await?;
    Ok(Json(json!({"revision": revision})).into_response())
}

async fn register(State(node): S, Path(ns): Path<String>, body: Bytes) -> ApiResult<Response> {
    let value: serde_json::Value = parse_json(&body)?;
    let mut specs: Vec<InstanceSpec> = if value.get("instances").is_some() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Batch {
            instances: Vec<InstanceSpec>,
        }
        parse_json::<Batch>(&body)?.instances
    } else {
        vec![parse_json(&body)?]
    };
    for (i, s) in specs.iter_mut().enumerate() {
        if s.namespace.is_empty() {
            s.namespace = ns.clone();
        } else if s.namespace != ns {
            return Err(Error::invalid(
                format!("instances[{i}].namespace"),
                format!(
                    "{:?} differs from the namespace in the path, {ns:?}",
                    s.namespace
                ),
            )
            .into());
        }
    }
    let (revision, ids) = ops::register(&node, specs).await?;
    Ok(Json(json!({"revision": revision, "ids": ids})).into_response())
}

async fn deregister(
    State(node): S,
    Path((ns, app, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let (revision, removed) = ops::deregister(
        &node,
        vec![InstanceKey {
            namespace: ns,
            app,
            id,
        }],
    )
    .await?;
    Ok(Json(json!({"revision": revision, "removed": removed})).into_response())
}

async fn list_instances(
    State(node): S,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&SELECTOR, &READ, &BLOCKING])?;
    let sel = q.selector()?;
    q.block(&node, &ns).await?;
    let r = ops::list(&node, &ns, &sel, q.read()).await?;
    Ok(with_index(
        json!({"revision": r.revision, "instances": r.value}),
        r.namespace_revision,
    ))
}

async fn get_instance(
    State(node): S,
    Path((ns, app, id)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&READ])?;
    let r = ops::get(
        &node,
        &InstanceKey {
            namespace: ns,
            app,
            id,
        },
        q.read(),
    )
    .await?;
    Ok(with_index(
        json!({"revision": r.revision, "instance": r.value}),
        r.namespace_revision,
    ))
}

async fn list_apps(
    State(node): S,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&READ, &BLOCKING])?;
    q.block(&node, &ns).await?;
    let r = ops::applications(&node, &ns, q.read()).await?;
    Ok(with_index(
        json!({"revision": r.revision, "applications": r.value}),
        r.namespace_revision,
    ))
}

async fn get_revision(
    State(node): S,
    Path((ns, app, revision)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&READ])?;
    let r = ops::service_revision(&node, &ns, &app, &revision, q.read()).await?;
    Ok(Json(json!({"revision": r.revision, "service_revision": r.value})).into_response())
}

async fn resolve(
    State(node): S,
    Path((ns, service)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&READ, &BLOCKING])?;
    q.block(&node, &ns).await?;
    let r = ops::resolve(&node, &ns, &service, q.read()).await?;
    Ok(with_index(
        json!({"revision": r.revision, "service": service, "apps": r.value}),
        r.namespace_revision,
    ))
}

/// `GET /v1/namespaces/{ns}/watch?from_revision=R&<selector>`: newline-
/// delimited JSON, one watch message per line.
async fn watch(
    State(node): S,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q: ListQuery = parse_query(q)?;
    q.only(&[&SELECTOR, &WATCH])?;
    let sel = q.selector()?;
    ops::require_namespace(&node, "namespace", &ns)?;
    let rx = crate::watch::spawn(node.clone(), ns, sel, q.from_revision.unwrap_or(0));
    let stream = ReceiverStream::new(rx).map(|m| {
        let mut line = serde_json::to_vec(&m)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /v1/cluster`: this node's view of the cluster.
async fn cluster_status(State(node): S) -> ApiResult<Response> {
    let s = node.status();
    let members: Vec<serde_json::Value> = s
        .members
        .iter()
        .map(|m| {
            json!({"node_id": m.id, "raft_addr": m.node.raft_addr, "grpc_addr": m.node.grpc_addr,
                   "http_addr": m.node.http_addr, "voter": m.voter, "matched_index": m.matched_index, "lag": m.lag})
        })
        .collect();
    Ok(Json(json!({
        "node_id": s.id, "state": s.state, "term": s.term, "leader_id": s.leader,
        "last_log_index": s.last_log_index, "applied_index": s.applied, "snapshot_index": s.snapshot, "purged_index": s.purged,
        "revision": s.revision, "members": members,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    /// Node ids whose Raft links to and from this node are cut.
    blocked_peers: std::collections::BTreeSet<u64>,
}

fn faults_enabled(node: &Node) -> Result<(), Error> {
    if node.config().enable_fault_injection {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(
            "fault injection is disabled; start the server with --enable-fault-injection (tests only)".into(),
        ))
    }
}

/// `GET /debug/faults`: the blocked peers (fault injection).
async fn get_faults(State(node): S) -> ApiResult<Response> {
    faults_enabled(&node)?;
    Ok(Json(json!({"blocked_peers": node.faults().blocked()})).into_response())
}

/// `PUT /debug/faults`: cut the Raft links to and from the listed peers.
async fn put_faults(State(node): S, body: Bytes) -> ApiResult<Response> {
    faults_enabled(&node)?;
    let b: FaultsBody = parse_json(&body)?;
    tracing::warn!(blocked = ?b.blocked_peers, "fault injection: Raft links cut");
    node.faults().set_blocked(b.blocked_peers.clone());
    Ok(Json(json!({"blocked_peers": b.blocked_peers})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    ttl_ms: u64,
}

async fn grant_session(State(node): S, body: Bytes) -> ApiResult<Response> {
    let b: GrantBody = parse_json(&body)?;
    let (id, ttl_ms, revision) = ops::grant_session(&node, b.ttl_ms).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session_id": id, "ttl_ms": ttl_ms, "revision": revision})),
    )
        .into_response())
}

fn session_id(raw: &str) -> Result<u64, Error> {
    raw.parse().map_err(|_| {
        Error::invalid(
            "session_id",
            format!("{raw:?} is not a session id (an unsigned integer)"),
        )
    })
}

async fn keepalive(State(node): S, Path(id): Path<String>) -> ApiResult<Response> {
    let id = session_id(&id)?;
    let ttl_ms = node.keepalive(id).await?;
    Ok(Json(json!({"session_id": id, "ttl_ms": ttl_ms})).into_response())
}

async fn revoke_session(State(node): S, Path(id): Path<String>) -> ApiResult<Response> {
    let id = session_id(&id)?;
    let (revision, removed) = ops::revoke_session(&node, id).await?;
    Ok(Json(json!({"revision": revision, "removed_instances": removed})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_durations() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn json_errors_name_the_field() {
        let e =
            parse_json::<InstanceSpec>(br#"{"app":"a","ports":{"http":"eighty"}}"#).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref field, .. } if field == "ports.http"),
            "{e:?}"
        );
        let e = parse_json::<InstanceSpec>(br#"{"app":"a","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse_json::<InstanceSpec>(b"{not json").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }));
    }
}
