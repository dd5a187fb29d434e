//! The etcd adapter: Dubbo's application-level layout,
//! `{prefix}{app}/{host:port}` → `ServiceInstance` JSON (Dubbo's
//! `EtcdServiceDiscovery`), read with one range read at a single revision
//! (paged) and followed with a prefix watch from the next revision. When
//! the watch is cancelled (its start revision was compacted) the adapter
//! reads everything again at a new revision; any other failure ends
//! [`run`] and the sink calls it again after its backoff.
//!
//! It speaks etcd's v3 gRPC API (`KV.Range`, `Watch.Watch`) through the
//! client that `meshreg-proto` generates from its subset of etcd's protos,
//! over plaintext HTTP/2. Each run connects to the first endpoint that
//! accepts a connection, starting from a random one, and sends the reads
//! and the watch to it; when that member fails, the run fails and the next
//! one picks an endpoint again.

use std::time::Duration;

use futures_util::StreamExt;
use meshreg_proto::etcd::etcdserverpb::kv_client::KvClient;
use meshreg_proto::etcd::etcdserverpb::watch_client::WatchClient;
use meshreg_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use meshreg_proto::etcd::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use meshreg_proto::etcd::mvccpb::event::EventType;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::feed::{now_ms, Feed};

/// Keys read per range request while loading.
const PAGE: i64 = 5000;

/// Longest a TCP connection to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive ping interval on the connection, also while only the
/// watch is open, so that a member that went away is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Longest to wait for a keep-alive ping's answer before the connection
/// (and with it the watch) fails.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to read in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Endpoints, `host:port` (or `http://host:port`).
    pub endpoints: Vec<String>,
    /// Key prefix of the layout, `/services/`.
    pub prefix: String,
}

impl EtcdConfig {
    /// Checks that there is an endpoint and a prefix.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(Error::Config(
                "address must name at least one endpoint".into(),
            ));
        }
        if self.prefix.is_empty() {
            return Err(Error::Config(
                "prefix must not be empty, e.g. \"/services/\"".into(),
            ));
        }
        Ok(())
    }
}

/// The application a key names: `{prefix}{app}/{id}` → `app`.
///
/// # Errors
/// A reason fit for the quarantine list when the key has another shape.
pub fn app_of_key<'k>(prefix: &str, key: &'k str) -> Result<&'k str, String> {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    match rest.split_once('/') {
        Some((app, id)) if !app.is_empty() && !id.is_empty() && !id.contains('/') => Ok(app),
        _ => Err(format!(
            "key does not follow the layout {prefix}{{app}}/{{host:port}}"
        )),
    }
}

/// The first key after every key that starts with `prefix` (etcd's
/// `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// The connection settings of a configured endpoint: `host:port` is
/// `http://host:port`; an `http://` URI is taken as it is.
///
/// # Errors
/// Why the endpoint cannot be used: an `https://` URI (the adapter speaks
/// plaintext HTTP/2 only), or one that does not parse or has no host.
fn endpoint(configured: &str) -> Result<Endpoint, String> {
    if configured.starts_with("https://") {
        return Err("TLS is not supported; give host:port or http://host:port".into());
    }
    let uri = if configured.starts_with("http://") {
        configured.to_string()
    } else {
        format!("http://{configured}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| e.to_string())?;
    if endpoint.uri().host().is_none() {
        return Err("no host; give host:port".into());
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The endpoints' connection settings in the order to try them: from the
/// endpoint at `start` (modulo their number), wrapping around.
///
/// # Errors
/// [`Error::Config`] naming an endpoint that cannot be used.
fn endpoints(configured: &[String], start: usize) -> Result<Vec<Endpoint>, Error> {
    let mut out = configured
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| endpoint(e).map_err(|why| Error::Config(format!("etcd endpoint {e:?}: {why}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if !out.is_empty() {
        let n = out.len();
        out.rotate_left(start % n);
    }
    Ok(out)
}

/// `e` with its sources, `outer: inner: ...` (tonic's transport error
/// says only "transport error" at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // Some layers repeat their source's message; say it once.
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A connection to the first of `endpoints` that accepts one.
///
/// # Errors
/// [`Error::EtcdUnreachable`] with every endpoint's reason when none does.
async fn connect(endpoints: Vec<Endpoint>, address: &str) -> Result<Channel, Error> {
    let mut reasons = Vec::new();
    for endpoint in endpoints {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => reasons.push(format!("{}: {}", endpoint.uri(), error_chain(&e))),
        }
    }
    Err(Error::EtcdUnreachable {
        address: address.to_string(),
        reasons: reasons.join("; "),
    })
}

/// Reads `cfg` into `feed` and follows it until a request or the watch
/// stream fails (always an error; dropping the future stops it).
///
/// # Errors
/// [`Error::Config`], [`Error::EtcdUnreachable`], [`Error::Etcd`],
/// [`Error::WatchClosed`].
pub async fn run(cfg: &EtcdConfig, feed: &Feed) -> Result<(), Error> {
    cfg.validate()?;
    let address = cfg.endpoints.join(",");
    let err = |source| Error::Etcd {
        address: address.clone(),
        source,
    };
    let endpoints = endpoints(&cfg.endpoints, fastrand::usize(..))?;
    let channel = connect(endpoints, &address).await?;
    let mut kv = KvClient::new(channel.clone());
    let mut watch = WatchClient::new(channel);
    loop {
        feed.begin_resync();
        let revision = load(&mut kv, cfg, feed).await.map_err(err)?;
        feed.finish_resync();
        tracing::info!(%address, revision, "etcd source loaded; watching");
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: cfg.prefix.as_bytes().to_vec(),
                range_end: prefix_end(cfg.prefix.as_bytes()),
                start_revision: revision + 1,
            })),
        };
        // The request side stays open for as long as the watch is read:
        // it is the stream on which a client creates and cancels watchers.
        let requests = futures_util::stream::once(async move { create })
            .chain(futures_util::stream::pending());
        let mut stream = watch.watch(requests).await.map_err(err)?.into_inner();
        loop {
            let Some(resp) = stream.message().await.map_err(err)? else {
                return Err(Error::WatchClosed {
                    address: address.clone(),
                });
            };
            if resp.canceled || resp.compact_revision > 0 {
                tracing::warn!(
                    %address,
                    compact_revision = resp.compact_revision,
                    reason = resp.cancel_reason,
                    "etcd watch cancelled; reading everything again"
                );
                break;
            }
            // The watch's creation and progress notifications carry no
            // events: nothing to do.
            let now = now_ms();
            for ev in &resp.events {
                let Some(kv) = &ev.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                match EventType::try_from(ev.r#type) {
                    Ok(EventType::Put) => {
                        let app = app_of_key(&cfg.prefix, &key);
                        feed.edit(|c| c.put_instance(&key, app, &kv.value, kv.mod_revision, now));
                    }
                    Ok(EventType::Delete) => {
                        feed.edit(|c| c.remove(&key));
                    }
                    Err(_) => {
                        tracing::warn!(
                            %address,
                            %key,
                            r#type = ev.r#type,
                            "unknown etcd event type; skipped"
                        );
                    }
                }
            }
        }
    }
}

/// Reads every key under the prefix at one revision, in pages; returns
/// that revision.
async fn load(
    client: &mut KvClient<Channel>,
    cfg: &EtcdConfig,
    feed: &Feed,
) -> Result<i64, tonic::Status> {
    let end = prefix_end(cfg.prefix.as_bytes());
    let mut from = cfg.prefix.as_bytes().to_vec();
    // 0 (the newest) for the first page; the first page's revision after.
    let mut revision = 0;
    loop {
        let resp = client
            .range(RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
            })
            .await?
            .into_inner();
        if revision == 0 {
            revision = resp.header.map_or(0, |h| h.revision);
        }
        let now = now_ms();
        for kv in &resp.kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let app = app_of_key(&cfg.prefix, &key);
            feed.edit(|c| c.put_instance(&key, app, &kv.value, kv.mod_revision, now));
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_application() {
        assert_eq!(
            app_of_key("/services/", "/services/demo/10.0.0.1:20880"),
            Ok("demo")
        );
        for bad in [
            "/services/demo",
            "/services/demo/",
            "/services//x",
            "/services/a/b/c",
        ] {
            assert!(app_of_key("/services/", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_http_uris_tried_from_the_start_index() {
        let cfg = [
            "a:2379".to_string(),
            " ".into(),
            "http://b:2380".into(),
            "c:1".into(),
        ];
        let uris = |start| {
            endpoints(&cfg, start)
                .map(|eps| eps.iter().map(|e| e.uri().to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            uris(0).ok(),
            Some(vec![
                "http://a:2379/".into(),
                "http://b:2380/".into(),
                "http://c:1/".into()
            ])
        );
        assert_eq!(
            uris(4).ok(),
            Some(vec![
                "http://b:2380/".into(),
                "http://c:1/".into(),
                "http://a:2379/".into()
            ])
        );
        for bad in ["https://a:2379", "a b:1", "http://"] {
            let err = endpoints(&[bad.to_string()], 0)
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains(&format!("{bad:?}"))),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/services/"), b"/services0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
