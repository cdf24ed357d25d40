//! Accepting connections and serving each with hyper: the listener loop,
//! the timeouts that reap connections making no progress, and the handle
//! that asks them all to finish at shutdown.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::Version;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

use crate::config;

/// The client address of a request (a request extension): the peer's, or
/// behind a trusted proxy the forwarded client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The accepted connections: how hyper serves each one, and the handle that
/// asks them all to finish.
///
/// Idle connections are closed after `server.idle_timeout`: by hyper's
/// header-read timeout for HTTP/1, by a GOAWAY sent here for HTTP/2 (hyper
/// has no idle timeout for it, and a client that answers its keep-alive
/// pings would otherwise hold the connection for ever).
///
/// Written here rather than with `axum::serve` because that sets no timer,
/// so hyper's header-read timeout never runs: a client could hold a
/// connection (and its file descriptor) for ever by sending nothing, or one
/// header byte at a time, and a mobile client gone without a FIN would
/// never be reaped. Neither axum nor hyper bounds a write either: a client
/// that stops reading would pin its response in memory for ever
/// ([`WriteDeadline`]).
pub(crate) struct Connections {
    builder: auto::Builder<TokioExecutor>,
    /// Sends once at shutdown; each connection holds a receiver, so
    /// `closed()` resolves when the last one has ended.
    shutdown: watch::Sender<()>,
    /// `server.idle_timeout`.
    idle: Duration,
    /// `server.header_timeout`.
    header: Duration,
    /// `server.max_connections` permits, one held by each open connection.
    slots: Arc<Semaphore>,
    /// Open connections per client address (`server.max_connections_per_ip`).
    per_ip: Arc<PerIp>,
    /// `server.trusted_proxies`.
    proxies: Arc<[ipnet::IpNet]>,
}

/// Open connections per address, and the cap.
struct PerIp {
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    max: usize,
}

/// One connection's place in `PerIp`, given back when it ends.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A place for one more connection from `ip`, or `None` at the cap.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    pub(crate) fn new(cfg: &config::ServerConfig) -> Self {
        let idle = cfg.idle_timeout.0;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(idle);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(idle)
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            builder,
            shutdown: watch::channel(()).0,
            idle,
            header: cfg.header_timeout.0,
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            per_ip: Arc::new(PerIp {
                open: std::sync::Mutex::default(),
                max: cfg.max_connections_per_ip,
            }),
            proxies: cfg.trusted_networks().into(),
        }
    }

    /// Asks every connection to finish (idle ones close at once, in-flight
    /// requests complete) and resolves when all have.
    pub(crate) async fn shutdown(self) {
        self.shutdown.send_replace(());
        self.shutdown.closed().await;
    }

    /// Accepts connections until the future is dropped (which closes the
    /// listener), serving each on its own task. Never returns: a failed
    /// accept (out of file descriptors, a connection reset before it was
    /// taken) is logged and retried.
    pub(crate) async fn accept(&self, listener: TcpListener, app: Router) {
        loop {
            // At `server.max_connections`, stop accepting until one closes:
            // new clients wait in the kernel's backlog instead of costing
            // memory here.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return; // never closed
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) would fail again
                    // at once: wait for connections to close, as hyper 0.14's
                    // server did.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // One address may hold only so many connections (a proxy
            // carries many clients: exempt). At the cap the new one is
            // closed at once, before it costs anything.
            let proxied = self.proxies.iter().any(|n| n.contains(&peer.ip()));
            let ip_slot = match proxied {
                true => None,
                false => match self.per_ip.take(peer.ip()) {
                    Some(s) => Some(s),
                    None => {
                        metrics::counter!("http_connections_refused_total", "reason" => "per_ip")
                            .increment(1);
                        drop(stream);
                        continue;
                    }
                },
            };
            // Responses are written whole: send them without Nagle's delay.
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(Activity::new());
            let service = TowerToHyperService::new(Tracked {
                inner: app.clone(),
                activity: activity.clone(),
                peer: peer.ip(),
                proxies: proxied.then(|| self.proxies.clone()),
            });
            let io = WriteDeadline::new(stream, self.idle, activity.clone());
            let conn = self
                .builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            let watch = Watch {
                activity,
                idle: self.idle,
                header: self.header,
                shutdown: self.shutdown.subscribe(),
            };
            tokio::spawn(run(conn, watch, (slot, ip_slot)));
        }
    }
}

/// The error a served connection ends with.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// One connection's requests, as its service sees them begin and end.
struct Activity {
    /// When the connection was accepted.
    opened: Instant,
    /// When the first request began or a request last ended, in
    /// nanoseconds after `opened`, plus one (0: no request yet).
    last: AtomicU64,
    /// Requests begun and not yet answered (their response head).
    in_flight: AtomicUsize,
    /// The requests are HTTP/2.
    h2: AtomicBool,
    /// When bytes of a request head first arrived while no request was
    /// running, in nanoseconds after `opened`, plus one (0: none waiting).
    head_started: AtomicU64,
    /// Wakes the connection's watch when a head begins.
    head: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            head_started: AtomicU64::new(0),
            head: tokio::sync::Notify::new(),
        }
    }

    /// Bytes arrived from the client: between HTTP/1 requests they begin
    /// a request head (HTTP/2 sends frames between requests by design).
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            let since = self.opened.elapsed().as_nanos();
            self.head_started.store(
                u64::try_from(since).unwrap_or(u64::MAX - 1) + 1,
                Ordering::Relaxed,
            );
            self.head.notify_one();
        }
    }

    /// When the request head now arriving began, if one is.
    fn head_started(&self) -> Option<Instant> {
        match self.head_started.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.opened + Duration::from_nanos(n - 1)),
        }
    }

    fn touch(&self) {
        let since = self.opened.elapsed().as_nanos();
        self.last.store(
            u64::try_from(since).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// Records a request beginning. Only the first needs the time (it
    /// ends the wait for a first request); while any runs, the connection
    /// is busy whatever `last` says, and `end` sets it.
    fn begin(&self, version: Version) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        if self.last.load(Ordering::Relaxed) == 0 {
            self.touch();
        }
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// Records a request answered (or dropped).
    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the first request began or a request last ended, if one has
    /// begun.
    fn last_request(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.opened + Duration::from_nanos(n - 1)),
        }
    }
}

/// The app as one connection's service: it keeps the connection's
/// `Activity` up to date.
#[derive(Clone)]
struct Tracked {
    inner: Router,
    activity: Arc<Activity>,
    /// The peer's address.
    peer: IpAddr,
    /// `server.trusted_proxies`, when the peer is one of them.
    proxies: Option<Arc<[ipnet::IpNet]>>,
}

impl Tracked {
    /// The request's client: the peer, or behind a trusted proxy the last
    /// `X-Forwarded-For` address that is not a trusted proxy itself (the
    /// ones before it could be written by the client).
    fn client(&self, headers: &axum::http::HeaderMap) -> ClientAddr {
        let Some(proxies) = &self.proxies else {
            return ClientAddr(self.peer);
        };
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        forwarded
            .iter()
            .rev()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .find(|ip| !proxies.iter().any(|n| n.contains(ip)))
            .map_or(ClientAddr(self.peer), ClientAddr)
    }
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = InFlight<<Router as tower::Service<Request<Incoming>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<Request<Incoming>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        self.activity.begin(req.version());
        let client = self.client(req.headers());
        req.extensions_mut().insert(client);
        InFlight {
            inner: self.inner.call(req),
            activity: self.activity.clone(),
        }
    }
}

/// A request's response future, counted in its connection's `Activity`
/// until it completes or is dropped.
struct InFlight<F> {
    inner: F,
    activity: Arc<Activity>,
}

impl<F: Future + Unpin> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

impl<F> Drop for InFlight<F> {
    fn drop(&mut self) {
        self.activity.end();
    }
}

/// What `run` watches besides the connection itself.
struct Watch {
    activity: Arc<Activity>,
    /// `server.idle_timeout`.
    idle: Duration,
    /// `server.header_timeout`.
    header: Duration,
    /// Changes once, when the server shuts down.
    shutdown: watch::Receiver<()>,
}

impl Watch {
    /// When to look at the connection's idleness next: before its first
    /// request, and for HTTP/2 `idle_timeout` after the last request ended
    /// (later while one runs); `None` for HTTP/1 once a request
    /// began (hyper's header-read timeout closes it when idle).
    fn next_check(&self) -> Option<Instant> {
        let idle = match self.activity.last_request() {
            None => Some(self.activity.opened + self.idle),
            Some(_) if !self.activity.h2.load(Ordering::Relaxed) => None,
            // A request still running: not idle; look again later.
            Some(_) if self.activity.in_flight.load(Ordering::Relaxed) > 0 => {
                Some(Instant::now() + self.idle)
            }
            Some(last) => Some(last + self.idle),
        };
        let head = self.head_deadline();
        match (idle, head) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the request head now arriving must be complete, if one is.
    fn head_deadline(&self) -> Option<Instant> {
        self.activity.head_started().map(|t| t + self.header)
    }
}

/// Drives one connection to its end: counted in `http_connections_open`
/// meanwhile, and in `http_connections_timed_out_total{reason}` when a
/// timeout ends it (`idle`: no first request in time, or an HTTP/2
/// connection with no request running or begun for `idle_timeout`;
/// `write`: the client read nothing of its response in time). At shutdown,
/// and when an HTTP/2 connection has been idle that long, it is asked to
/// finish: requests in flight complete, no new one is taken.
async fn run(
    conn: impl GracefulConnection<Error = ConnError>,
    mut watch: Watch,
    _slots: (OwnedSemaphorePermit, Option<IpSlot>),
) {
    let _open = OpenConnection::new();
    tokio::pin!(conn);
    // The shutdown receiver lives as long as the connection, so the
    // server's shutdown waits for it.
    let mut finishing = false;
    let ended = loop {
        let check = if finishing { None } else { watch.next_check() };
        tokio::select! {
            r = conn.as_mut() => break r,
            Ok(()) = watch.shutdown.changed(), if !finishing => {
                conn.as_mut().graceful_shutdown();
                finishing = true;
            }
            // A request head began: look at its deadline.
            () = watch.activity.head.notified(), if !finishing => {}
            () = sleep_until_some(check) => {
                // A head that trickles in (slowloris) is cut once
                // `server.header_timeout` has passed since its first byte.
                if watch.head_deadline().is_some_and(|at| at <= Instant::now()) {
                    timed_out("header");
                    return;
                }
                // hyper's header-read timeout starts once the protocol is
                // known, and telling HTTP/1 from HTTP/2 waits for the
                // client's first bytes: a client that sends nothing, or
                // half of HTTP/2's preface, is cut here.
                if watch.activity.last_request().is_none()
                    && watch.activity.opened + watch.idle <= Instant::now()
                {
                    timed_out("idle");
                    return;
                }
                // No request since: an idle HTTP/2 connection gets GOAWAY.
                if watch.next_check().is_some_and(|at| at <= Instant::now()) {
                    timed_out("idle");
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
            }
        }
    };
    if let Err(e) = ended {
        match timeout_reason(&*e) {
            Some(reason) => timed_out(reason),
            None => tracing::debug!(error = %e, "connection ended with an error"),
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn timed_out(reason: &'static str) {
    tracing::debug!(reason, "connection closed by a timeout");
    metrics::counter!("http_connections_timed_out_total", "reason" => reason).increment(1);
}

/// `write` for a stalled write ([`WriteDeadline`]), `idle` for hyper's
/// header-read timeout or an unanswered HTTP/2 ping, `None` otherwise.
fn timeout_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return Some("write");
        }
        cause = c.source();
    }
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
        .then_some("idle")
}

/// One open connection in the `http_connections_open` gauge, for as long
/// as it lives (a panic or an abort drops it too).
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

/// An error of one connection (reset or aborted before it was taken), not
/// of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// A socket whose writes must make progress: a write or flush left pending
/// for `limit` (the client stopped reading, its window is shut) fails with
/// `TimedOut`, which ends the connection and frees its buffered response.
///
/// Hand-written because hyper has no write timeout and tokio's `timeout`
/// wraps futures, not the poll-based I/O hyper drives. A write that
/// completes at once, the usual case, costs one branch: the timer exists
/// only while a write is stalled.
///
/// Reads are passed through, telling the connection's `Activity` when
/// bytes arrive (a request head beginning, for `server.header_timeout`).
struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    activity: Arc<Activity>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, limit: Duration, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
            activity,
        }
    }

    /// Passes a ready write's result through (clearing any stall); on a
    /// pending one, starts or checks the stall timer.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for server.idle_timeout",
        )))
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        poll
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
