//! An ADS stream's requests: gRPC Length-Prefixed-Messages
//! (`PROTOCOL-HTTP2.md`: a compressed-flag byte, a big-endian `u32`
//! length, the message) read from the request body and decoded with prost.
//!
//! A client's request usually arrives whole in one HTTP/2 DATA frame; it is
//! then decoded straight from that frame's bytes. Only a message split
//! over frames, or a frame carrying the end of one message and the start
//! of the next, is gathered in a buffer, which is freed once empty, so an
//! idle stream holds none.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use prost::Message;
use tonic::codegen::StdError;
use tonic::Status;

use super::grpc::MAX_REQUEST;

/// Length of a message's prefix: compressed flag and length.
const PREFIX: usize = 5;

/// The messages of type `M` in request body `B`.
pub(super) struct Requests<M, B> {
    body: B,
    /// Bytes received and not yet decoded: the start of a message.
    buf: BytesMut,
    /// The body has ended (or failed): nothing more is read.
    ended: bool,
    message: PhantomData<fn() -> M>,
}

impl<M, B> Requests<M, B>
where
    M: Message + Default,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    /// Reads `body`.
    pub(super) fn new(body: B) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            ended: false,
            message: PhantomData,
        }
    }

    /// The next request; `None` when the client has half-closed. Errors
    /// (each ends the stream): `INTERNAL` for a message that does not
    /// decode or is compressed (none is negotiated), or for a body that
    /// ends inside a message; `RESOURCE_EXHAUSTED` for one over
    /// [`MAX_REQUEST`] bytes; the body's own error (a reset) as tonic
    /// maps it.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M, Status>>> {
        let next = std::task::ready!(self.poll_message(cx));
        if let Some(Err(_)) = next {
            // Nothing is read after an error.
            self.ended = true;
            self.buf = BytesMut::new();
        }
        Poll::Ready(next)
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M, Status>>> {
        loop {
            if let Some(len) = whole_message(&self.buf)? {
                let msg = decode(&self.buf[PREFIX..PREFIX + len]);
                self.buf.advance(PREFIX + len);
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(Some(msg));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Status::internal(
                    "the request stream ended inside a message",
                ))));
            }
            let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Status::from_error(e.into())))),
                Some(Ok(frame)) => frame,
            };
            // Trailers from a client carry nothing for ADS.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if self.buf.is_empty() {
                // The common case: a whole message, decoded from the frame.
                if let Some(len) = whole_message(&data)? {
                    self.buf.extend_from_slice(&data[PREFIX + len..]);
                    return Poll::Ready(Some(decode(&data[PREFIX..PREFIX + len])));
                }
            }
            self.buf.extend_from_slice(&data);
        }
    }
}

/// The length of the message `data` starts with, once `data` holds all of
/// it (`None` before that); its prefix checked as soon as it is there.
fn whole_message(data: &[u8]) -> Result<Option<usize>, Status> {
    let Some(prefix) = data.get(..PREFIX) else {
        return Ok(None);
    };
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "a compressed request, but no grpc-encoding was negotiated",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "invalid compressed-flag {f} in a request message prefix"
            )))
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_REQUEST {
        return Err(Status::resource_exhausted(format!(
            "request message of {len} bytes is over the {MAX_REQUEST}-byte limit"
        )));
    }
    Ok((data.len() >= PREFIX + len).then_some(len))
}

fn decode<M: Message + Default>(msg: &[u8]) -> Result<M, Status> {
    M::decode(msg).map_err(|e| Status::internal(format!("failed to decode a request: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use http_body::Frame;

    use super::*;

    /// A body yielding `frames`, then ending.
    struct Frames(VecDeque<Result<Bytes, Status>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|f| f.map(Frame::data)))
        }
    }

    fn framed(m: &DeltaDiscoveryRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn request(n: usize) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: format!("type.googleapis.com/t{n}"),
            response_nonce: "x".repeat(n * 40),
            ..Default::default()
        }
    }

    /// Every request read from `chunks`, and how the stream ended.
    fn read(chunks: Vec<Result<Bytes, Status>>) -> (Vec<DeltaDiscoveryRequest>, Option<Status>) {
        let mut r = Requests::<DeltaDiscoveryRequest, _>::new(Frames(chunks.into()));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        loop {
            match r.poll_next(&mut cx) {
                Poll::Ready(Some(Ok(m))) => got.push(m),
                Poll::Ready(Some(Err(e))) => return (got, Some(e)),
                Poll::Ready(None) => return (got, None),
                Poll::Pending => unreachable!("the test body is always ready"),
            }
        }
    }

    #[test]
    fn messages_whole_split_and_several_per_frame() {
        let all: Vec<u8> = (0..5).flat_map(|n| framed(&request(n))).collect();
        let want: Vec<_> = (0..5).map(request).collect();
        // One message per frame.
        let whole = (0..5)
            .map(|n| Ok(Bytes::from(framed(&request(n)))))
            .collect();
        let (got, end) = read(whole);
        assert!(end.is_none(), "{end:?}");
        assert_eq!(got, want);
        // Every way of cutting the bytes into two or three frames,
        // including cuts inside a prefix.
        for a in 0..all.len() {
            for b in [a, (a + 7).min(all.len()), all.len()] {
                let chunks = vec![
                    Ok(Bytes::copy_from_slice(&all[..a])),
                    Ok(Bytes::copy_from_slice(&all[a..b])),
                    Ok(Bytes::copy_from_slice(&all[b..])),
                ];
                let (got, end) = read(chunks);
                assert!(end.is_none(), "cut at {a} and {b}: {end:?}");
                assert_eq!(got, want, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn bad_messages_end_the_stream_with_a_status() {
        let one = framed(&request(1));
        // Ends inside a message.
        let (got, end) = read(vec![Ok(Bytes::copy_from_slice(&one[..one.len() - 1]))]);
        assert!(got.is_empty());
        let end = end.expect("an error");
        assert_eq!(end.code(), tonic::Code::Internal);
        assert!(end.message().contains("ended inside"), "{}", end.message());
        // Compressed.
        let mut compressed = one.clone();
        compressed[0] = 1;
        let (_, end) = read(vec![Ok(Bytes::from(compressed))]);
        assert_eq!(end.expect("an error").code(), tonic::Code::Internal);
        // Not a DeltaDiscoveryRequest: the first one is still read.
        let mut garbage = one.clone();
        garbage.extend_from_slice(&[0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        let (got, end) = read(vec![Ok(Bytes::from(garbage))]);
        assert_eq!(got, vec![request(1)]);
        let end = end.expect("an error");
        assert_eq!(end.code(), tonic::Code::Internal);
        assert!(end.message().contains("decode"), "{}", end.message());
        // Over the limit, named before any of it is buffered.
        let mut huge = vec![0];
        huge.extend_from_slice(&((MAX_REQUEST + 1) as u32).to_be_bytes());
        let (_, end) = read(vec![Ok(Bytes::from(huge))]);
        let end = end.expect("an error");
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("limit"), "{}", end.message());
        // The body's own error (a reset) is passed on.
        let (got, end) = read(vec![
            Ok(Bytes::from(one)),
            Err(Status::cancelled("reset by the client")),
        ]);
        assert_eq!(got, vec![request(1)]);
        assert_eq!(end.expect("an error").code(), tonic::Code::Cancelled);
    }
}
