//! Operations endpoints, open to everyone and blind to `Authorization`:
//! `/healthz` (the process serves), `/readyz` (store answers, keys loaded,
//! not shutting down) and `/metrics` (Prometheus text; on its own listener
//! when `metrics.listen` is set).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::{ApiError, ProblemKind};
use crate::state::AppState;

/// The operations routes of the API listener: `/metrics` among them unless
/// it has a listener of its own (`metrics.listen`).
pub fn router(with_metrics: bool) -> Router<AppState> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        router.merge(metrics_router())
    } else {
        router
    }
}

/// `/metrics` alone, for its own listener.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves", body = crate::wire::Status)))]
pub(crate) async fn healthz() -> Response {
    json_ok(r#"{"status":"ok"}"#)
}

#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready: store answers, keys loaded", body = crate::wire::Status),
              (status = 503, description = "Not ready or shutting down", body = crate::wire::Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return ApiError::new(ProblemKind::Unavailable, "shutting down").into_response();
    }
    if !state.auth().is_ready() {
        return ApiError::new(ProblemKind::Unavailable, "signing keys not loaded yet")
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.gateway().ping()).await {
        Ok(Ok(())) if !state.gateway().catalog_loaded() => ApiError::new(
            ProblemKind::Unavailable,
            "the collection definitions are not loaded yet",
        )
        .into_response(),
        Ok(Ok(())) => json_ok(r#"{"status":"ready"}"#),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            ApiError::new(ProblemKind::Unavailable, "the store does not answer").into_response()
        }
        Err(_) => ApiError::new(
            ProblemKind::Unavailable,
            "the store did not answer within 2 s",
        )
        .into_response(),
    }
}

#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("arca_jwks_fetches").set(state.auth().jwks_fetches() as f64);
    metrics::gauge!("process_uptime_seconds").set(state.uptime().as_secs_f64());
    let body = state.metrics().render();
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

fn json_ok(body: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
