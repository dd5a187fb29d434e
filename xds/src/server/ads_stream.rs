//! One ADS stream, run as the response body hyper polls.
//!
//! The stream's protocol state is driven from inside the response body's
//! `poll_frame`: it reads the client's next request and, when the
//! debouncer wakes it, the latest generation, and yields what they
//! produce. After computing responses it records what they depend on
//! (its [`Interest`]) in the server's watchers, where the debouncer finds
//! the streams a change concerns. Nothing runs per stream
//! besides the HTTP/2 stream task hyper already has, so a push wakes one
//! task, not a protocol task and then, through a channel, hyper's.
//!
//! Backpressure is the HTTP/2 send window: while the client does not read,
//! hyper stops polling the body, no generation is looked at, and when the
//! client catches up it gets the latest state diffed against what it last
//! got (coalesced), never a backlog. Other streams never wait for it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::service::discovery::v3 as ds;
use http_body::Frame;
use prost::Message;
use tonic::codegen::{http, StdError};
use tonic::Status;

use super::grpc::MAX_RESPONSE;
use super::requests::Requests;
use super::{mcp_export_for, namespace_of, protocol_status, Inner, RateLimit, Slot, TypeLabel};
use crate::cache::Interest;
use crate::mcp::Export;
use crate::protocol::{
    DeltaResponse, DeltaStream, Encode, ProtocolError, SotwResponse, SotwStream, TypeStatus, View,
};
use crate::resources::ResourceType;

/// One ADS variant's per-stream protocol state and message shapes, as the
/// server drives them: [`SotwStream`] for `StreamAggregatedResources`,
/// [`DeltaStream`] for `DeltaAggregatedResources`.
pub(super) trait Protocol: Sized + Send + 'static {
    /// The request message.
    type Request: Message + Default + Unpin + Send + 'static;
    /// The response message.
    type Response: Encode + Unpin + Send + 'static;
    /// `sotw` or `delta`, as listed and labelled.
    const VARIANT: &'static str;

    /// A new stream's state; `seed` makes its nonces unique.
    fn new(seed: u64) -> Self;
    /// The request's `node` (set at least on the first request).
    fn node(req: &Self::Request) -> Option<&EnvoyNode>;
    /// The request's `type_url`.
    fn type_url(req: &Self::Request) -> &str;
    /// The request's `error_detail.message`, when it is a NACK.
    fn error_message(req: &Self::Request) -> Option<&str>;
    /// The response's `type_url`.
    fn response_type_url(r: &Self::Response) -> &str;
    /// See [`SotwStream::on_request`].
    fn on_request(
        &mut self,
        req: &Self::Request,
        view: &mut dyn View,
    ) -> Result<Vec<Self::Response>, ProtocolError>;
    /// See [`SotwStream::on_change`].
    fn on_change(&mut self, view: &mut dyn View) -> Vec<Self::Response>;
    /// NACKs received so far.
    fn nacks(&self) -> u64;
    /// See [`SotwStream::set_native_only`].
    fn set_native_only(&mut self, on: bool);
    /// See [`SotwStream::status`].
    fn status(&self) -> BTreeMap<&'static str, TypeStatus>;
}

macro_rules! protocol_impl {
    ($state:ty, $req:ty, $resp:ty, $variant:literal) => {
        impl Protocol for $state {
            type Request = $req;
            type Response = $resp;
            const VARIANT: &'static str = $variant;

            fn new(seed: u64) -> Self {
                <$state>::new(seed)
            }
            fn node(req: &$req) -> Option<&EnvoyNode> {
                req.node.as_ref()
            }
            fn type_url(req: &$req) -> &str {
                &req.type_url
            }
            fn error_message(req: &$req) -> Option<&str> {
                req.error_detail.as_ref().map(|e| e.message.as_str())
            }
            fn response_type_url(r: &$resp) -> &str {
                &r.type_url
            }
            fn on_request(
                &mut self,
                req: &$req,
                view: &mut dyn View,
            ) -> Result<Vec<$resp>, ProtocolError> {
                <$state>::on_request(self, req, view)
            }
            fn on_change(&mut self, view: &mut dyn View) -> Vec<$resp> {
                <$state>::on_change(self, view)
            }
            fn nacks(&self) -> u64 {
                self.nacks
            }
            fn set_native_only(&mut self, on: bool) {
                <$state>::set_native_only(self, on)
            }
            fn status(&self) -> BTreeMap<&'static str, TypeStatus> {
                <$state>::status(self)
            }
        }
    };
}

protocol_impl!(SotwStream, ds::DiscoveryRequest, SotwResponse, "sotw");
protocol_impl!(
    DeltaStream,
    ds::DeltaDiscoveryRequest,
    DeltaResponse,
    "delta"
);

/// One open ADS stream: its requests, its protocol state, and the
/// responses it has yet to yield. Dropping it (the stream ended, or hyper
/// dropped the response because the client went away) removes it from the
/// client list.
pub(super) struct AdsStream<P: Protocol, B> {
    inner: Arc<Inner>,
    incoming: Requests<P::Request, B>,
    id: u64,
    limit: RateLimit,
    slot: Arc<Slot>,
    state: Arc<Mutex<P>>,
    /// Set from the first request.
    ns: Option<String>,
    /// What the stream is registered as watching.
    interest: Interest,
    /// Scratch: the dependencies of what one request or change looked up.
    looked_up: Interest,
    /// A generation arrived while a request was being served, after the
    /// debouncer may have read this stream's older interest: look again.
    recheck: bool,
    /// Responses produced and not yet yielded, in order.
    pending: std::vec::IntoIter<P::Response>,
    /// The status that ends the stream (`OK` when it ends normally), sent
    /// after `pending`.
    ending: Option<Status>,
    /// The trailers were sent.
    done: bool,
}

impl<P, B> AdsStream<P, B>
where
    P: Protocol,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    /// Registers a stream from `peer` reading the requests in `body`.
    pub(super) fn open(inner: Arc<Inner>, body: B, peer: String) -> Self {
        let (id, limit, slot, state) = inner.open::<P>(peer);
        Self {
            inner,
            incoming: Requests::new(body),
            id,
            limit,
            slot,
            state,
            ns: None,
            interest: Interest::default(),
            looked_up: Interest::default(),
            recheck: false,
            pending: Vec::new().into_iter(),
            ending: None,
            done: false,
        }
    }

    /// The next response, or the status that ends the stream: an error
    /// (a request that does not decode, an unknown type, the request rate
    /// exceeded) after the responses already produced, or `OK` when the
    /// client half-closes or resets or the node shuts down. Reads the
    /// client's requests and the debouncer's wake-ups as it goes.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Result<P::Response, Status>> {
        loop {
            if let Some(r) = self.pending.next() {
                return Poll::Ready(Ok(r));
            }
            if let Some(e) = self.ending.take() {
                return Poll::Ready(Err(e));
            }
            if std::mem::take(&mut self.recheck) {
                self.on_change();
                continue;
            }
            if let Poll::Ready(msg) = self.incoming.poll_next(cx) {
                match msg {
                    Some(Ok(req)) => self.on_request(&req),
                    None => self.ending = Some(Status::ok("")),
                    Some(Err(status)) => {
                        // A request that does not decode (INTERNAL, as
                        // gRPC specifies for a parse error, naming it) or
                        // is over the size limit (RESOURCE_EXHAUSTED) ends
                        // this stream with that status; after a reset
                        // nobody reads it.
                        tracing::debug!(stream = self.id, error = %status.message(), "ADS request stream failed");
                        if matches!(
                            status.code(),
                            tonic::Code::Internal | tonic::Code::ResourceExhausted
                        ) {
                            self.inner.metrics.rejected.inc();
                        }
                        self.ending = Some(status);
                    }
                }
                continue;
            }
            if self.slot.wake.poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.inner.closing.load(Ordering::Acquire) {
                self.ending = Some(Status::ok(""));
            } else {
                self.on_change();
            }
        }
    }

    fn on_request(&mut self, req: &P::Request) {
        let inner = &self.inner;
        if !self.limit.allow() {
            inner.metrics.rejected.inc();
            self.ending = Some(Status::resource_exhausted(format!(
                "more than {} xDS requests per second on one stream",
                inner.config.requests_per_second
            )));
            return;
        }
        let first = self.ns.is_none();
        let slot = &self.slot;
        let namespace = self.ns.get_or_insert_with(|| {
            let n = namespace_of(P::node(req));
            Inner::identify(slot, P::node(req), &n);
            n
        });
        let seen = inner.generation().revision;
        let looked_up = &mut self.looked_up;
        looked_up.clear();
        let (out, nacked) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if first && mcp_export_for(&inner.config, P::node(req)) == Export::NativeOnly {
                st.set_native_only(true);
            }
            let nacks_before = st.nacks();
            let out = inner.with_view(namespace, looked_up, |v| st.on_request(req, v));
            (out, st.nacks() > nacks_before)
        };
        if nacked {
            let ty = ResourceType::from_url(P::type_url(req)).map_or("?", ResourceType::short);
            inner
                .metrics
                .nacks
                .get_or_create(&TypeLabel { r#type: ty })
                .inc();
            tracing::warn!(stream = self.id, r#type = ty, error = ?P::error_message(req), "xDS NACK");
        }
        match out {
            Ok(responses) => {
                for r in &responses {
                    inner.count_push(P::response_type_url(r), None);
                }
                self.pending = responses.into_iter();
            }
            Err(e) => {
                inner.metrics.rejected.inc();
                self.ending = Some(protocol_status(e));
            }
        }
        // What a request looked up adds to what the stream watches (an
        // unsubscribed name lingers until the next change: a spurious wake
        // at worst).
        if !self.interest.covers(&self.looked_up) {
            let mut more = self.interest.clone();
            more.merge(&self.looked_up);
            self.watch(more);
            self.recheck |= self.inner.generation().revision != seen;
        }
    }

    fn on_change(&mut self) {
        // Not identified yet: its first request gets the current state.
        let Some(namespace) = &self.ns else { return };
        let g = self.inner.generation();
        tracing::trace!(
            stream = self.id,
            revision = g.revision,
            "pushing a generation"
        );
        let looked_up = &mut self.looked_up;
        looked_up.clear();
        let responses = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            self.inner
                .with_view(namespace, looked_up, |v| st.on_change(v))
        };
        // A change looks up everything the stream is subscribed to: what
        // it looked up replaces what the stream watches.
        if self.looked_up != self.interest {
            let now = std::mem::take(&mut self.looked_up);
            // The old interest's sets are the next scratch.
            self.looked_up = self.watch(now);
            self.recheck |= self.inner.generation().revision != g.revision;
        }
        for r in &responses {
            self.inner.count_push(P::response_type_url(r), Some(&g));
        }
        self.pending = responses.into_iter();
    }
}

impl<P: Protocol, B> AdsStream<P, B> {
    /// Registers the stream as watching `interest` instead of what it
    /// watched; returns that.
    fn watch(&mut self, interest: Interest) -> Interest {
        if let Some(ns) = &self.ns {
            self.inner
                .watchers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(self.id, &self.slot, ns, &self.interest, &interest);
        }
        std::mem::replace(&mut self.interest, interest)
    }
}

/// The response body: each response framed as a gRPC
/// Length-Prefixed-Message (`PROTOCOL-HTTP2.md`), then the trailers with
/// the stream's final `grpc-status`. Polled only while HTTP/2 flow control
/// lets the stream send.
impl<P, B> http_body::Body for AdsStream<P, B>
where
    P: Protocol,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.poll_item(cx)) {
            Ok(r) => match frame(&r) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(e) => e,
            },
            Err(e) => e,
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            // A message that cannot be a header value: send the code alone.
            trailers.clear();
            Status::new(status.code(), "").add_header(&mut trailers)?;
            tracing::debug!(stream = this.id, error = %e, "ADS status message dropped");
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// `msg` as one gRPC Length-Prefixed-Message: a zero compressed-flag byte,
/// the length as a big-endian `u32`, the encoded message; in a buffer of
/// exactly that size. Fails with `RESOURCE_EXHAUSTED` over
/// [`MAX_RESPONSE`] bytes.
fn frame<M: Encode>(msg: &M) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    if len > MAX_RESPONSE {
        return Err(Status::resource_exhausted(format!(
            "response of {len} bytes is over the {MAX_RESPONSE}-byte limit"
        )));
    }
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode_raw(&mut buf);
    Ok(buf.freeze())
}

impl<P: Protocol, B> Drop for AdsStream<P, B> {
    fn drop(&mut self) {
        if !self.interest.is_empty() {
            self.watch(Interest::default());
        }
        self.inner.close(self.id, P::VARIANT);
    }
}
