//! Envoy resources (Listener, RouteConfiguration, Cluster,
//! ClusterLoadAssignment, envoy.config.*.v3) compiled into the proxy's
//! own configuration: what the data path reads per request.
//!
//! Compiling is also validation: a resource that cannot be compiled (an
//! invalid regex, an address without a port, an unsupported listener) is
//! rejected with a message naming the field, and the xDS client NACKs the
//! response that carried it and keeps the last good configuration.
//!
//! Supported subset (everything else is ignored, as Envoy ignores unknown
//! extensions it is not asked to enforce):
//! - Listener: `address.socket_address`, filter chains with an
//!   `HttpConnectionManager` (RDS or inline route config) or a `TcpProxy`
//!   (single cluster), `default_filter_chain`; `filter_chain_match.
//!   application_protocols` picks HTTP vs TCP (protocol detection).
//! - RouteConfiguration: virtual hosts (exact, `*.suffix`, `prefix.*`, `*`
//!   domains), routes matching path prefix / exact / safe regex and
//!   headers (exact, prefix, suffix, regex, present, contains, invert),
//!   cluster or weighted clusters, direct responses, timeout, retry policy
//!   (`retry_on`, `num_retries`, `per_try_timeout`,
//!   `retriable_status_codes`), header hash policy, `host_rewrite_literal`,
//!   `request_headers_to_remove`, `metadata_match` (`envoy.lb`) for subsets.
//! - Cluster: STATIC (inline `load_assignment`) and EDS; lb_policy
//!   ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH (MAGLEV is served by the
//!   ring); `connect_timeout`; `outlier_detection`; `circuit_breakers`
//!   (DEFAULT priority); `lb_subset_config`; `http2_protocol_options`.
//! - ClusterLoadAssignment: localities with priority, endpoints with
//!   address, health, weight, `envoy.lb` labels and the meshreg
//!   `sidecar_port` metadata.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{value::Kind, Any};
use http::header::HeaderName;
use prost::Message;
use regex::Regex;

/// Type URL of the HttpConnectionManager network filter.
pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// Type URL of the TcpProxy network filter.
pub const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Endpoint metadata namespace meshreg uses for sidecar hints.
pub const MESHREG_METADATA: &str = "meshreg";
/// Key under [`MESHREG_METADATA`]: the port of the endpoint's own sidecar.
pub const SIDECAR_PORT_KEY: &str = "sidecar_port";
/// Header carrying the application port when a request is sent to the
/// target's sidecar instead of the application itself.
pub const PORT_HEADER: &str = "x-meshreg-port";

fn dur(d: Option<&envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}

// ---------------------------------------------------------------------------
// Listeners

/// A compiled Listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerCfg {
    /// Resource name.
    pub name: String,
    /// Address to bind (IP and port from `address.socket_address`).
    pub addr: std::net::SocketAddr,
    /// HTTP connection manager, when a chain has one.
    pub http: Option<HttpCfg>,
    /// TCP proxy target cluster, when a chain (or the default chain) has
    /// one. Its endpoints are dialled at their application port
    /// ([`HostCfg::app_authority`]), never their sidecar's.
    pub tcp_cluster: Option<String>,
    /// With both an HTTP and a TCP chain: how long to wait for a
    /// connection's first bytes to tell HTTP from anything else
    /// (`listener_filters_timeout`; unset: [`DEFAULT_DETECT_TIMEOUT`]; zero:
    /// no limit, as in Envoy). `None` is no limit.
    pub detect_timeout: Option<Duration>,
    /// Whether a connection whose first bytes did not come in time goes to
    /// the TCP chain (`continue_on_listener_filters_timeout`, what a
    /// server-first protocol such as MySQL needs) rather than being closed;
    /// true when `listener_filters_timeout` is unset.
    pub detect_continue: bool,
}

/// Protocol detection wait when the Listener does not set
/// `listener_filters_timeout`, after which the connection goes to the TCP
/// chain (Envoy's 15 s and close would stall, then fail, every client of a
/// server-first protocol).
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);

/// What an HttpConnectionManager chain says.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCfg {
    /// Stats prefix.
    pub stat_prefix: String,
    /// RDS route configuration name, or the listener-scoped name of an inline one.
    pub route_name: String,
    /// The inline route configuration, when not RDS.
    pub inline_routes: Option<InlineRoutes>,
}

/// An inline route configuration, compiled once with its listener. Two
/// are equal when their protos are (the compiled table has no equality).
#[derive(Debug, Clone)]
pub struct InlineRoutes {
    src: Box<route::RouteConfiguration>,
    /// The compiled table.
    pub table: std::sync::Arc<RouteTable>,
}

impl PartialEq for InlineRoutes {
    fn eq(&self, other: &Self) -> bool {
        self.src == other.src
    }
}

fn decode_any<M: Message + Default>(any: &Any, field: &str) -> Result<M, String> {
    M::decode(any.value.as_slice())
        .map_err(|e| format!("{field}: cannot decode {}: {e}", any.type_url))
}

/// Compiles a Listener.
///
/// # Errors
/// No usable socket address, an undecodable filter, or neither an HTTP
/// connection manager nor a TCP proxy.
pub fn compile_listener(l: &listener::Listener) -> Result<ListenerCfg, String> {
    let sa = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(core::address::Address::SocketAddress(sa)) => sa,
        _ => {
            return Err(format!(
                "listener {:?}: address.socket_address is required",
                l.name
            ))
        }
    };
    let port = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if (1..=65535).contains(&p) => {
            p as u16
        }
        _ => {
            return Err(format!(
                "listener {:?}: address.socket_address.port_value must be 1..=65535",
                l.name
            ))
        }
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|e| {
        format!(
            "listener {:?}: address.socket_address.address {:?}: {e}",
            l.name, sa.address
        )
    })?;
    let detect_timeout = match &l.listener_filters_timeout {
        None => Some(DEFAULT_DETECT_TIMEOUT),
        Some(d) => match dur(Some(d)) {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => {
                return Err(format!(
                    "listener {:?}: listener_filters_timeout must not be negative",
                    l.name
                ))
            }
        },
    };
    let mut out = ListenerCfg {
        name: l.name.clone(),
        addr: std::net::SocketAddr::new(ip, port),
        http: None,
        tcp_cluster: None,
        detect_timeout,
        // Unset, both take meshreg's defaults (what its own listeners set).
        detect_continue: l.listener_filters_timeout.is_none()
            || l.continue_on_listener_filters_timeout,
    };
    let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
    for (ci, chain) in chains.enumerate() {
        for (fi, f) in chain.filters.iter().enumerate() {
            let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let field = format!("listener {:?}: filter_chains[{ci}].filters[{fi}]", l.name);
            if any.type_url == HCM_TYPE && out.http.is_none() {
                let m: hcm::HttpConnectionManager = decode_any(any, &field)?;
                out.http = Some(match m.route_specifier {
                    Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) => HttpCfg {
                        stat_prefix: m.stat_prefix,
                        route_name: rds.route_config_name,
                        inline_routes: None,
                    },
                    Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                        let table = std::sync::Arc::new(compile_routes(&rc)?);
                        HttpCfg {
                            stat_prefix: m.stat_prefix,
                            route_name: format!("{}#inline", l.name),
                            inline_routes: Some(InlineRoutes {
                                src: Box::new(rc),
                                table,
                            }),
                        }
                    }
                    _ => return Err(format!("{field}: rds or route_config is required")),
                });
            } else if any.type_url == TCP_PROXY_TYPE && out.tcp_cluster.is_none() {
                let t: tcp_proxy::TcpProxy = decode_any(any, &field)?;
                match t.cluster_specifier {
                    Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
                        out.tcp_cluster = Some(c);
                    }
                    _ => return Err(format!("{field}: tcp_proxy.cluster is required")),
                }
            }
        }
    }
    if out.http.is_none() && out.tcp_cluster.is_none() {
        return Err(format!(
            "listener {:?}: no http_connection_manager or tcp_proxy filter",
            l.name
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Routes

/// A compiled RouteConfiguration.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Resource name.
    pub name: String,
    /// Virtual hosts in resource order.
    pub vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.example.com` → (".example.com", vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// `example.*` → ("example.", vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// How a route matches the path.
#[derive(Debug)]
pub enum PathMatch {
    /// Path starts with.
    Prefix(String),
    /// Path (without query) equals.
    Exact(String),
    /// Path (without query) matches the whole regex.
    Regex(Regex),
}

/// How a header matcher matches a value.
#[derive(Debug)]
pub enum ValueMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Whole value matches.
    Regex(Regex),
    /// Header present (true) or absent (false).
    Present(bool),
}

/// One header condition.
#[derive(Debug)]
pub struct HeaderMatch {
    /// Header name (lower case); `:method`, `:authority`, `:path` and
    /// `:scheme` address the request line.
    pub name: String,
    /// The match.
    pub value: ValueMatch,
    /// Inverted.
    pub invert: bool,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Path condition.
    pub path: PathMatch,
    /// Header conditions (all must hold).
    pub headers: Vec<HeaderMatch>,
    /// What to do.
    pub action: Action,
    /// Headers removed before forwarding.
    pub remove_headers: Vec<HeaderName>,
}

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Forward to a cluster.
    Forward(Box<ForwardAction>),
    /// Answer locally.
    Direct {
        /// HTTP status.
        status: u16,
        /// Body.
        body: bytes::Bytes,
    },
}

/// Where and how to forward.
#[derive(Debug)]
pub struct ForwardAction {
    /// (cluster, weight); one entry for a plain cluster.
    pub clusters: Vec<(String, u32)>,
    /// Sum of the weights.
    pub total_weight: u64,
    /// Whole-request timeout until the response headers (Envoy default 15 s; `None` = disabled).
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Header whose value is hashed for RING_HASH clusters.
    pub hash_header: Option<HeaderName>,
    /// Replaces the Host / :authority.
    pub host_rewrite: Option<http::HeaderValue>,
    /// Subset selection (`metadata_match.filter_metadata["envoy.lb"]`), sorted.
    pub metadata_match: Vec<(String, String)>,
}

/// Envoy's `RetryPolicy`, the conditions this proxy implements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `5xx`: any 5xx response, or a reset / timeout.
    pub on_5xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub on_gateway_error: bool,
    /// `connect-failure`.
    pub on_connect_failure: bool,
    /// `reset`: the upstream reset or closed before the response headers.
    pub on_reset: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub on_refused_stream: bool,
    /// `retriable-status-codes` with the codes listed.
    pub status_codes: Vec<u16>,
    /// Retries after the first attempt (Envoy's default 1).
    pub num_retries: u32,
    /// Timeout per attempt.
    pub per_try_timeout: Option<Duration>,
}

fn retry_policy(p: &route::RetryPolicy) -> RetryPolicy {
    let mut out = RetryPolicy {
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: dur(p.per_try_timeout.as_ref()),
        ..Default::default()
    };
    for cond in p.retry_on.split(',').map(str::trim) {
        match cond {
            "5xx" => out.on_5xx = true,
            "gateway-error" => out.on_gateway_error = true,
            "connect-failure" => out.on_connect_failure = true,
            "reset" | "reset-before-request" => out.on_reset = true,
            "refused-stream" => out.on_refused_stream = true,
            "retriable-status-codes" => {
                out.status_codes = p
                    .retriable_status_codes
                    .iter()
                    .filter_map(|c| u16::try_from(*c).ok())
                    .collect();
            }
            _ => {}
        }
    }
    out
}

fn regex(field: &str, re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("{field}: invalid regex {re:?}: {e}"))
}

fn string_match(field: &str, m: &matcher::StringMatcher) -> Result<ValueMatch, String> {
    use matcher::string_matcher::MatchPattern as P;
    Ok(match &m.match_pattern {
        Some(P::Exact(s)) => ValueMatch::Exact(s.clone()),
        Some(P::Prefix(s)) => ValueMatch::Prefix(s.clone()),
        Some(P::Suffix(s)) => ValueMatch::Suffix(s.clone()),
        Some(P::Contains(s)) => ValueMatch::Contains(s.clone()),
        Some(P::SafeRegex(r)) => ValueMatch::Regex(regex(field, &r.regex)?),
        _ => return Err(format!("{field}: unsupported string matcher")),
    })
}

#[allow(deprecated)] // the older HeaderMatcher fields are still sent by many control planes
fn header_match(field: &str, h: &route::HeaderMatcher) -> Result<HeaderMatch, String> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let value = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => ValueMatch::Exact(s.clone()),
        Some(S::PrefixMatch(s)) => ValueMatch::Prefix(s.clone()),
        Some(S::SuffixMatch(s)) => ValueMatch::Suffix(s.clone()),
        Some(S::ContainsMatch(s)) => ValueMatch::Contains(s.clone()),
        Some(S::SafeRegexMatch(r)) => ValueMatch::Regex(regex(field, &r.regex)?),
        Some(S::PresentMatch(p)) => ValueMatch::Present(*p),
        Some(S::StringMatch(m)) => string_match(field, m)?,
        None => ValueMatch::Present(true),
        Some(_) => return Err(format!("{field}: unsupported header matcher")),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value,
        invert: h.invert_match,
    })
}

fn header_names(field: &str, names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{field}: {n:?}: {e}")))
        .collect()
}

fn compile_route(field: &str, r: &route::Route) -> Result<Option<Route>, String> {
    use route::route_match::PathSpecifier as P;
    let Some(m) = &r.r#match else {
        return Err(format!("{field}.match: required"));
    };
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(re)) => {
            PathMatch::Regex(regex(&format!("{field}.match.safe_regex"), &re.regex)?)
        }
        Some(P::PathSeparatedPrefix(p)) => PathMatch::Prefix(p.clone()),
        _ => return Ok(None), // matchers this proxy does not implement never match
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(&format!("{field}.match.headers[{i}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    let action = match &r.action {
        Some(route::route::Action::Route(a)) => Action::Forward(Box::new(forward(field, a)?)),
        Some(route::route::Action::DirectResponse(d)) => {
            use core::data_source::Specifier as D;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                Some(D::InlineString(s)) => bytes::Bytes::from(s.clone().into_bytes()),
                Some(D::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
                _ => bytes::Bytes::new(),
            };
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| {
                    format!(
                        "{field}.direct_response.status: {} is not 100..=599",
                        d.status
                    )
                })?;
            Action::Direct { status, body }
        }
        _ => return Ok(None),
    };
    Ok(Some(Route {
        path,
        headers,
        action,
        remove_headers: header_names(
            &format!("{field}.request_headers_to_remove"),
            &r.request_headers_to_remove,
        )?,
    }))
}

fn forward(field: &str, a: &route::RouteAction) -> Result<ForwardAction, String> {
    use route::route_action::ClusterSpecifier as C;
    let clusters: Vec<(String, u32)> = match &a.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => vec![(c.clone(), 1)],
        Some(C::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .filter(|(n, w)| !n.is_empty() && *w > 0)
            .collect(),
        _ => Vec::new(),
    };
    if clusters.is_empty() {
        return Err(format!(
            "{field}.route: a cluster or weighted clusters with weight > 0 is required"
        ));
    }
    let total_weight = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    let hash_header = a
        .hash_policy
        .iter()
        .find_map(|h| match &h.policy_specifier {
            Some(route::route_action::hash_policy::PolicySpecifier::Header(h)) => {
                HeaderName::from_bytes(h.header_name.as_bytes()).ok()
            }
            _ => None,
        });
    let host_rewrite = match &a.host_rewrite_specifier {
        Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) if !h.is_empty() => {
            Some(
                http::HeaderValue::from_str(h)
                    .map_err(|e| format!("{field}.route.host_rewrite_literal: {e}"))?,
            )
        }
        _ => None,
    };
    let mut metadata_match: Vec<(String, String)> = a
        .metadata_match
        .as_ref()
        .and_then(|m| m.filter_metadata.get("envoy.lb"))
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), value_string(v.kind.as_ref()?)?)))
                .collect()
        })
        .unwrap_or_default();
    metadata_match.sort();
    // Envoy: an absent timeout is 15 s; an explicit 0 disables it.
    let timeout = match a.timeout.as_ref() {
        None => Some(Duration::from_secs(15)),
        Some(d) => dur(Some(d)).filter(|d| !d.is_zero()),
    };
    Ok(ForwardAction {
        clusters,
        total_weight,
        timeout,
        retry: a.retry_policy.as_ref().map(retry_policy),
        hash_header,
        host_rewrite,
        metadata_match,
    })
}

fn value_string(k: &Kind) -> Option<String> {
    match k {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(n.to_string()),
        Kind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compiles a RouteConfiguration.
///
/// # Errors
/// An invalid regex, header name, status or an action without a cluster,
/// naming the virtual host and route.
pub fn compile_routes(rc: &route::RouteConfiguration) -> Result<RouteTable, String> {
    let mut t = RouteTable {
        name: rc.name.clone(),
        ..Default::default()
    };
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (ri, r) in vh.routes.iter().enumerate() {
            let field = format!(
                "route_config {:?}: virtual_hosts[{vi}].routes[{ri}]",
                rc.name
            );
            if let Some(r) = compile_route(&field, r)? {
                routes.push(r);
            }
        }
        let idx = t.vhosts.len();
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if d == "*" {
                t.any.get_or_insert(idx);
            } else if let Some(suffix) = d.strip_prefix('*') {
                t.suffixes.push((suffix.to_string(), idx));
            } else if let Some(prefix) = d.strip_suffix('*') {
                t.prefixes.push((prefix.to_string(), idx));
            } else {
                t.exact.entry(d).or_insert(idx);
            }
        }
        t.vhosts.push(VirtualHost {
            name: vh.name.clone(),
            routes,
        });
    }
    t.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Ok(t)
}

impl RouteTable {
    /// The virtual host for a Host / :authority value, by Envoy's order:
    /// exact, longest `*suffix`, longest `prefix*`, then `*`. A host with a
    /// port that matches nothing is tried again without the port.
    pub fn vhost(&self, host: &str) -> Option<&VirtualHost> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let find = |h: &str| -> Option<usize> {
            if let Some(i) = self.exact.get(h) {
                return Some(*i);
            }
            if let Some((_, i)) = self
                .suffixes
                .iter()
                .find(|(s, _)| h.ends_with(s.as_str()) && h.len() > s.len())
            {
                return Some(*i);
            }
            self.prefixes
                .iter()
                .find(|(p, _)| h.starts_with(p.as_str()) && h.len() > p.len())
                .map(|(_, i)| *i)
        };
        let idx = find(host)
            .or_else(|| {
                let (h, port) = host.rsplit_once(':')?;
                (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']'))
                    .then_some(())?;
                find(h)
            })
            .or(self.any)?;
        self.vhosts.get(idx)
    }
}

impl Route {
    /// Whether the route matches a request.
    pub fn matches(
        &self,
        method: &http::Method,
        path_and_query: &str,
        authority: &str,
        headers: &dyn crate::http::HeaderFields,
    ) -> bool {
        let path = || path_and_query.split('?').next().unwrap_or("");
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path_and_query.starts_with(p.as_str()),
            PathMatch::Exact(p) => path() == p,
            PathMatch::Regex(re) => re.is_match(path()),
        };
        path_ok
            && self.headers.iter().all(|h| {
                let value: Option<&str> = match h.name.as_str() {
                    ":method" => Some(method.as_str()),
                    ":authority" | "host" => Some(authority),
                    ":path" => Some(path_and_query),
                    ":scheme" => Some("http"),
                    name => headers.value(name).and_then(crate::http::visible_ascii),
                };
                let hit = match (&h.value, value) {
                    (ValueMatch::Present(want), v) => v.is_some() == *want,
                    (_, None) => false,
                    (ValueMatch::Exact(s), Some(v)) => v == s,
                    (ValueMatch::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
                    (ValueMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
                    (ValueMatch::Contains(s), Some(v)) => v.contains(s.as_str()),
                    (ValueMatch::Regex(re), Some(v)) => re.is_match(v),
                };
                hit != h.invert
            })
    }
}

// ---------------------------------------------------------------------------
// Clusters

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices on active requests (weighted).
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (also serves MAGLEV).
    RingHash,
}

/// Outlier detection settings (Envoy's `OutlierDetection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierCfg {
    /// Consecutive 5xx (incl. local failures) that eject an endpoint.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (incl. connect failures) that eject.
    pub consecutive_gateway: u32,
    /// First ejection time; the n-th ejection lasts n times this.
    pub base_ejection: Duration,
    /// Cap on an ejection.
    pub max_ejection: Duration,
    /// At most this percentage of a cluster's endpoints is ejected.
    pub max_ejection_percent: u32,
}

/// Circuit-breaker thresholds (Envoy's DEFAULT-priority `Thresholds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections to the cluster (each HTTP/1.1 request in flight holds one).
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Subset fallback when no endpoint matches the route's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsetFallback {
    /// No endpoint: 503.
    None,
    /// Any endpoint of the cluster.
    Any,
}

/// A compiled Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterCfg {
    /// Name.
    pub name: String,
    /// EDS service name, or `None` for a STATIC cluster.
    pub eds_name: Option<String>,
    /// STATIC endpoints.
    pub static_hosts: Vec<HostCfg>,
    /// LB policy.
    pub lb: LbPolicy,
    /// Minimum ring size for RING_HASH.
    pub ring_size: usize,
    /// Connect timeout (Envoy default 5 s).
    pub connect_timeout: Duration,
    /// Outlier detection, when configured.
    pub outlier: Option<OutlierCfg>,
    /// Circuit breakers.
    pub limits: Limits,
    /// Whether subset load balancing is on, and its fallback.
    pub subset: Option<SubsetFallback>,
    /// Always speak HTTP/2 upstream (`http2_protocol_options`); otherwise
    /// the downstream protocol is used.
    pub http2: bool,
}

/// One endpoint as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostCfg {
    /// `host:port` to dial (the endpoint's sidecar when it has one).
    pub authority: String,
    /// The application port, when `authority` is the endpoint's sidecar.
    pub app_port: Option<u16>,
    /// Weight (≥ 1).
    pub weight: u32,
    /// Usable (HEALTHY, UNKNOWN or DEGRADED).
    pub healthy: bool,
    /// Locality (region, zone, sub-zone).
    pub locality: (String, String, String),
    /// Locality priority (0 is preferred).
    pub priority: u32,
    /// `envoy.lb` labels, sorted.
    pub labels: Vec<(String, String)>,
}

impl HostCfg {
    /// `host:port` of the application itself: [`HostCfg::authority`] with
    /// the port replaced by [`HostCfg::app_port`] when the endpoint is
    /// reached through its sidecar, else `authority` as it is. A TCP proxy
    /// dials this: raw TCP cannot carry [`PORT_HEADER`] to tell the remote
    /// sidecar which application port it meant.
    pub fn app_authority(&self) -> std::borrow::Cow<'_, str> {
        match self.app_port {
            Some(port) => {
                let host = self
                    .authority
                    .rsplit_once(':')
                    .map_or(self.authority.as_str(), |(host, _)| host);
                std::borrow::Cow::Owned(format!("{host}:{port}"))
            }
            None => std::borrow::Cow::Borrowed(&self.authority),
        }
    }
}

fn u32v(v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, default: u32) -> u32 {
    v.map_or(default, |v| v.value)
}

/// Compiles a Cluster.
///
/// # Errors
/// An unsupported discovery type or an invalid inline load assignment.
pub fn compile_cluster(c: &cluster::Cluster) -> Result<ClusterCfg, String> {
    use cluster::cluster::{ClusterDiscoveryType as T, DiscoveryType as D, LbPolicy as L};
    let field = format!("cluster {:?}", c.name);
    let ty = match c.cluster_discovery_type {
        Some(T::Type(t)) => D::try_from(t).unwrap_or(D::Static),
        _ => D::Static,
    };
    let (eds_name, static_hosts) = match ty {
        D::Eds => {
            let svc = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .unwrap_or_default();
            (
                Some(if svc.is_empty() { c.name.clone() } else { svc }),
                Vec::new(),
            )
        }
        D::Static | D::StrictDns | D::LogicalDns => {
            let cla = c.load_assignment.as_ref().ok_or_else(|| {
                format!("{field}: load_assignment is required for a {ty:?} cluster")
            })?;
            (None, compile_assignment(cla)?)
        }
        D::OriginalDst => return Err(format!("{field}: type ORIGINAL_DST is not supported")),
    };
    let lb = match L::try_from(c.lb_policy).unwrap_or(L::RoundRobin) {
        L::LeastRequest => LbPolicy::LeastRequest,
        L::Random => LbPolicy::Random,
        L::RingHash | L::Maglev => LbPolicy::RingHash,
        _ => LbPolicy::RoundRobin,
    };
    let ring_size = match &c.lb_config {
        Some(cluster::cluster::LbConfig::RingHashLbConfig(r)) => r
            .minimum_ring_size
            .as_ref()
            .map_or(1024, |v| v.value.clamp(1, 1 << 23) as usize),
        _ => 1024,
    };
    let outlier = c.outlier_detection.as_ref().map(|o| OutlierCfg {
        consecutive_5xx: u32v(o.consecutive_5xx.as_ref(), 5),
        consecutive_gateway: u32v(o.consecutive_gateway_failure.as_ref(), 5),
        base_ejection: dur(o.base_ejection_time.as_ref()).unwrap_or(Duration::from_secs(30)),
        max_ejection: dur(o.max_ejection_time.as_ref()).unwrap_or(Duration::from_secs(300)),
        max_ejection_percent: u32v(o.max_ejection_percent.as_ref(), 10).min(100),
    });
    let mut limits = Limits::default();
    if let Some(t) = c.circuit_breakers.as_ref().and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == core::RoutingPriority::Default as i32)
    }) {
        limits = Limits {
            max_connections: u32v(t.max_connections.as_ref(), limits.max_connections),
            max_pending: u32v(t.max_pending_requests.as_ref(), limits.max_pending),
            max_requests: u32v(t.max_requests.as_ref(), limits.max_requests),
            max_retries: u32v(t.max_retries.as_ref(), limits.max_retries),
        };
    }
    let subset = c.lb_subset_config.as_ref().map(|s| {
        if s.fallback_policy
            == cluster::cluster::lb_subset_config::LbSubsetFallbackPolicy::NoFallback as i32
        {
            SubsetFallback::None
        } else {
            SubsetFallback::Any
        }
    });
    #[allow(deprecated)]
    let http2 = c.http2_protocol_options.is_some();
    Ok(ClusterCfg {
        name: c.name.clone(),
        eds_name,
        static_hosts,
        lb,
        ring_size,
        connect_timeout: dur(c.connect_timeout.as_ref()).unwrap_or(Duration::from_secs(5)),
        outlier,
        limits,
        subset,
        http2,
    })
}

/// Compiles a ClusterLoadAssignment into its endpoints.
///
/// # Errors
/// An endpoint without a socket address or port, naming it.
pub fn compile_assignment(cla: &endpoint::ClusterLoadAssignment) -> Result<Vec<HostCfg>, String> {
    let mut out = Vec::new();
    for (li, loc) in cla.endpoints.iter().enumerate() {
        let locality = loc
            .locality
            .as_ref()
            .map(|l| (l.region.clone(), l.zone.clone(), l.sub_zone.clone()))
            .unwrap_or_default();
        for (ei, lb) in loc.lb_endpoints.iter().enumerate() {
            let field = format!(
                "cluster_load_assignment {:?}: endpoints[{li}].lb_endpoints[{ei}]",
                cla.cluster_name
            );
            let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier
            else {
                return Err(format!("{field}: endpoint is required"));
            };
            let Some(core::address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(format!(
                    "{field}: endpoint.address.socket_address is required"
                ));
            };
            let port = match sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p))
                    if (1..=65535).contains(&p) =>
                {
                    p as u16
                }
                _ => return Err(format!("{field}: port_value must be 1..=65535")),
            };
            if sa.address.is_empty() {
                return Err(format!("{field}: socket_address.address is required"));
            }
            let host = if sa.address.contains(':') {
                format!("[{}]", sa.address)
            } else {
                sa.address.clone()
            };
            let meta = lb.metadata.as_ref();
            let sidecar_port = meta
                .and_then(|m| m.filter_metadata.get(MESHREG_METADATA))
                .and_then(|s| s.fields.get(SIDECAR_PORT_KEY))
                .and_then(|v| match v.kind.as_ref()? {
                    Kind::NumberValue(n) if *n >= 1.0 && *n <= 65535.0 => Some(*n as u16),
                    Kind::StringValue(s) => s.parse::<u16>().ok().filter(|p| *p > 0),
                    _ => None,
                });
            let mut labels: Vec<(String, String)> = meta
                .and_then(|m| m.filter_metadata.get("envoy.lb"))
                .map(|s| {
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), value_string(v.kind.as_ref()?)?)))
                        .collect()
                })
                .unwrap_or_default();
            labels.sort();
            let healthy = matches!(
                core::HealthStatus::try_from(lb.health_status)
                    .unwrap_or(core::HealthStatus::Unknown),
                core::HealthStatus::Healthy
                    | core::HealthStatus::Unknown
                    | core::HealthStatus::Degraded
            );
            out.push(HostCfg {
                authority: format!("{host}:{}", sidecar_port.unwrap_or(port)),
                app_port: sidecar_port.map(|_| port),
                weight: u32v(lb.load_balancing_weight.as_ref(), 1).max(1),
                healthy,
                locality: locality.clone(),
                priority: loc.priority,
                labels,
            });
        }
    }
    Ok(out)
}

/// A name → compiled value map that also remembers each resource's version
/// and raw proto (for `/config_dump`).
#[derive(Debug)]
pub struct Versioned<T> {
    /// Resource version the server sent.
    pub version: String,
    /// Compiled form.
    pub value: T,
}

/// Every accepted resource, by type and name.
#[derive(Debug, Default)]
pub struct Resources {
    /// Listeners.
    pub listeners: BTreeMap<String, Versioned<ListenerCfg>>,
    /// RouteConfigurations.
    pub routes: BTreeMap<String, Versioned<std::sync::Arc<RouteTable>>>,
    /// Clusters.
    pub clusters: BTreeMap<String, Versioned<ClusterCfg>>,
    /// ClusterLoadAssignments.
    pub endpoints: BTreeMap<String, Versioned<Vec<HostCfg>>>,
}

#[cfg(test)]
pub(crate) mod tests;
