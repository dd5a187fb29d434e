//! The admin port (15000), in the spirit of Envoy's admin interface:
//!
//! | path | what |
//! |---|---|
//! | `GET /config_dump` | JSON: node, xDS state (connected, subscriptions, versions, NACKs), listeners, routes, clusters with endpoints |
//! | `GET /clusters` | one line per endpoint stat, Envoy's text format (`?format=json` for JSON) |
//! | `GET /stats` | Prometheus text format |
//! | `GET /ready` | 200 `LIVE` when configured and listening; 503 otherwise (`NOT READY`, `DRAINING`) |
//! | `POST /drain` | stop accepting, finish in-flight requests, exit |

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::ads::Kind;
use crate::config::{Action, LbPolicy};
use crate::runtime::LATENCY_BOUNDS;
use crate::{Proxy, STATUS_CLASSES};

/// Binds the admin port.
///
/// # Errors
/// The address cannot be bound (e.g. in use by another proxy).
pub async fn bind(proxy: &Proxy) -> anyhow::Result<tokio::net::TcpListener> {
    let b = &proxy.bootstrap;
    let addr: std::net::SocketAddr = format!("{}:{}", b.admin_ip, b.admin_port)
        .parse()
        .map_err(|e| anyhow::anyhow!("admin_ip {:?}: {e}", b.admin_ip))?;
    crate::listener::bind(addr).map_err(|e| anyhow::anyhow!("binding the admin port {addr}: {e}"))
}

/// Serves the admin API until the process ends.
pub async fn serve(proxy: Arc<Proxy>, sock: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/config_dump", get(config_dump))
        .route("/clusters", get(clusters))
        .route("/stats", get(stats))
        .route("/stats/prometheus", get(stats))
        .route("/ready", get(ready))
        .route("/drain", post(drain))
        .with_state(proxy);
    if let Err(e) = axum::serve(sock, app).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn ready(State(p): State<Arc<Proxy>>) -> Response {
    if p.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n").into_response()
    } else if p.is_ready() {
        (StatusCode::OK, "LIVE\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n").into_response()
    }
}

async fn drain(State(p): State<Arc<Proxy>>) -> &'static str {
    p.drain();
    "draining\n"
}

fn lb_name(lb: LbPolicy) -> &'static str {
    match lb {
        LbPolicy::RoundRobin => "ROUND_ROBIN",
        LbPolicy::LeastRequest => "LEAST_REQUEST",
        LbPolicy::Random => "RANDOM",
        LbPolicy::RingHash => "RING_HASH",
    }
}

async fn config_dump(State(p): State<Arc<Proxy>>) -> Json<serde_json::Value> {
    let rt = p.runtime();
    let ads = p.ads();
    let bound = p.bound.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let listeners: Vec<_> = ads
        .res
        .listeners
        .iter()
        .map(|(n, l)| {
            json!({
                "name": n,
                "version": l.version,
                "address": l.value.addr.to_string(),
                "bound": bound.get(n).map(|a| a.to_string()),
                "route_config": l.value.http.as_ref().map(|h| h.route_name.clone()),
                "tcp_cluster": l.value.tcp_cluster,
            })
        })
        .collect();
    let routes: Vec<_> = ads
        .res
        .routes
        .iter()
        .map(|(n, r)| {
            let vhosts: Vec<_> = r
                .value
                .vhosts
                .iter()
                .map(|vh| {
                    let routes: Vec<_> = vh
                        .routes
                        .iter()
                        .map(|rt| match &rt.action {
                            Action::Forward(f) => json!({"path": format!("{:?}", rt.path), "headers": rt.headers.len(), "clusters": f.clusters, "timeout_ms": f.timeout.map(|t| t.as_millis() as u64), "retry": f.retry.as_ref().map(|r| json!({"num_retries": r.num_retries, "per_try_timeout_ms": r.per_try_timeout.map(|t| t.as_millis() as u64)}))}),
                            Action::Direct { status, .. } => json!({"path": format!("{:?}", rt.path), "direct_response": status}),
                        })
                        .collect();
                    json!({"name": vh.name, "routes": routes})
                })
                .collect();
            json!({"name": n, "version": r.version, "virtual_hosts": vhosts})
        })
        .collect();
    let clusters: Vec<_> = ads
        .res
        .clusters
        .iter()
        .map(|(n, c)| {
            let endpoints: Vec<_> = rt
                .clusters
                .get(n)
                .map(|cl| {
                    cl.hosts
                        .iter()
                        .map(|h| {
                            json!({
                                "address": h.cfg.authority,
                                "app_port": h.cfg.app_port,
                                "weight": h.cfg.weight,
                                "healthy": h.cfg.healthy,
                                "ejected": h.state.is_ejected(),
                                "locality": [h.cfg.locality.0, h.cfg.locality.1, h.cfg.locality.2],
                                "labels": h.cfg.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": n,
                "version": c.version,
                "type": if c.value.eds_name.is_some() { "EDS" } else { "STATIC" },
                "eds_service_name": c.value.eds_name,
                "eds_version": c.value.eds_name.as_ref().and_then(|e| ads.res.endpoints.get(e)).map(|e| e.version.clone()),
                "lb_policy": lb_name(c.value.lb),
                "connect_timeout_ms": c.value.connect_timeout.as_millis() as u64,
                "circuit_breakers": {
                    "max_connections": c.value.limits.max_connections,
                    "max_pending_requests": c.value.limits.max_pending,
                    "max_requests": c.value.limits.max_requests,
                    "max_retries": c.value.limits.max_retries,
                },
                "outlier_detection": c.value.outlier.as_ref().map(|o| json!({
                    "consecutive_5xx": o.consecutive_5xx,
                    "consecutive_gateway_failure": o.consecutive_gateway,
                    "base_ejection_time_ms": o.base_ejection.as_millis() as u64,
                    "max_ejection_percent": o.max_ejection_percent,
                })),
                "endpoints": endpoints,
            })
        })
        .collect();
    let subs: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .into_iter()
        .map(|k| (k.short().to_string(), json!(ads.subscribed(k))))
        .collect();
    Json(json!({
        "node": {
            "id": p.bootstrap.node_id,
            "namespace": p.bootstrap.namespace,
            "app": p.bootstrap.app,
        },
        "xds": {
            "connected": p.xds_connected(),
            "warm": ads.is_warm(),
            "subscriptions": subs,
            "last_nack": ads.last_nack,
        },
        "listeners": listeners,
        "route_configs": routes,
        "clusters": clusters,
    }))
}

#[derive(Debug, serde::Deserialize)]
struct Format {
    format: Option<String>,
}

async fn clusters(State(p): State<Arc<Proxy>>, Query(q): Query<Format>) -> Response {
    let rt = p.runtime();
    let mut names: Vec<&String> = rt.clusters.keys().collect();
    names.sort();
    if q.format.as_deref() == Some("json") {
        let v: Vec<_> = names
            .iter()
            .map(|n| {
                let c = &rt.clusters[*n];
                json!({
                    "name": n,
                    "hosts": c.hosts.iter().map(|h| json!({
                        "address": h.state.authority,
                        "healthy": h.cfg.healthy,
                        "ejected": h.state.is_ejected(),
                        "weight": h.cfg.weight,
                        "rq_active": h.state.stats.active.load(Relaxed),
                        "rq_total": h.state.stats.total.load(Relaxed),
                        "rq_error": h.state.stats.errors.load(Relaxed),
                        "cx_connect_fail": h.state.stats.connect_failures.load(Relaxed),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return Json(json!({ "clusters": v })).into_response();
    }
    let mut out = String::new();
    for n in names {
        let c = &rt.clusters[n];
        let l = &c.cfg.limits;
        let _ = writeln!(
            out,
            "{n}::default_priority::max_connections::{}",
            l.max_connections
        );
        let _ = writeln!(
            out,
            "{n}::default_priority::max_pending_requests::{}",
            l.max_pending
        );
        let _ = writeln!(
            out,
            "{n}::default_priority::max_requests::{}",
            l.max_requests
        );
        let _ = writeln!(out, "{n}::default_priority::max_retries::{}", l.max_retries);
        for h in &c.hosts {
            let a = &h.state.authority;
            let s = &h.state.stats;
            let flags = match (h.cfg.healthy, h.state.is_ejected()) {
                (true, false) => "healthy",
                (false, false) => "/failed_eds_health",
                (true, true) => "/failed_outlier_check",
                (false, true) => "/failed_eds_health/failed_outlier_check",
            };
            let _ = writeln!(
                out,
                "{n}::{a}::cx_connect_fail::{}",
                s.connect_failures.load(Relaxed)
            );
            let _ = writeln!(out, "{n}::{a}::rq_active::{}", s.active.load(Relaxed));
            let _ = writeln!(out, "{n}::{a}::rq_error::{}", s.errors.load(Relaxed));
            let _ = writeln!(out, "{n}::{a}::rq_total::{}", s.total.load(Relaxed));
            let _ = writeln!(out, "{n}::{a}::health_flags::{flags}");
            let _ = writeln!(out, "{n}::{a}::weight::{}", h.cfg.weight);
            let _ = writeln!(out, "{n}::{a}::region::{}", h.cfg.locality.0);
            let _ = writeln!(out, "{n}::{a}::zone::{}", h.cfg.locality.1);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain")], out).into_response()
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

async fn stats(State(p): State<Arc<Proxy>>) -> Response {
    let mut out = String::new();
    let rt = p.runtime();
    let ads = p.ads();
    let _ = writeln!(out, "# TYPE meshreg_proxy_xds_connected gauge");
    let _ = writeln!(
        out,
        "meshreg_proxy_xds_connected {}",
        u8::from(p.xds_connected())
    );
    let _ = writeln!(out, "# TYPE meshreg_proxy_xds_updates_total counter");
    for k in Kind::ALL {
        let _ = writeln!(
            out,
            "meshreg_proxy_xds_updates_total{{type=\"{}\"}} {}",
            k.short(),
            ads.updates[k as usize]
        );
    }
    let _ = writeln!(out, "# TYPE meshreg_proxy_xds_nacks_total counter");
    for k in Kind::ALL {
        let _ = writeln!(
            out,
            "meshreg_proxy_xds_nacks_total{{type=\"{}\"}} {}",
            k.short(),
            ads.nacks[k as usize]
        );
    }
    drop(ads);
    let ls = p
        .listener_stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (metric, kind, get) in [
        (
            "meshreg_proxy_downstream_cx_total",
            "counter",
            (|s: &crate::listener::ListenerStats| s.cx_total.load(Relaxed))
                as fn(&crate::listener::ListenerStats) -> u64,
        ),
        ("meshreg_proxy_downstream_cx_active", "gauge", |s| {
            s.cx_active.load(Relaxed)
        }),
        (
            "meshreg_proxy_downstream_cx_no_filter_chain_total",
            "counter",
            |s| s.cx_no_chain.load(Relaxed),
        ),
        (
            "meshreg_proxy_downstream_cx_detect_timeout_total",
            "counter",
            |s| s.cx_detect_timeout.load(Relaxed),
        ),
        (
            "meshreg_proxy_tcp_upstream_connect_fail_total",
            "counter",
            |s| s.tcp_upstream_fail.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for (n, s) in &ls {
            let _ = writeln!(out, "{metric}{{listener=\"{}\"}} {}", esc(n), get(s));
        }
    }
    let mut names: Vec<&String> = rt.clusters.keys().collect();
    names.sort();
    let _ = writeln!(out, "# TYPE meshreg_proxy_downstream_rq_total counter");
    for (n, s) in &ls {
        // Index 0 (a local failure) is unused: every request is answered.
        for (class, c) in STATUS_CLASSES.iter().zip(&s.rq_by_class).skip(1) {
            let _ = writeln!(
                out,
                "meshreg_proxy_downstream_rq_total{{listener=\"{}\",class=\"{class}\"}} {}",
                esc(n),
                c.load(Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# TYPE meshreg_proxy_upstream_rq_total counter");
    for n in &names {
        let s = &rt.clusters[*n].stats;
        for (class, c) in STATUS_CLASSES.iter().zip(&s.by_class) {
            let _ = writeln!(
                out,
                "meshreg_proxy_upstream_rq_total{{cluster=\"{}\",class=\"{class}\"}} {}",
                esc(n),
                c.load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# TYPE meshreg_proxy_upstream_rq_time_seconds histogram"
    );
    for n in &names {
        let h = rt.clusters[*n].stats.rq_time.snapshot();
        let n = esc(n);
        for ((le, _), c) in LATENCY_BOUNDS.iter().zip(h.cumulative) {
            let _ = writeln!(
                out,
                "meshreg_proxy_upstream_rq_time_seconds_bucket{{cluster=\"{n}\",le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            out,
            "meshreg_proxy_upstream_rq_time_seconds_bucket{{cluster=\"{n}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "meshreg_proxy_upstream_rq_time_seconds_sum{{cluster=\"{n}\"}} {}.{:06}",
            h.sum_us / 1_000_000,
            h.sum_us % 1_000_000
        );
        let _ = writeln!(
            out,
            "meshreg_proxy_upstream_rq_time_seconds_count{{cluster=\"{n}\"}} {}",
            h.count
        );
    }
    for (metric, kind, get) in [
        (
            "meshreg_proxy_upstream_rq_active",
            "gauge",
            (|s: &crate::runtime::ClusterStats| u64::from(s.active.load(Relaxed)))
                as fn(&crate::runtime::ClusterStats) -> u64,
        ),
        ("meshreg_proxy_upstream_rq_retry_total", "counter", |s| {
            s.retries.load(Relaxed)
        }),
        ("meshreg_proxy_upstream_rq_timeout_total", "counter", |s| {
            s.timeouts.load(Relaxed)
        }),
        (
            "meshreg_proxy_upstream_cx_connect_fail_total",
            "counter",
            |s| s.connect_failures.load(Relaxed),
        ),
        (
            "meshreg_proxy_upstream_rq_pending_overflow_total",
            "counter",
            |s| s.overflow.load(Relaxed),
        ),
        (
            "meshreg_proxy_outlier_detection_ejections_total",
            "counter",
            |s| s.ejections.load(Relaxed),
        ),
        ("meshreg_proxy_upstream_no_healthy_total", "counter", |s| {
            s.no_healthy.load(Relaxed)
        }),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for n in &names {
            let _ = writeln!(
                out,
                "{metric}{{cluster=\"{}\"}} {}",
                esc(n),
                get(&rt.clusters[*n].stats)
            );
        }
    }
    let _ = writeln!(out, "# TYPE meshreg_proxy_membership_healthy gauge");
    for n in &names {
        let c = &rt.clusters[*n];
        let healthy = c
            .hosts
            .iter()
            .filter(|h| h.cfg.healthy && !h.state.is_ejected())
            .count();
        let _ = writeln!(
            out,
            "meshreg_proxy_membership_healthy{{cluster=\"{}\"}} {healthy}",
            esc(n)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
