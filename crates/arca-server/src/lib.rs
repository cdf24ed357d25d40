//! The HTTP layer: a thin translation between HTTP and arca-core/arca-store.
//!
//! Modules, each owning one idea:
//! - `config`: typed configuration from file and environment;
//! - `error`: the one error type and the problem+json catalogue;
//! - `extract`: extractors (path, JSON body, caller identity, ETags);
//! - `access`: role checks and the `Scope` of a request;
//! - `middleware`: request id, tracing, metrics, timeout, CORS, compression;
//! - `ops`, `collections`, `documents`: the routes, one module per resource;
//! - `state`: shared state and the collection catalogue;
//! - `metrics`, `respond`: small shared helpers.

pub mod access;
pub mod collections;
pub mod config;
pub mod documents;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod respond;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use config::Config;
pub use state::AppState;

/// The whole application: every resource router behind the middleware.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .merge(ops::router())
        .merge(collections::router())
        .merge(documents::router())
        .merge(access::router())
        .merge(openapi::router(state.config().docs.public))
        .fallback(middleware::route_not_found)
        .with_state(state.clone());
    middleware::layers(routes, state.config())
}

/// Serves until `shutdown` resolves, then shuts down gracefully: `/readyz`
/// turns 503 at once, connections are still accepted for
/// `server.shutdown_delay`, then the listener closes and in-flight requests
/// get `server.shutdown_timeout` to finish.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The Prometheus exporter buffers every histogram sample until it is
    // drained; without a scrape that buffer would grow for ever. Drain it
    // every few seconds.
    let metrics = state.metrics().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });
    let delay = state.config().server.shutdown_delay.0;
    let grace = state.config().server.shutdown_timeout.0;
    let connections = Connections::new(&state.config().server);
    // Boxed so it can be dropped below: that closes the listener.
    let mut accepting = Box::pin(connections.accept(listener, app(state.clone())));
    tokio::select! {
        () = &mut accepting => {}
        () = shutdown => {}
    }
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "shutdown requested: readiness is now 503"
    );
    state.begin_shutdown();
    if delay > Duration::ZERO {
        tokio::select! {
            () = &mut accepting => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    drop(accepting);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "listener closed; waiting for in-flight requests"
    );
    if tokio::time::timeout(grace, connections.graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; remaining requests are cut");
    }
    Ok(())
}

/// The accepted connections: how hyper serves each one, and the handle that
/// asks them all to finish.
///
/// Written here rather than with `axum::serve` because that sets no timer,
/// so hyper's header-read timeout never runs: a client could hold a
/// connection (and its file descriptor) for ever by sending nothing, or one
/// header byte at a time, and a mobile client gone without a FIN would
/// never be reaped.
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    /// `server.idle_timeout`.
    idle: Duration,
}

impl Connections {
    fn new(cfg: &config::ServerConfig) -> Self {
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
        }
    }

    /// Accepts connections until the future is dropped (which closes the
    /// listener), serving each on its own task. Never returns: a failed
    /// accept (out of file descriptors, a connection reset before it was
    /// taken) is logged and retried.
    async fn accept(&self, listener: TcpListener, app: Router) {
        loop {
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
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = self.graceful.watch(conn);
            let idle = self.idle;
            tokio::spawn(async move {
                tokio::pin!(conn);
                let ended = tokio::select! {
                    r = &mut conn => r,
                    () = tokio::time::sleep(idle) => {
                        if !began.load(Ordering::Relaxed) {
                            tracing::debug!("connection closed: no request within server.idle_timeout");
                            return;
                        }
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// An error of one connection (reset or aborted before it was taken), not
/// of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}
