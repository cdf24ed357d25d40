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
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        () = shutdown => {}
    }
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "shutdown requested: readiness is now 503"
    );
    state.begin_shutdown();
    if delay > Duration::ZERO {
        tokio::select! {
            r = &mut server => return r,
            () = tokio::time::sleep(delay) => {}
        }
    }
    let _ = stop_tx.send(());
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "listener closed; waiting for in-flight requests"
    );
    match tokio::time::timeout(grace, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("shutdown timeout reached; remaining requests are cut");
            Ok(())
        }
    }
}
