//! Accepting connections and serving each with hyper: the listener loop,
//! the timeouts that reap connections making no progress, and the handle
//! that asks them all to finish at shutdown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::config;

/// The accepted connections: how hyper serves each one, and the handle that
/// asks them all to finish.
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
    graceful: GracefulShutdown,
    /// `server.idle_timeout`.
    idle: Duration,
    /// `server.max_connections` permits, one held by each open connection.
    slots: Arc<Semaphore>,
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
            graceful: GracefulShutdown::new(),
            idle,
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
        }
    }

    /// Asks every connection to finish (idle ones close at once, in-flight
    /// requests complete) and resolves when all have.
    pub(crate) async fn shutdown(self) {
        self.graceful.shutdown().await;
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
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
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
            // Responses are written whole: send them without Nagle's delay.
            let _ = stream.set_nodelay(true);
            // hyper's header-read timeout starts once the protocol is known,
            // and telling HTTP/1 from HTTP/2 waits for the client's first
            // bytes: a client that sends nothing, or half of HTTP/2's preface,
            // is cut here if no request has begun within `idle_timeout`.
            let began = Arc::new(AtomicBool::new(false));
            let service = TowerToHyperService::new(app.clone().map_request({
                let began = began.clone();
                move |req: Request<Incoming>| {
                    began.store(true, Ordering::Relaxed);
                    req
                }
            }));
            let conn = self
                .builder
                .serve_connection(TokioIo::new(WriteDeadline::new(stream, self.idle)), service)
                .into_owned();
            let conn = self.graceful.watch(conn);
            tokio::spawn(run(conn, began, self.idle, slot));
        }
    }
}

/// The error a served connection ends with.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// Drives one connection to its end: counted in `http_connections_open`
/// meanwhile, and in `http_connections_timed_out_total{reason}` when a
/// timeout ends it (`idle`: no complete request head in time; `write`: the
/// client read nothing of its response in time).
async fn run(
    conn: impl Future<Output = Result<(), ConnError>>,
    began: Arc<AtomicBool>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = &mut conn => r,
        () = tokio::time::sleep(idle) => {
            if !began.load(Ordering::Relaxed) {
                timed_out("idle");
                return;
            }
            conn.await
        }
    };
    if let Err(e) = ended {
        match timeout_reason(&*e) {
            Some(reason) => timed_out(reason),
            None => tracing::debug!(error = %e, "connection ended with an error"),
        }
    }
}

fn timed_out(reason: &'static str) {
    tracing::debug!(reason, "connection closed by server.idle_timeout");
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
pub(crate) struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    pub(crate) fn new(inner: TcpStream, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
