//! A tiny gRPC service for the examples, `meshreg.example.Echo/Say`,
//! written out by hand (what `tonic-prost-build` would generate from
//!
//! ```proto
//! package meshreg.example;
//! message SayRequest { string message = 1; }
//! message SayReply { string message = 1; string from = 2; }
//! service Echo { rpc Say(SayRequest) returns (SayReply); }
//! ```
//!
//! ) so that the SDK needs no build script for its examples.

#![allow(dead_code)] // each example uses one half

use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, StdError};

/// The service's name, as registered and as in the gRPC path.
pub const SERVICE: &str = "meshreg.example.Echo";
const SAY: &str = "/meshreg.example.Echo/Say";

/// `SayRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    /// What to echo.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `SayReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    /// The message echoed.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Which server answered.
    #[prost(string, tag = "2")]
    pub from: String,
}

/// The client: `EchoClient::new(channel).say(..)`.
#[derive(Debug, Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    /// A client on `channel`.
    pub fn new(channel: tonic::transport::Channel) -> EchoClient {
        EchoClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// `Say`.
    pub async fn say(&mut self, message: &str) -> Result<SayReply, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let req = tonic::Request::new(SayRequest {
            message: message.to_string(),
        });
        let path = http::uri::PathAndQuery::from_static(SAY);
        let codec = tonic_prost::ProstCodec::default();
        Ok(self.inner.unary(req, path, codec).await?.into_inner())
    }
}

/// The server: answers `Say` with the message and its own name.
#[derive(Debug, Clone)]
pub struct EchoServer {
    name: String,
}

impl EchoServer {
    /// A server calling itself `name` in its replies.
    pub fn new(name: impl Into<String>) -> EchoServer {
        EchoServer { name: name.into() }
    }
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

struct SaySvc(String);

impl tonic::server::UnaryService<SayRequest> for SaySvc {
    type Response = SayReply;
    type Future = BoxFuture<tonic::Response<SayReply>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<SayRequest>) -> Self::Future {
        let from = self.0.clone();
        Box::pin(async move {
            Ok(tonic::Response::new(SayReply {
                message: request.into_inner().message,
                from,
            }))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let name = self.name.clone();
        if req.uri().path() == SAY {
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(SaySvc(name), req).await)
            });
        }
        Box::pin(async move { Ok(tonic::Status::unimplemented("no such method").into_http()) })
    }
}
