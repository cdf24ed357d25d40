//! The HTTP layer: a thin translation between HTTP and arca-core/arca-store.
//!
//! Modules, each owning one idea:
//! - `config`: typed configuration from file and environment;
//! - `conn`: accepting connections and their timeouts;
//! - `error`: the one error type and the problem+json catalogue;
//! - `extract`: extractors (path segments by name, the addressed
//!   collection, JSON bodies, the caller's identity);
//! - `conditions`: `If-Match` / `If-None-Match`;
//! - `access`: the access rules applied to a caller (decisions only);
//! - `gateway`: the one road to tenant data: the store, its catalogue, and
//!   the per-action handles (`Grant`) that run the rule checks;
//! - `idempotency`: `Idempotency-Key` on `POST`s: run once per caller and
//!   key, replay the kept result to retries (records in the store);
//! - `middleware`: request id, tracing, metrics, timeout, CORS, compression;
//! - `ops`, `collections`, `documents`, `explain`, `files`: the routes,
//!   one module per resource;
//! - `events`: change events over Server-Sent Events (the stream, its
//!   tickets, and the one reader of each collection's log per process);
//! - `wire`: request and response shapes the OpenAPI document describes;
//! - `openapi`: the OpenAPI document and `/docs` (the only module that
//!   lists the handlers);
//! - `types`: `/v1/types.ts`, TypeScript declarations of the collections
//!   (from the OpenAPI document's component schemas);
//! - `console`: the web console at `/console`, embedded files served with
//!   a strict Content-Security-Policy;
//! - `web`: the front-end folder of `web.root` at `/` (what no route
//!   matched), with precompressed files, caching and containment;
//! - `state`: shared state;
//! - `metrics`, `respond`: small shared helpers.

pub mod access;
pub mod collections;
pub mod conditions;
pub mod config;
mod conn;
pub mod console;
pub mod documents;
pub mod error;
pub mod events;
pub mod explain;
pub mod extract;
pub mod files;
pub mod gateway;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod respond;
pub mod state;
pub mod types;
pub mod web;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use conn::Connections;

pub use config::Config;
pub use state::AppState;

/// The whole application: every resource router behind the middleware.
pub fn app(state: AppState) -> Router {
    let mut routes = Router::new()
        .merge(ops::router(state.config().metrics.listen.is_none()))
        .merge(collections::router())
        .merge(documents::router())
        .merge(events::router())
        .merge(explain::router())
        .merge(files::router())
        .merge(openapi::router(state.config().docs.public))
        .merge(types::router());
    if state.config().console.enabled {
        routes = routes.merge(console::router(&state));
    }
    // What no route matched: the front-end folder (`web.root`) when one is
    // served, else 404 problems.
    let routes = routes.fallback(web::fallback).with_state(state.clone());
    middleware::layers(routes, state.config())
}

/// What `metrics.listen` serves: `/metrics` behind the same middleware
/// (request ids, logs, its own request metrics), nothing else.
pub fn metrics_app(state: AppState) -> Router {
    let routes = ops::metrics_router()
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
    metrics_listener: Option<TcpListener>,
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
    // Collection definitions changed through another process using the
    // same store reach this one within `store.catalog_refresh`.
    let catalog = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(catalog.config().store.catalog_refresh.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match catalog.gateway().refresh_catalog().await {
                Ok(true) => tracing::info!("collection definitions changed elsewhere; reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "checking the catalogue generation failed"),
            }
        }
    });
    if state.config().events.enabled {
        tokio::spawn(prune_events(state.clone()));
    }
    // Expired idempotency records are ignored already; purging them frees
    // their space. Every replica purges: the deletes are idempotent.
    let records = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = idempotency::now_ms();
            match records
                .gateway()
                .idempotency_purge(now, idempotency::PURGE_BATCH)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "expired idempotency records purged"),
                Err(e) => tracing::warn!(error = %e, "purging expired idempotency records failed"),
            }
        }
    });
    let delay = state.config().server.shutdown_delay.0;
    let grace = state.config().server.shutdown_timeout.0;
    let connections = Connections::new(&state.config().server);
    let scrapes = Connections::new(&state.config().server);
    let api = connections.accept(listener, app(state.clone()));
    let metrics = async {
        match metrics_listener {
            Some(l) => scrapes.accept(l, metrics_app(state.clone())).await,
            None => std::future::pending().await,
        }
    };
    // Boxed so it can be dropped below: that closes the listeners.
    let mut accepting = Box::pin(async { tokio::join!(api, metrics) });
    tokio::select! {
        _ = &mut accepting => {}
        () = shutdown => {}
    }
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "shutdown requested: readiness is now 503"
    );
    state.begin_shutdown();
    if delay > Duration::ZERO {
        tokio::select! {
            _ = &mut accepting => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    drop(accepting);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "listener closed; waiting for in-flight requests"
    );
    let finished = async { tokio::join!(connections.shutdown(), scrapes.shutdown()) };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!("shutdown timeout reached; remaining requests are cut");
    }
    Ok(())
}

/// Forgets events older than `events.retention`, and expired stream
/// tickets, every tenth of the retention (1 s to 1 min). Every replica
/// does it (it is idempotent); each round deletes a bounded number of
/// entries, so one round never holds the store's writer long.
async fn prune_events(state: AppState) {
    const PER_ROUND: usize = 10_000;
    let retention = state.config().events.retention.0;
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let log = state.gateway().event_log();
    loop {
        tick.tick().await;
        if state.is_shutting_down() {
            return;
        }
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = arca_store::now_ms().saturating_sub(retention_ms);
        match log.prune(cutoff, PER_ROUND).await {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "old events pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning old events failed"),
        }
        if let Err(e) = log.prune_tickets().await {
            tracing::warn!(error = %e, "pruning expired stream tickets failed");
        }
    }
}
