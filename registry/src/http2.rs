//! The gRPC port's HTTP/2 server: hyper's HTTP/2 connection with each
//! connection's streams run inside the connection's own task.
//!
//! hyper (as tonic's server uses it) spawns every HTTP/2 stream as a task
//! of its own. A long-lived streaming RPC (an ADS or watch stream) then
//! costs two task wake-ups per message, its own and the connection's,
//! and because tokio runs a task woken by the one running right after it,
//! the connection writes each stream's frame as it comes: with many
//! streams on one connection, one `writev` per one or two messages.
//!
//! Here the executor hyper is given ([`Streams`]) collects a connection's
//! stream futures, and one future ([`Drive`]) polls them and the
//! connection together in the connection's task. A registry change that
//! wakes a hundred ADS streams of one connection wakes one task; it polls
//! the hundred streams, which queue their frames, and then the
//! connection, which writes them together. Requests and responses of
//! different connections still run in parallel on the runtime's workers;
//! those of one connection share its task, as they share its socket.
//!
//! The connection's writes are corked for the length of that poll
//! ([`Corked`]): h2 writes each DATA frame of 256 bytes or more with a
//! `writev` of its own before it takes the next frame, so without the cork
//! a hundred ADS responses still cost a hundred system calls (and a
//! hundred loopback deliveries); corked, they leave in one write when the
//! poll ends.
//!
//! Everything else is what `tonic::transport::Server` did on this port:
//! HTTP/2 only (prior knowledge), `TCP_NODELAY`, keep-alive pings, a limit
//! on concurrent streams per connection, [`TcpConnectInfo`] in each
//! request's extensions (for `Request::remote_addr`), and a graceful
//! shutdown (GOAWAY, then in-flight streams finish).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;

/// HTTP/2 settings of the gRPC port.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Interval of keep-alive PINGs on an idle connection (the connection
    /// closes when one is not answered within 20 s).
    pub keepalive: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
    pub max_streams: u32,
}

/// A gRPC service that gets hyper's request as it arrives, ahead of the
/// router: no routing, and none of the body conversions the router wraps
/// each request and response body in (boxed layers that every poll of a
/// long-lived stream goes through, several per message). For services
/// whose streams carry many messages: ADS.
#[derive(Clone)]
pub struct Direct {
    /// The gRPC service's full name (`package.Service`): requests for
    /// `/<name>/<method>` go to `call`.
    pub name: &'static str,
    /// Answers one request; the response body streams the RPC's messages.
    pub call: Arc<DirectFn>,
}

/// [`Direct::call`]'s shape.
pub type DirectFn =
    dyn Fn(http::Request<Incoming>) -> http::Response<tonic::body::Body> + Send + Sync;

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("name", &self.name).finish()
    }
}

impl Direct {
    fn serves(&self, path: &str) -> bool {
        path.strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.name))
            .is_some_and(|p| p.starts_with('/'))
    }
}

/// Serves `direct` and `routes` on the connections `listener` accepts
/// until `stop` is true, then stops accepting, sends GOAWAY on every
/// connection and returns when their streams have finished (the caller
/// bounds the wait).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    direct: Vec<Direct>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    // Each connection holds a sender; `recv` returns `None` once all are
    // gone.
    let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
    let direct: Arc<[Direct]> = direct.into();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let info = TcpConnectInfo {
                    local_addr: tcp.local_addr().ok(),
                    remote_addr: Some(remote),
                };
                let svc = Svc {
                    routes: routes.clone(),
                    direct: direct.clone(),
                    info,
                };
                tokio::spawn(connection(
                    tcp,
                    svc,
                    settings,
                    stop.clone(),
                    open_tx.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: do not spin.
                tracing::warn!(error = %e, "gRPC port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

type Conn = http2::Connection<TokioIo<Corked>, Svc, Streams>;

/// The direct services and the routes, with the connection's addresses
/// added to each request.
#[derive(Clone)]
struct Svc {
    routes: Routes,
    direct: Arc<[Direct]>,
    info: TcpConnectInfo,
}

impl hyper::service::Service<http::Request<Incoming>> for Svc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        if let Some(d) = self.direct.iter().find(|d| d.serves(req.uri().path())) {
            return Box::pin(std::future::ready(Ok((d.call)(req))));
        }
        let mut routes = self.routes.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                Service::<http::Request<Incoming>>::poll_ready(&mut routes, cx)
            })
            .await?;
            routes.call(req).await
        })
    }
}

async fn connection(
    tcp: TcpStream,
    svc: Svc,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
    _open: mpsc::Sender<Infallible>,
) {
    let _ = tcp.set_nodelay(true);
    let (read, write) = tcp.into_split();
    let out = Arc::new(Mutex::new(Out {
        socket: write,
        buf: Vec::new(),
    }));
    let io = Corked {
        read,
        out: out.clone(),
    };
    let streams = Streams::default();
    let conn = http2::Builder::new(streams.clone())
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive)
        .max_concurrent_streams(settings.max_streams)
        .serve_connection(TokioIo::new(io), svc);
    let mut drive = Drive {
        conn: Some(Box::pin(conn)),
        running: FuturesUnordered::new(),
        spawned: streams,
        out,
    };
    tokio::select! {
        () = &mut drive => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    if let Some(conn) = drive.conn.as_mut() {
        conn.as_mut().graceful_shutdown();
    }
    drive.await;
}

/// The executor hyper spawns a connection's streams on: it hands them to
/// that connection's [`Drive`].
#[derive(Clone, Default)]
struct Streams(Arc<Spawned>);

#[derive(Default)]
struct Spawned {
    new: Mutex<Vec<BoxFuture<'static, ()>>>,
    /// Polls of this connection's streams, counted to tell when
    /// `FuturesUnordered` yields while streams still make progress.
    polls: Arc<AtomicU64>,
    /// The connection's task, woken when a stream is spawned outside its
    /// poll (hyper spawns from inside it, so this is a safeguard).
    task: AtomicWaker,
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Streams {
    fn execute(&self, fut: F) {
        let polls = self.0.polls.clone();
        let mut fut = Box::pin(fut);
        let counted = std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            fut.as_mut().poll(cx)
        });
        self.0
            .new
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::pin(counted));
        self.0.task.wake();
    }
}

impl Streams {
    fn take(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut *self.0.new.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One connection and its streams, polled together; ready when the
/// connection has closed and every stream has finished.
struct Drive {
    /// `None` once closed: dropping it ends the streams still open.
    conn: Option<Pin<Box<Conn>>>,
    running: FuturesUnordered<BoxFuture<'static, ()>>,
    spawned: Streams,
    /// What the connection wrote during the poll, sent when it ends.
    out: Arc<Mutex<Out>>,
}

/// Rounds of [`Drive::poll_streams`] after `FuturesUnordered` yielded.
/// Each round polls at least two streams, so one poll of a connection
/// handles at least 128 sends (the sends of a 100-stream push in one
/// write) and, like tokio's per-task budget, at most about that many
/// streams that keep waking themselves before other tasks get the worker.
const MAX_ROUNDS: usize = 64;

impl Drive {
    /// Polls the streams that are ready. `FuturesUnordered` yields (wakes
    /// the task and returns `Pending`) after two streams that woke
    /// themselves while polled, which every stream that sends does (h2
    /// assigns it send capacity inside `reserve_capacity` and notifies
    /// it): keep polling while the streams make progress, so that one
    /// poll of the connection writes all of them.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        let polls = &self.spawned.0.polls;
        for _ in 0..MAX_ROUNDS {
            let before = polls.load(Ordering::Relaxed);
            loop {
                match self.running.poll_next_unpin(cx) {
                    Poll::Ready(Some(())) => {}
                    Poll::Ready(None) => return,
                    Poll::Pending => break,
                }
            }
            if polls.load(Ordering::Relaxed) == before {
                return;
            }
        }
    }
}

impl Future for Drive {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = &mut *self;
        me.spawned.0.task.register(cx.waker());
        // What a previous poll could not send goes first.
        if let Poll::Ready(Err(e)) = lock(&me.out).poll_send(cx) {
            tracing::debug!(error = %e, "gRPC connection: write failed");
            me.conn = None;
        }
        loop {
            // Streams first, so that the frames they queue are written by
            // the connection's poll right after.
            me.poll_streams(cx);
            if let Some(conn) = me.conn.as_mut() {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "gRPC connection ended");
                    }
                    me.conn = None;
                }
            }
            let new = me.spawned.take();
            if new.is_empty() {
                break;
            }
            me.running.extend(new);
        }
        // The cork comes out: one write for everything queued above. What
        // the socket does not take now goes when it is writable again
        // (`poll_send` registered this task for that).
        if let Poll::Ready(Err(e)) = lock(&me.out).poll_send(cx) {
            tracing::debug!(error = %e, "gRPC connection: write failed");
            me.conn = None;
        }
        if me.conn.is_none() && me.running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Bytes written and not sent yet, beyond which a write waits for the
/// socket (backpressure to h2).
const CORK_LIMIT: usize = 256 * 1024;

fn lock(out: &Mutex<Out>) -> std::sync::MutexGuard<'_, Out> {
    out.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's socket as hyper sees it: reads go to the socket; writes
/// and flushes only append to [`Out`], which [`Drive`] sends when its poll
/// ends (hyper polls the connection only from there), or when more than
/// [`CORK_LIMIT`] bytes are waiting.
struct Corked {
    read: tokio::net::tcp::OwnedReadHalf,
    out: Arc<Mutex<Out>>,
}

struct Out {
    socket: tokio::net::tcp::OwnedWriteHalf,
    /// Unsent bytes; freed when sent, so an idle connection holds none.
    buf: Vec<u8>,
}

/// The buffer a write starts with, bytes (it grows for more).
const CORK_START: usize = 16 * 1024;

impl Out {
    /// Makes room to buffer `len` more bytes: sends first when over
    /// [`CORK_LIMIT`]; reserves [`CORK_START`] bytes when empty.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<std::io::Result<()>> {
        if self.buf.len() >= CORK_LIMIT {
            std::task::ready!(self.poll_send(cx))?;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(len.max(CORK_START));
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what is buffered: `Ready(Ok)` when all of it went, `Pending`
    /// (with the task registered for writability) when the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut sent = 0;
        let result = loop {
            if sent == self.buf.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.socket).poll_write(cx, &self.buf[sent..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if sent == self.buf.len() {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..sent);
        }
        result
    }
}

impl tokio::io::AsyncRead for Corked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = lock(&self.out);
        std::task::ready!(out.poll_room(cx, data.len()))?;
        out.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = lock(&self.out);
        let len = bufs.iter().map(|b| b.len()).sum();
        std::task::ready!(out.poll_room(cx, len))?;
        let mut n = 0;
        for b in bufs {
            out.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Sent when the connection's poll ends.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = lock(&self.out);
        std::task::ready!(out.poll_send(cx))?;
        Pin::new(&mut out.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
