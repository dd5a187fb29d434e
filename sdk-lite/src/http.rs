//! [`HttpClient`]: HTTP/1.1 calls to `meshreg://` URLs in whatever mode the
//! [`Client`] is in — the reqwest-style helper next to the tonic channel.
//!
//! `meshreg://<target>/<path>` names the target as [`Target::parse_uri`]
//! reads it (`pay:8080`, `pay.default:8080`, `shop.PaymentService`). Each
//! call asks the target's [`Resolver`] (one per target, made on first use)
//! where to go: an endpoint in direct mode, the sidecar's outbound listener
//! in mesh mode, with the target's authority as the `Host` header either
//! way. Connections are pooled per dialled address with keep-alive
//! (hyper-util's client). A mode switch applies to the next call.
//!
//! Responses are returned whole (`Response<Bytes>`): the helper is for
//! request/response calls; stream large bodies with a client of your own
//! and [`Resolver::pick`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::client::Client;
use crate::resolver::Resolver;
use crate::target::Target;
use crate::Error;

/// HTTP/1.1 client for `meshreg://` URLs; made by [`Client::http_client`].
/// Cheap to share behind an `Arc`; keeps its [`Client`] alive.
#[derive(Debug)]
pub struct HttpClient {
    client: Client,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    resolvers: Mutex<HashMap<String, Resolver>>,
    timeout: Duration,
}

/// Splits `meshreg://<target>/<path>` into the target and the origin-form
/// path (`/` when absent).
///
/// # Errors
/// [`Error::InvalidTarget`] for another scheme or an unparsable target.
pub fn split_url(url: &str) -> Result<(Target, String), Error> {
    let Some(rest) = url.strip_prefix("meshreg://") else {
        return Err(Error::InvalidTarget {
            target: url.to_string(),
            reason: "expected meshreg://<target>/<path>".into(),
        });
    };
    let (target, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    Ok((Target::parse_uri(&format!("meshreg://{target}"))?, path))
}

impl HttpClient {
    pub(crate) fn new(client: Client, timeout: Duration) -> HttpClient {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(timeout));
        HttpClient {
            client,
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .set_host(false)
                .build(conn),
            resolvers: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    async fn resolver(&self, target: &Target, key: &str) -> Result<Resolver, Error> {
        if let Some(r) = self
            .resolvers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(r.clone());
        }
        let lb = crate::lb::LoadBalancer::new(crate::lb::Policy::RoundRobin);
        let r = self.client.resolve_with(target, lb).await?;
        self.resolvers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_insert(r.clone());
        Ok(r)
    }

    /// Sends `req`, whose URI is `meshreg://<target>/<path>`, and returns
    /// the whole response. The `Host` header is set to the target's
    /// authority; the call times out after the client's request timeout.
    ///
    /// # Errors
    /// [`Error::InvalidTarget`] for a bad URL; [`Error::NoEndpoint`] when
    /// direct mode has nothing to call; [`Error::Call`] when the connection
    /// or the exchange fails or times out.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        let url = req.uri().to_string();
        let (target, path) = split_url(&url)?;
        let key = url.split_once("://").map_or("", |(_, r)| r);
        let key = &key[..key.find(['/', '?']).unwrap_or(key.len())];
        let resolver = self.resolver(&target, key).await?;
        let dest = resolver.pick().await?;
        let call_err = |reason: String| Error::Call {
            target: key.to_string(),
            reason,
        };
        let uri: Uri = format!("http://{}{path}", dest.dial())
            .parse()
            .map_err(|e| call_err(format!("request URI: {e}")))?;
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.headers.insert(
            header::HOST,
            dest.authority()
                .parse()
                .map_err(|e| call_err(format!("authority {:?}: {e}", dest.authority())))?,
        );
        let exchange = async {
            let resp = self
                .http
                .request(Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| call_err(format!("{} ({}): {e}", dest.dial(), dest.mode())))?;
            let (head, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| call_err(format!("reading the response: {e}")))?
                .to_bytes();
            Ok(Response::from_parts(head, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| call_err(format!("no response within {:?}", self.timeout)))?
    }

    /// `GET url`.
    ///
    /// # Errors
    /// As [`HttpClient::send`].
    pub async fn get(&self, url: &str) -> Result<Response<Bytes>, Error> {
        let req = Request::get(url)
            .body(Bytes::new())
            .map_err(|e| Error::InvalidTarget {
                target: url.to_string(),
                reason: e.to_string(),
            })?;
        self.send(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_target_and_path() {
        let (t, p) = split_url("meshreg://pay:8080/a/b?x=1").unwrap();
        assert_eq!(
            (t, p.as_str()),
            (Target::parse("pay:8080").unwrap(), "/a/b?x=1")
        );
        let (_, p) = split_url("meshreg://pay.default:8080").unwrap();
        assert_eq!(p, "/");
        let (_, p) = split_url("meshreg://pay:8080?q").unwrap();
        assert_eq!(p, "/?q");
        assert!(split_url("http://pay:8080/").is_err());
        assert!(split_url("meshreg:///x").is_err());
    }
}
