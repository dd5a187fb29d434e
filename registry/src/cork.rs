//! Flush consolidation for HTTP/2 connections (the pattern of Netty's
//! `FlushConsolidationHandler`): writes go to a buffer, and a flush is
//! held until the tokio worker has run the tasks that were already
//! runnable, so the frames that many streams of one connection queue in
//! the same moment leave in one `write` instead of one each.
//!
//! Why: hyper's HTTP/2 connection task flushes at the end of every poll,
//! and tokio runs a task woken by the running task next (its LIFO slot).
//! When an xDS push wakes 100 streams of one connection, each stream's
//! response wakes the connection task, which writes that one frame: 100
//! `writev`s, each a loopback or NIC round of TCP work on both ends. Held
//! flushes turn them into a few writes.
//!
//! Latency: the hold is [`tokio::task::yield_now`]'s deferral, which ends
//! when the worker goes idle (before it parks) or at its next maintenance
//! tick (every 61 polled tasks), so an idle server writes at once and a
//! busy one at most 61 task polls later. Writes beyond [`CORK_MAX`] bytes
//! go out without waiting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes held before a write goes out without waiting.
pub const CORK_MAX: usize = 64 * 1024;

/// A buffer capacity above which an emptied buffer is released, so idle
/// connections hold no write buffer.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A connection whose flushes are consolidated (see the module doc).
pub struct Corked<T> {
    io: T,
    buf: Vec<u8>,
    hold: Option<Hold>,
}

/// A flush being held: tokio's deferred wake for [`tokio::task::yield_now`]
/// and the flag that wake sets.
struct Hold {
    /// Polled once, with [`Released`] as the waker, to register the wake.
    _yield: Pin<Box<dyn Future<Output = ()> + Send>>,
    released: Arc<Released>,
}

/// Set by tokio's deferred wake; then wakes the connection's task.
struct Released {
    done: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Released {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = task {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Corked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corked")
            .field("buffered", &self.buf.len())
            .field("held", &self.hold.is_some())
            .finish()
    }
}

impl<T> Corked<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Corked {
            io,
            buf: Vec::new(),
            hold: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Writes out the buffer; `Pending` when the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let r = loop {
            if done == self.buf.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.buf.drain(..done);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        r
    }

    /// Makes room for `n` more bytes: writes out the buffer first when
    /// they would take it past [`CORK_MAX`].
    fn poll_room(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + n > CORK_MAX {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a held flush may go out now; starts holding when none is.
    fn released(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.hold {
            None => {
                let released = Arc::new(Released {
                    done: AtomicBool::new(false),
                    task: Mutex::new(Some(cx.waker().clone())),
                });
                let mut y: Pin<Box<dyn Future<Output = ()> + Send>> =
                    Box::pin(tokio::task::yield_now());
                let waker = Waker::from(Arc::clone(&released));
                // The first poll registers the deferred wake and is
                // always Pending.
                let _ = y.as_mut().poll(&mut Context::from_waker(&waker));
                self.hold = Some(Hold {
                    _yield: y,
                    released,
                });
                false
            }
            Some(h) => {
                if h.released.done.load(Ordering::Acquire) {
                    return true;
                }
                *h.released.task.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(cx.waker().clone());
                // The wake may have come between the check and the store.
                h.released.done.load(Ordering::Acquire)
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx, data.len()))?;
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.iter().map(|b| b.len()).sum();
        ready!(self.poll_room(cx, n))?;
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !self.released(cx) {
            return Poll::Pending;
        }
        self.hold = None;
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Corked<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn held_writes_leave_together_and_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Corked::new(a);
        c.write_all(b"one ").await.expect("write");
        c.write_all(b"two ").await.expect("write");
        // Nothing has reached the peer before the flush.
        let mut probe = [0u8; 1];
        assert_eq!(c.buf.len(), 8);
        let early = tokio::time::timeout(std::time::Duration::ZERO, b.read(&mut probe)).await;
        assert!(early.is_err(), "bytes left before the flush");
        c.flush().await.expect("flush");
        c.write_all(b"three").await.expect("write");
        c.shutdown().await.expect("shutdown");
        let mut got = String::new();
        b.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "one two three");
    }

    #[tokio::test]
    async fn a_write_past_the_limit_goes_out_without_a_flush() {
        let (a, mut b) = tokio::io::duplex(4 * CORK_MAX);
        let mut c = Corked::new(a);
        c.write_all(&vec![1u8; CORK_MAX - 10]).await.expect("write");
        c.write_all(&[2u8; 20]).await.expect("write");
        let mut first = vec![0u8; CORK_MAX - 10];
        b.read_exact(&mut first)
            .await
            .expect("the held bytes went out");
        assert!(first.iter().all(|&x| x == 1));
        c.flush().await.expect("flush");
        let mut rest = [0u8; 20];
        b.read_exact(&mut rest).await.expect("rest");
        assert_eq!(rest, [2u8; 20]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_waits_for_the_runnable_tasks() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Corked::new(a);
        let order = Arc::new(Mutex::new(Vec::new()));
        // A task already runnable when the flush starts runs before the
        // flush completes.
        let o = Arc::clone(&order);
        let other = tokio::spawn(async move { o.lock().expect("lock").push("other task") });
        c.write_all(b"x").await.expect("write");
        c.flush().await.expect("flush");
        order.lock().expect("lock").push("flushed");
        other.await.expect("task");
        assert_eq!(*order.lock().expect("lock"), ["other task", "flushed"]);
        let mut one = [0u8; 1];
        b.read_exact(&mut one).await.expect("read");
        assert_eq!(&one, b"x");
    }
}
