//! The response body handed to hyper.

use super::*;

/// A response body read from the upstream connection as it is polled.
///
/// Data frames are the bytes as they arrive (split off the read buffer,
/// not copied); a chunked body may end with a trailers frame. When the
/// body ends cleanly and the connection is reusable, the connection goes
/// back to its endpoint's pool; dropped earlier, the connection closes.
/// Errors are [`Error`]s (a truncated or malformed body, a reset).
///
/// It also carries the response's header fields as the upstream sent
/// them ([`ResponseBody::take_head`]): [`send`] leaves the response's
/// `HeaderMap` empty, so that a response passed on to an HTTP/1.1 client
/// is written from the upstream's bytes ([`super::server`]) and a map is
/// built only for a downstream that needs one ([`ResponseBody::head_into`]).
#[derive(Debug)]
pub struct ResponseBody {
    pub(super) state: BodyState,
    head: Option<UpstreamHead>,
}

#[derive(Debug)]
pub(super) enum BodyState {
    /// Ended (or had none).
    Done,
    /// Already read whole; the connection is already released.
    Full(Bytes),
    /// Still on the connection.
    Streaming(Box<Streaming>),
}

#[derive(Debug)]
pub(super) struct Streaming {
    pub(super) conn: Conn,
    pub(super) ep: Arc<Endpoint>,
    pub(super) decoder: Decoder,
    pub(super) reusable: bool,
}

impl Streaming {
    /// The body ended cleanly: see [`release`].
    pub(super) fn release(self) {
        release(&self.ep, self.conn, self.reusable);
    }
}

/// A response body ended cleanly: the connection goes back to `ep`'s pool
/// when reusable and nothing follows the response, else it closes.
fn release(ep: &Endpoint, conn: Conn, reusable: bool) {
    if reusable && conn.rbuf.is_empty() {
        ep.put(conn);
    }
}

impl ResponseBody {
    /// A body over `conn`; releases the connection at once when the whole
    /// body is already buffered.
    pub(super) fn new(
        mut conn: Conn,
        ep: &Arc<Endpoint>,
        framing: Framing,
        reusable: bool,
        head: UpstreamHead,
    ) -> Self {
        let head = Some(head);
        let decoder = match framing {
            Framing::Empty => {
                release(ep, conn, reusable);
                return ResponseBody {
                    state: BodyState::Done,
                    head,
                };
            }
            Framing::Length(n) if n <= conn.rbuf.len() as u64 => {
                // `n` fits: it is at most the buffer's length.
                let body = conn.rbuf.split_to(n as usize).freeze();
                release(ep, conn, reusable);
                return ResponseBody {
                    state: BodyState::Full(body),
                    head,
                };
            }
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(ChunkedDecoder::new()),
            Framing::Close => Decoder::Close,
        };
        ResponseBody {
            state: BodyState::Streaming(Box::new(Streaming {
                conn,
                ep: Arc::clone(ep),
                decoder,
                reusable,
            })),
            head,
        }
    }

    /// The upstream's header fields, once: `None` after the first call.
    pub fn take_head(&mut self) -> Option<UpstreamHead> {
        self.head.take()
    }

    /// Moves the upstream's fields passed on ([`UpstreamHead`]) into
    /// `map`, for a downstream that writes a map (hyper's server);
    /// nothing when they were taken already.
    pub fn head_into(&mut self, map: &mut HeaderMap) {
        if let Some(head) = self.head.take() {
            head.append_to(map);
        }
    }

    /// Ends the body: releases a streaming connection.
    pub(super) fn finish(&mut self) {
        if let BodyState::Streaming(s) = std::mem::replace(&mut self.state, BodyState::Done) {
            s.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let s = match &mut this.state {
            BodyState::Done => return Poll::Ready(None),
            BodyState::Full(_) => {
                let BodyState::Full(b) = std::mem::replace(&mut this.state, BodyState::Done) else {
                    return Poll::Ready(None);
                };
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            BodyState::Streaming(s) => s,
        };
        loop {
            let frame = match s.decoder.decode(&mut s.conn.rbuf) {
                Ok(Decoded::NeedMore) => None,
                Ok(Decoded::Data(b)) => Some((Frame::data(b), s.decoder.is_done())),
                Ok(Decoded::Trailers(t)) => Some((Frame::trailers(t), true)),
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if let Some((frame, done)) = frame {
                if done {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(s.conn.poll_read(cx)) {
                Ok(0) => {
                    let end = s.decoder.on_eof();
                    // EOF: the connection is not reusable either way.
                    this.state = BodyState::Done;
                    return Poll::Ready(end.err().map(Err));
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(Error::Read(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Full(b) => SizeHint::with_exact(b.len() as u64),
            BodyState::Streaming(s) => match s.decoder {
                Decoder::Length(rem) => SizeHint::with_exact(rem),
                _ => SizeHint::default(),
            },
        }
    }
}
