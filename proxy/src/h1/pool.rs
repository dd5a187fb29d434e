//! The per-endpoint pool of idle upstream connections, and one connection
//! with its buffers.

use super::*;

/// One upstream endpoint as the HTTP/1.1 client sees it: where to dial and
/// its idle connections. Lives in [`crate::runtime::EndpointState`], so the
/// pool survives configuration updates that keep the endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub(super) authority: String,
    pub(super) addr: Option<SocketAddr>,
    pub(super) idle: Mutex<IdleList<Conn>>,
}

impl Endpoint {
    /// An endpoint dialled at `authority` (`host:port`, `[v6]:port`): an IP
    /// literal is parsed here, once; a DNS name is resolved per new
    /// connection.
    pub fn new(authority: &str) -> Endpoint {
        Endpoint {
            authority: authority.to_string(),
            addr: authority.parse().ok(),
            idle: Mutex::new(IdleList::default()),
        }
    }

    /// The socket address, when the authority is an IP literal.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Idle pooled connections now (expired ones included until met).
    pub fn idle(&self) -> usize {
        self.lock().items.len()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, IdleList<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is neither expired nor readable
    /// (see the module doc, rule 1).
    pub(super) fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            // The guard is a temporary: the lock is not held while checking.
            let conn = self.lock().pop(now)?;
            if conn.is_quiet() {
                return Some(conn);
            }
        }
    }

    /// Closes the idle connections that have expired or that the upstream
    /// has closed (or written to unasked); returns how many. Run for every
    /// endpoint by [`crate::runtime::Runtime::sweep_pools`] every quarter
    /// of [`IDLE_TIMEOUT`], so sockets of an endpoint no longer used do not
    /// linger until it is.
    pub fn sweep(&self) -> usize {
        // Checked outside the lock (a system call each); what is put back
        // meanwhile is newer, so it stays on top.
        let mut idle = IdleList {
            items: std::mem::take(&mut self.lock().items),
        };
        let before = idle.items.len();
        idle.expire(Instant::now());
        idle.items.retain(|(conn, _)| conn.is_quiet());
        let closed = before - idle.items.len();
        let mut list = self.lock();
        idle.items.append(&mut list.items);
        let excess = idle.items.len().saturating_sub(MAX_IDLE_PER_ENDPOINT);
        idle.items.drain(..excess);
        list.items = idle.items;
        closed
    }

    /// Puts a connection back (closes it when the pool is full).
    pub(super) fn put(&self, mut conn: Conn) {
        if conn.wbuf.capacity() > MAX_POOLED_WBUF {
            conn.wbuf = Vec::new();
        }
        let rejected = self.lock().push(conn, Instant::now());
        drop(rejected);
    }

    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, Error> {
        let io = tokio::time::timeout(timeout, self.dial())
            .await
            .map_err(|_| Error::ConnectTimeout(timeout))??;
        io.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
        })
    }

    pub(super) async fn dial(&self) -> Result<TcpStream, Error> {
        if let Some(a) = self.addr {
            return TcpStream::connect(a).await.map_err(Error::Connect);
        }
        let addrs = tokio::net::lookup_host(self.authority.as_str())
            .await
            .map_err(Error::Resolve)?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => Error::Connect(e),
            None => Error::Resolve(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            )),
        })
    }
}

/// Idle items with the time they were put back, newest last (LIFO).
#[derive(Debug)]
pub(super) struct IdleList<T> {
    pub(super) items: Vec<(T, Instant)>,
}

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        IdleList { items: Vec::new() }
    }
}

impl<T> IdleList<T> {
    /// The newest item idle for less than [`IDLE_TIMEOUT`] at `now`. When
    /// the newest has expired, all have: they are all dropped.
    pub(super) fn pop(&mut self, now: Instant) -> Option<T> {
        let (item, since) = self.items.pop()?;
        if now.saturating_duration_since(since) < IDLE_TIMEOUT {
            return Some(item);
        }
        // Rare (a pool left idle for a minute); closing sockets is cheap.
        self.items.clear();
        None
    }

    /// Drops the items idle for [`IDLE_TIMEOUT`] or longer at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        if self
            .items
            .first()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT)
        {
            self.items
                .retain(|(_, since)| now.saturating_duration_since(*since) < IDLE_TIMEOUT);
        }
    }

    /// Puts an item back at `now`, first dropping expired items if the
    /// oldest has expired; returns it when the list is full.
    pub(super) fn push(&mut self, item: T, now: Instant) -> Option<T> {
        self.expire(now);
        if self.items.len() >= MAX_IDLE_PER_ENDPOINT {
            return Some(item);
        }
        self.items.push((item, now));
        None
    }
}

/// One upstream connection and its buffers (kept across requests so they
/// are not reallocated).
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: TcpStream,
    /// Bytes read and not yet consumed.
    pub(super) rbuf: BytesMut,
    /// The request being written.
    pub(super) wbuf: Vec<u8>,
}

impl Conn {
    /// Whether an idle connection has nothing to read (no EOF, no reset,
    /// no unsolicited bytes).
    pub(super) fn is_quiet(&self) -> bool {
        let mut b = [0u8; 8];
        matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads what is available into `rbuf`; `Ok(0)` is EOF.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPACE {
            self.rbuf.reserve(READ_RESERVE);
        }
        // Through tokio's `AsyncRead`, which (unlike `try_read_buf`) marks
        // the socket not readable after a read that did not fill the
        // buffer: the next `is_quiet` then costs no system call unless
        // something arrived since.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    pub(super) async fn read(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Writes what is buffered and then `data`, in one call and without
    /// copying `data` into the buffer.
    pub(super) async fn write_through(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = (&self.wbuf[..]).chain(data);
        self.io.write_all_buf(&mut out).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Writes `wbuf` out and clears it.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}
