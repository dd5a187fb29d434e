//! Dubbo's registry formats, parsed (sans I/O): the provider URL of the
//! interface-level layout, the `ServiceInstance` JSON of the
//! application-level layout and the service-name mapping. How they become
//! meshreg instances is [`crate::catalog`]; docs/mcp.md has the tables.

use std::collections::BTreeMap;

use meshreg_registry::model::{validate, Locality};

/// Parameters of a provider URL that describe the service (interface),
/// kept in its `ServiceDef.params`; every other parameter describes the
/// process and goes to the instance's labels or metadata.
pub const SERVICE_PARAMS: [&str; 4] = ["version", "group", "methods", "revision"];

/// Parameters that change with every restart of a provider (`timestamp`
/// in ms, `pid`): kept as metadata, never as labels, so that they do not
/// grow the label index by one value per process.
pub const VOLATILE_PARAMS: [&str; 2] = ["timestamp", "pid"];

/// One provider URL of the interface-level layout, e.g.
/// `dubbo://10.0.0.1:20880/org.demo.Api?application=demo&weight=100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrl {
    /// URL scheme: `dubbo`, `tri`, `rest`, ...
    pub protocol: String,
    /// Host: an IP literal (IPv6 without brackets) or a hostname.
    pub host: String,
    /// Port, 1..=65535.
    pub port: u16,
    /// The interface: the `interface` parameter, else the URL path.
    pub interface: String,
    /// Query parameters, decoded, in key order.
    pub params: BTreeMap<String, String>,
}

impl ProviderUrl {
    /// The `application` parameter, the application the provider belongs to.
    pub fn application(&self) -> Option<&str> {
        self.params
            .get("application")
            .map(String::as_str)
            .filter(|a| !a.is_empty())
    }
}

/// Decodes `%XX` escapes and `+` (Java's `URLEncoder`, which Dubbo uses
/// for the znode name). Fails on a malformed escape or bytes that are not
/// UTF-8.
pub fn url_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("malformed %-escape at byte {i}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the decoded URL is not UTF-8".to_string())
}

/// Parses a provider znode name: the URL-encoded form of a Dubbo URL
/// `protocol://[user[:password]@]host:port[/path][?k=v&...]`.
///
/// # Errors
/// A reason fit for the quarantine list: not a URL, no port, no interface.
pub fn parse_provider(znode_name: &str) -> Result<ProviderUrl, String> {
    let url = url_decode(znode_name)?;
    let (protocol, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (no \"://\")"))?;
    if protocol.is_empty() {
        return Err(format!("{url:?} has no protocol"));
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = split_host_port(host_port)
        .ok_or_else(|| format!("{url:?}: {host_port:?} is not host:port"))?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("{url:?}: port {port:?} is not in 1..=65535")),
    };
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !k.is_empty() {
            params.insert(k.to_string(), v.to_string());
        }
    }
    let interface = params
        .get("interface")
        .filter(|i| !i.is_empty())
        .cloned()
        .unwrap_or_else(|| path.trim_matches('/').to_string());
    if interface.is_empty() {
        return Err(format!(
            "{url:?} names no interface (no path, no interface=)"
        ));
    }
    Ok(ProviderUrl {
        protocol: protocol.to_ascii_lowercase(),
        host: host.to_string(),
        port,
        interface,
        params,
    })
}

/// `host:port` or `[v6]:port` → (host, port text).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.is_empty()).then_some((host, port))
}

/// One application-level instance: Dubbo's `ServiceInstance` as stored
/// under `/services/{app}/{host:port}` (ZooKeeper, through Curator, with
/// the metadata in `payload.metadata`) or in etcd (Dubbo's
/// `DefaultServiceInstance` as JSON, `serviceName`/`host`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppInstance {
    /// The application: the path's `{app}`.
    pub app: String,
    /// Address: `address`, else `host`.
    pub address: String,
    /// The main port: `port`.
    pub port: u16,
    /// `metadata`, else `payload.metadata`; values that are not strings
    /// are kept as their JSON text.
    pub metadata: BTreeMap<String, String>,
    /// `enabled && healthy`, each true when absent.
    pub serving: bool,
    /// Named ports from the `dubbo.endpoints` metadata
    /// (`[{"port":20880,"protocol":"dubbo"}]`), protocol → port.
    pub endpoints: Vec<(String, u16)>,
    /// Load-balancing weight on meshreg's scale (100 is the default);
    /// 0 when the source gives none.
    pub weight: u32,
    /// Where the instance runs, when the source says (Nacos's cluster).
    pub locality: Locality,
}

/// Parses a `ServiceInstance` JSON document for application `app` (the
/// path segment the document was found under).
///
/// # Errors
/// A reason fit for the quarantine list: not JSON, no address or port, a
/// `name` that differs from the path's application.
pub fn parse_app_instance(app: &str, data: &[u8]) -> Result<AppInstance, String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let text = |k: &str| {
        obj.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(name) = text("name").or_else(|| text("serviceName")) {
        if name != app {
            return Err(format!(
                "name {name:?} differs from the application {app:?} in its path"
            ));
        }
    }
    let address = text("address")
        .or_else(|| text("host"))
        .ok_or_else(|| "no \"address\" or \"host\"".to_string())?
        .to_string();
    let port = obj
        .get("port")
        .and_then(|p| {
            p.as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| "no numeric \"port\"".to_string())?;
    let port = match u16::try_from(port) {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("port {port} is not in 1..=65535")),
    };
    let meta = obj
        .get("metadata")
        .filter(|m| m.is_object())
        .or_else(|| obj.get("payload").and_then(|p| p.get("metadata")));
    let mut metadata = BTreeMap::new();
    if let Some(m) = meta.and_then(|m| m.as_object()) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            metadata.insert(k.clone(), v);
        }
    }
    let flag = |k: &str| obj.get(k).and_then(|x| x.as_bool()).unwrap_or(true);
    let endpoints = match metadata.get("dubbo.endpoints") {
        Some(e) => parse_endpoints(e)?,
        None => Vec::new(),
    };
    Ok(AppInstance {
        app: app.to_string(),
        address,
        port,
        metadata,
        serving: flag("enabled") && flag("healthy"),
        endpoints,
        ..Default::default()
    })
}

/// `dubbo.endpoints`: a JSON array of `{"port": n, "protocol": "p"}`.
pub fn parse_endpoints(text: &str) -> Result<Vec<(String, u16)>, String> {
    let bad = |why: String| format!("metadata \"dubbo.endpoints\": {why}");
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let list = v.as_array().ok_or_else(|| bad("not a JSON array".into()))?;
    let mut out = Vec::new();
    for e in list {
        let port = e
            .get("port")
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("{e} has no port in 1..=65535")))?;
        let protocol = e
            .get("protocol")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("dubbo");
        out.push((protocol.to_ascii_lowercase(), port));
    }
    Ok(out)
}

/// The data of `/dubbo/mapping/{interface}`: comma-separated application
/// names. Blank entries are dropped.
pub fn parse_mapping(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A protocol name made a port name (`[a-z0-9_-]`, at most 63 bytes):
/// lower-cased, other characters replaced by `-`; empty → `dubbo`.
pub fn port_name(protocol: &str) -> String {
    let mut s: String = protocol
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if s.is_empty() {
        s = "dubbo".into();
    }
    s
}

/// True when `(key, value)` can be an instance label (Kubernetes label
/// syntax) and is not one of the [`VOLATILE_PARAMS`].
pub fn is_label(key: &str, value: &str) -> bool {
    !VOLATILE_PARAMS.contains(&key)
        && validate::label_key("", key).is_ok()
        && validate::label_value("", value).is_ok()
}

#[cfg(test)]
pub(crate) mod tests;
