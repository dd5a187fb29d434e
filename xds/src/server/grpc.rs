//! The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! (`envoy/service/discovery/v3/ads.proto`): its two bidirectional methods,
//! `StreamAggregatedResources` (SotW) and `DeltaAggregatedResources`
//! (delta), routed by path to an [`AdsStream`] each.
//!
//! Written here rather than taken from the code generated in `envoy-types`
//! for the push path's sake: neither direction goes through tonic's codec.
//! The response body is the stream itself ([`AdsStream`] is an
//! `http_body::Body`), which frames each response as a gRPC
//! Length-Prefixed-Message in a buffer of its exact size and ends with the
//! `grpc-status` trailers (gRPC over HTTP/2, `PROTOCOL-HTTP2.md`); requests
//! are read from the request body as it comes ([`super::requests`]),
//! decoded straight from the HTTP/2 frame that carries them when it carries
//! them whole. Per push and ACK that saves tonic's encode and decode state
//! machines, their per-stream buffers (with 10,000 idle streams, tonic's
//! default 8 KiB each were most of the server's memory) and the boxed body
//! layers around them.
//!
//! Compression is not negotiated: a request with a `grpc-encoding` other
//! than `identity` gets `UNIMPLEMENTED` (as tonic answers without
//! compression support) and responses are never compressed.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service, StdError};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

use super::ads_stream::{AdsStream, Protocol};
use super::Inner;
use crate::protocol::{DeltaStream, SotwStream};

/// Largest request accepted, bytes (tonic's default).
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Largest response sent, bytes.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service of one [`super::AdsServer`]; add it to a tonic
/// router. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdsService {
    pub(super) inner: Arc<Inner>,
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer(req)))
    }
}

impl AdsService {
    /// Answers one request for either method: the response's body is the
    /// ADS stream. A request for any other path gets `UNIMPLEMENTED`.
    pub fn answer<B>(&self, req: http::Request<B>) -> http::Response<Body>
    where
        B: tonic::codegen::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let inner = self.inner.clone();
        match req.uri().path() {
            SOTW_PATH => open::<SotwStream, B>(inner, req),
            DELTA_PATH => open::<DeltaStream, B>(inner, req),
            path => Status::unimplemented(format!("no such ADS method: {path}")).into_http(),
        }
    }

    /// The service as the gRPC port serves it ahead of the router
    /// ([`meshreg_registry::http2::Direct`]): each request and response
    /// message skips the router's body layers.
    pub fn direct(self) -> meshreg_registry::http2::Direct {
        meshreg_registry::http2::Direct {
            name: <Self as NamedService>::NAME,
            call: Arc::new(move |req| self.answer(req)),
        }
    }
}

/// Opens an [`AdsStream`] of protocol `P` reading `req`'s body; the
/// response's body is the stream.
fn open<P, B>(inner: Arc<Inner>, req: http::Request<B>) -> http::Response<Body>
where
    P: Protocol,
    B: tonic::codegen::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if let Some(encoding) = req.headers().get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            let mut status = Status::unimplemented(format!(
                "grpc-encoding: {} is not supported (requests must not be compressed)",
                String::from_utf8_lossy(encoding.as_bytes())
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                MetadataValue::from_static("identity"),
            );
            return status.into_http();
        }
    }
    let peer = req
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let stream = AdsStream::<P, B>::open(inner, req.into_body(), peer);
    let mut response = http::Response::new(Body::new(stream.boxed_unsync()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}
