//! Cross-cutting request handling, composed in one place (`layers`): request
//! ids, the per-request tracing span and metrics, the request timeout, panic
//! recovery, CORS, compression, and turning the framework's bare error
//! responses (405, 404) into problem+json.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{ApiError, ProblemKind, problem_for_status};

/// The `x-request-id` header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request (request extension).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The route that receives uploads (`POST`): it gets
/// `files.upload_timeout` instead of `server.request_timeout`, since a
/// large file over a slow link takes minutes to arrive.
pub const UPLOAD_ROUTE: &str = "/v1/files";

/// The time budgets of requests (`timeout_and_problems`).
#[derive(Debug, Clone, Copy)]
struct Budgets {
    /// `server.request_timeout`.
    request: Duration,
    /// `files.upload_timeout`.
    upload: Duration,
}

/// Compress a response unless tower-http's default says not (images,
/// tiny bodies, event streams) or it serves byte ranges (`Accept-Ranges`):
/// a compressed 206 would not be the bytes its `Content-Range` names, and
/// stored files keep the `ETag` of their exact bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Compressible;

impl tower_http::compression::Predicate for Compressible {
    fn should_compress<B>(&self, response: &http::Response<B>) -> bool
    where
        B: axum::body::HttpBody,
    {
        !response.headers().contains_key(header::ACCEPT_RANGES)
            && tower_http::compression::predicate::DefaultPredicate::new().should_compress(response)
    }
}

/// The route template that served a response (response extension), e.g.
/// `/v1/collections/{name}/documents/{id}`.
#[derive(Debug, Clone)]
struct RouteTemplate(MatchedPath);

/// The metrics label of a response served by no route (response
/// extension): `web` for the files of `web.root`.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Wraps `router` in every cross-cutting layer, outermost first in reading
/// order: request id, trace + metrics, panic recovery, CORS, compression,
/// timeout, problem+json for bare framework errors.
pub fn layers(router: Router, config: &Config) -> Router {
    let timeout = Budgets {
        request: config.server.request_timeout.0,
        upload: config.files.upload_timeout.0,
    };
    let cors = cors_layer(&config.server.cors_origins);
    // Adjacent steps share one `from_fn` layer (each layer boxes and
    // clones the inner service per request): request id + observe, and
    // timeout + problem+json.
    router
        .route_layer(middleware::from_fn(capture_route))
        .layer(middleware::from_fn_with_state(
            timeout,
            timeout_and_problems,
        ))
        .layer(CompressionLayer::new().compress_when(Compressible))
        .layer(tower::util::option_layer(cors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(request_id_and_observe))
}

/// The request id (`request_id_of`), with `observe` inside it; and the
/// headers every response needs whatever its route: a response to a
/// request that carried credentials is never stored by a shared cache
/// (`Cache-Control: no-store`, `Vary: Authorization`: it may hold one
/// caller's data), and no response is ever sniffed as something else than
/// its type says (`X-Content-Type-Options: nosniff`: stored files above
/// all).
async fn request_id_and_observe(mut req: Request, next: Next) -> Response {
    let id = request_id_of(&req);
    let credentials = req.headers().contains_key(header::AUTHORIZATION);
    req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = observe(req, next).await;
    let h = res.headers_mut();
    h.insert(REQUEST_ID.clone(), id);
    if credentials {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.append(header::VARY, HeaderValue::from_static("authorization"));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// When a request's time is up (`server.request_timeout` from its start).
/// A body extractor reads it to answer a client that is still sending its
/// body with 408, not the 503 that blames the server.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub tokio::time::Instant);

/// The request timeout (`timeout_problem`) around `problem_for_bare_error`:
/// `server.request_timeout`, or `files.upload_timeout` for uploads.
async fn timeout_and_problems(
    State(budgets): State<Budgets>,
    mut req: Request,
    next: Next,
) -> Response {
    let upload = req.method() == Method::POST
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|m| m.as_str() == UPLOAD_ROUTE);
    let limit = if upload {
        budgets.upload
    } else {
        budgets.request
    };
    let deadline = tokio::time::Instant::now() + limit;
    // Only a request with a body needs it (GETs skip the insert). HTTP/2
    // bodies come with no length header, hence the body's own answer.
    if !axum::body::HttpBody::is_end_stream(req.body()) {
        req.extensions_mut().insert(RequestDeadline(deadline));
    }
    match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(res) => problem_for_bare_error(res),
        Err(_) => timeout_problem(limit),
    }
}

/// The client's `x-request-id` when it is 1 to 128 characters of
/// `[A-Za-z0-9._-]`, otherwise a generated one (echoed on the response).
fn request_id_of(req: &Request) -> HeaderValue {
    req.headers()
        .get(&REQUEST_ID)
        .filter(|v| is_safe_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate_request_id)
}

fn is_safe_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn generate_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    HeaderValue::from_str(&format!("{n:032x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// One span per request (request id, method, route template, status,
/// latency), one log line at the end, and the HTTP metrics.
async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = tracing::field::Empty,
        method = %method,
        route = tracing::field::Empty,
    );
    // Filled in only when the span is recorded (not at level `warn`).
    if !span.is_disabled()
        && let Some(id) = req.extensions().get::<RequestId>()
    {
        span.record("request_id", id.0.to_str().unwrap_or_default());
    }
    let mut res = next.run(req).instrument(span.clone()).await;
    let route = res.extensions_mut().remove::<RouteTemplate>();
    let label = res.extensions_mut().remove::<RouteLabel>();
    let route = match (&route, label) {
        (Some(r), _) => r.0.as_str(),
        (None, Some(RouteLabel(l))) => l,
        (None, None) => "unmatched",
    };
    let status = res.status().as_u16();
    let elapsed = start.elapsed();
    span.record("route", route);
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        );
    });
    crate::metrics::record_request(route, method.as_str(), status, elapsed);
    res
}

/// Records the matched route template on the response for `observe`.
async fn capture_route(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut res = next.run(req).await;
    if let Some(m) = matched {
        res.extensions_mut().insert(RouteTemplate(m));
    }
    res
}

/// A request gets `limit` to produce its response head; past that, 503
/// problem+json. Streaming bodies (downloads, events) are not cut by it.
fn timeout_problem(limit: Duration) -> Response {
    ApiError::new(
        ProblemKind::Timeout,
        format!("the request took longer than {} ms", limit.as_millis()),
    )
    .into_response()
}

/// Error responses that the framework produced without a body (405 from a
/// method router, say) become problem+json; their headers (`Allow`) stay.
fn problem_for_bare_error(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res.headers().contains_key(header::CONTENT_TYPE)
    {
        return res;
    }
    let Some(problem) = problem_for_status(status) else {
        return res;
    };
    let (parts, _) = res.into_parts();
    let mut out = problem.into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_LENGTH && !out.headers().contains_key(name) {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// A panic in a handler: logged (inside the request's span, so with its
/// id), answered with a 500 problem that reveals nothing.
fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic payload");
    tracing::error!(panic = msg, "handler panicked");
    ApiError::bare(ProblemKind::Internal).into_response()
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                header::RANGE,
                header::IF_RANGE,
                HeaderName::from_static("last-event-id"),
                crate::idempotency::IDEMPOTENCY_KEY.clone(),
                REQUEST_ID.clone(),
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                header::CONTENT_RANGE,
                header::CONTENT_DISPOSITION,
                header::ACCEPT_RANGES,
                crate::idempotency::IDEMPOTENT_REPLAYED.clone(),
                REQUEST_ID.clone(),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The router's fallback: unknown routes are 404 problem+json.
pub async fn route_not_found(uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::new(ProblemKind::RouteNotFound, format!("no route for {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(timeout: Duration) -> Router {
        let mut config = Config::default();
        config.server.request_timeout = arca_core::HumanDuration(timeout);
        let router = Router::new().route("/panic", get(panics)).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        layers(router, &config)
    }

    async fn panics() -> &'static str {
        panic!("secret internal detail")
    }

    async fn body_json(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn a_panic_becomes_a_500_problem_without_internals() {
        let req = Request::builder()
            .uri("/panic")
            .header("x-request-id", "p-1")
            .body(Body::empty())
            .expect("req");
        let res = app(Duration::from_secs(5))
            .oneshot(req)
            .await
            .expect("response");
        assert_eq!(res.status(), 500);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(res.headers()[&REQUEST_ID], "p-1");
        let body = body_json(res).await;
        assert_eq!(body["type"], "urn:arca:problem:internal");
        assert!(!body.to_string().contains("secret"), "{body}");
    }

    #[tokio::test]
    async fn a_slow_request_times_out_with_503() {
        let req = Request::builder()
            .uri("/slow")
            .body(Body::empty())
            .expect("req");
        let res = app(Duration::from_millis(50))
            .oneshot(req)
            .await
            .expect("response");
        assert_eq!(res.status(), 503);
        assert_eq!(body_json(res).await["type"], "urn:arca:problem:timeout");
    }

    #[tokio::test]
    async fn cors_is_off_by_default_and_on_for_listed_origins() {
        let preflight = || {
            Request::builder()
                .method("OPTIONS")
                .uri("/slow")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "GET")
                .body(Body::empty())
                .expect("req")
        };
        let res = app(Duration::from_secs(1))
            .oneshot(preflight())
            .await
            .expect("response");
        assert!(!res.headers().contains_key("access-control-allow-origin"));
        let mut config = Config::default();
        config.server.cors_origins = vec!["https://app.example.com".into()];
        let res = layers(Router::new().route("/slow", get(|| async { "x" })), &config)
            .oneshot(preflight())
            .await
            .expect("response");
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "https://app.example.com"
        );
        // What the app clients send and read (docs/clients.md).
        let mut req = preflight();
        req.headers_mut().insert(
            "access-control-request-headers",
            HeaderValue::from_static("authorization,content-type,idempotency-key,if-match"),
        );
        let res = layers(Router::new().route("/slow", get(|| async { "x" })), &config)
            .oneshot(req)
            .await
            .expect("response");
        let allowed = res.headers()["access-control-allow-headers"]
            .to_str()
            .expect("text")
            .to_owned();
        for h in [
            "authorization",
            "content-type",
            "idempotency-key",
            "if-match",
            "last-event-id",
        ] {
            assert!(allowed.contains(h), "{h} in {allowed}");
        }
        let res = layers(Router::new().route("/slow", get(|| async { "x" })), &config)
            .oneshot(
                Request::builder()
                    .uri("/slow")
                    .header("origin", "https://app.example.com")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        let exposed = res.headers()["access-control-expose-headers"]
            .to_str()
            .expect("text")
            .to_owned();
        for h in [
            "etag",
            "location",
            "retry-after",
            "idempotent-replayed",
            "x-request-id",
        ] {
            assert!(exposed.contains(h), "{h} in {exposed}");
        }
    }
}
