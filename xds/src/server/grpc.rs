//! The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! (`envoy/service/discovery/v3/ads.proto`): its two bidirectional methods,
//! `StreamAggregatedResources` (SotW) and `DeltaAggregatedResources`
//! (delta), routed by path to an [`AdsStream`] each.
//!
//! Written here rather than taken from the code generated in `envoy-types`
//! for one reason: the codec. tonic gives every stream an 8 KiB decode
//! buffer and an 8 KiB encode buffer for its whole life; with 10,000 idle
//! streams that is most of the server's memory. ADS requests are a few
//! hundred bytes and most responses a few KiB, so [`AdsCodec`] starts both
//! buffers at [`CODEC_BUFFER`] bytes (they grow for a larger message, as
//! tonic's do).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{http, BoxFuture, BoxStream, Service};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::ads_stream::{AdsStream, Protocol};
use super::Inner;
use crate::protocol::{DeltaStream, SotwStream};

/// Initial size of a stream's encode and decode buffers, bytes.
pub const CODEC_BUFFER: usize = 1024;
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
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(serve::<SotwStream, B>(inner, req)),
            DELTA_PATH => Box::pin(serve::<DeltaStream, B>(inner, req)),
            path => {
                let status = Status::unimplemented(format!("no such ADS method: {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

async fn serve<P, B>(
    inner: Arc<Inner>,
    req: http::Request<B>,
) -> Result<http::Response<Body>, Infallible>
where
    P: Protocol,
    P::Request: Message + Default,
    P::Response: Message,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    let mut grpc = Grpc::new(AdsCodec::<P::Response, P::Request>::default())
        .apply_max_message_size_config(Some(MAX_REQUEST), Some(MAX_RESPONSE));
    Ok(grpc.streaming(Method::<P>(inner, PhantomData), req).await)
}

/// One method: opens an [`AdsStream`] of protocol `P` per call.
struct Method<P>(Arc<Inner>, PhantomData<fn() -> P>);

impl<P: Protocol> StreamingService<P::Request> for Method<P> {
    type Response = P::Response;
    type ResponseStream = BoxStream<P::Response>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<P::Request>>) -> Self::Future {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let stream = AdsStream::<P>::open(self.0.clone(), req.into_inner(), peer);
        std::future::ready(Ok(Response::new(Box::pin(stream.into_stream()))))
    }
}

/// prost encoding with [`CODEC_BUFFER`]-byte initial buffers (tonic's
/// default is 8 KiB each) and tonic's default yield threshold (32 KiB).
#[derive(Debug)]
struct AdsCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for AdsCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn buffers() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER, 32 * 1024)
}

impl<E, D> Codec for AdsCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> ProstEncoder<E> {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder::new(buffers())
    }
}
