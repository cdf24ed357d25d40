//! Request extractors that fail with problem+json: path segments by name,
//! the collection a route addresses (404), JSON bodies (content type ->
//! 415, size -> 413, syntax -> 400) and the bearer identity.

use std::sync::Arc;

use arca_auth::{AuthError, Identity};
use arca_core::{CollectionName, DocId};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde_json::Value;

use crate::error::{ApiError, ProblemKind};
use crate::gateway::Collection;
use crate::middleware::RequestDeadline;
use crate::state::AppState;

/// The path parameters of a route, by name, as raw strings (parsed by the
/// handler into domain types, since what a bad value means depends on the
/// route). Built on axum's `RawPathParams`, which shares the router's
/// decoded segments instead of copying each name and value.
pub struct PathParams(RawPathParams);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        RawPathParams::from_request_parts(parts, state)
            .await
            .map(Self)
            .map_err(|_| ApiError::bad_request("path segments must be valid UTF-8"))
    }
}

impl PathParams {
    /// The segment named `name` in the route (`{name}`); a route always
    /// has the segments its handler reads, so a missing one is a
    /// programming error, reported as a 500 rather than a panic.
    pub fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v))
            .ok_or_else(|| ApiError::internal(format!("the route has no {{{name}}} segment")))
    }

    /// The `{id}` segment as a document id; an id that cannot exist is
    /// simply not found (404).
    pub fn doc_id(&self) -> Result<DocId, ApiError> {
        DocId::parse(self.get("id")?)
            .map_err(|_| ApiError::new(ProblemKind::DocumentNotFound, "no such document"))
    }
}

/// The collection named by the route's `{name}` segment, looked up in the
/// catalogue: 404 when there is none (a name that cannot exist included).
/// A request without a bearer token gets 401 instead, as for a collection
/// that exists and is not public: anonymous callers cannot learn which
/// collection names exist (only public ones answer them).
pub struct Target(pub Arc<Collection>);

impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = PathParams::from_request_parts(parts, state).await?;
        let found = CollectionName::parse(params.get("name")?)
            .map_err(|_| ApiError::new(ProblemKind::CollectionNotFound, "no such collection"))
            .and_then(|name| state.gateway().collection(&name));
        match found {
            Ok(coll) => Ok(Self(coll)),
            Err(e)
                if e.kind() == ProblemKind::CollectionNotFound
                    && !parts.headers.contains_key(header::AUTHORIZATION) =>
            {
                Err(ApiError::missing_token())
            }
            Err(e) => Err(e),
        }
    }
}

/// A JSON request body, size-checked, as bytes (see `parse_json`).
pub struct JsonBytes(pub Bytes);

/// Whether a `Content-Type` is JSON: `application/json` or
/// `application/*+json`, parameters such as `charset` allowed.
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The UTF-8 encoding of U+FEFF.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The request body's content coding when it is not `identity`: the body
/// would have to be decoded first, and nothing here decodes one (so a
/// gzip body labelled as such is refused, not misread as JSON).
pub(crate) fn content_coding(headers: &HeaderMap) -> Option<String> {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("(not text)").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .peekable();
    codings.peek()?;
    // Echo at most a short, printable part of what the client sent.
    let named: String = codings
        .collect::<Vec<_>>()
        .join(", ")
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .take(64)
        .collect();
    Some(named)
}

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config().server.max_body_bytes;
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        if let Some(coding) = content_coding(req.headers()) {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                format!(
                    "compressed request bodies are not accepted (Content-Encoding: {coding}); send the JSON uncompressed"
                ),
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            ApiError::new(
                ProblemKind::PayloadTooLarge,
                format!("JSON bodies are limited to {limit} bytes"),
            )
        };
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let deadline = req.extensions().get::<RequestDeadline>().copied();
        let read = axum::body::to_bytes(req.into_body(), limit);
        // The same instant as the request timeout: this future is polled
        // first when both are due, so a body still arriving is the
        // client's 408, and the server's 503 is kept for its own slowness.
        let read = match deadline {
            Some(RequestDeadline(at)) => tokio::time::timeout_at(at, read).await.map_err(|_| {
                ApiError::new(
                    ProblemKind::RequestTimeout,
                    "the request body did not arrive within server.request_timeout",
                )
            })?,
            None => read.await,
        };
        match read {
            // RFC 8259 lets a parser ignore a leading byte order mark, which
            // some clients (.NET's default UTF-8 encoder) still send.
            Ok(b) if b.starts_with(UTF8_BOM) => Ok(Self(b.slice(UTF8_BOM.len()..))),
            Ok(b) => Ok(Self(b)),
            Err(e) => {
                // `to_bytes` reports the limit through its error source chain.
                let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = src {
                    if s.is::<http_body_util::LengthLimitError>() {
                        return Err(too_large());
                    }
                    src = s.source();
                }
                Err(ApiError::bad_request("the request body could not be read"))
            }
        }
    }
}

/// Parses a JSON body that is not a document: syntax errors are 400.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ProblemKind::MalformedJson, json_error_detail(&e)))
}

/// Parses a document body: syntax errors are 400, but numbers that cannot
/// be stored unchanged (beyond 64-bit integers, infinite floats) are 422.
pub fn parse_document_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let parsed = serde_json::from_slice::<Value>(bytes);
    if let Some(lit) = arca_core::number::first_unrepresentable(bytes)
        && (parsed.is_ok()
            || matches!(&parsed, Err(e) if e.to_string().contains("number out of range")))
    {
        return Err(ApiError::invalid_document(vec![arca_core::FieldError {
            path: String::new(),
            message: format!(
                "the number {lit} cannot be stored exactly (integers are signed 64-bit, -2^63 to 2^63-1; floats must be finite)"
            ),
        }]));
    }
    parsed.map_err(|e| ApiError::new(ProblemKind::MalformedJson, json_error_detail(&e)))
}

/// `malformed JSON at line L, column C: <what>`, where `<what>` is
/// serde_json's own description ("trailing characters", "recursion limit
/// exceeded", ...). Parsing into a `Value` only ever reports fixed texts,
/// never a piece of the input.
fn json_error_detail(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&position).unwrap_or(&full);
    format!(
        "malformed JSON at line {}, column {}: {what}",
        e.line(),
        e.column()
    )
}

/// The caller, if a token was sent. A token that was sent and is invalid is
/// `401` on every route that takes a caller, including collections readable
/// by the public; the operations routes and the public docs take none and
/// ignore `Authorization` (API.md, Operations).
pub use crate::gateway::Caller;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let addr = parts
            .extensions
            .get::<crate::conn::ClientAddr>()
            .map(|a| a.0);
        let identity = verified_identity(parts, state).await?;
        Ok(Self { identity, addr })
    }
}

/// The identity of the request's bearer token, if one was sent.
async fn verified_identity(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<Arc<Identity>>, ApiError> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid_token(
            "more than one Authorization header",
        ));
    }
    let raw = value
        .to_str()
        .map_err(|_| ApiError::invalid_token("malformed Authorization header"))?;
    let (scheme, token) = raw.split_once(' ').unwrap_or((raw, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::invalid_token("expected the Bearer scheme"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::invalid_token("empty bearer token"));
    }
    match state.auth().verify(token).await {
        Ok(id) => Ok(Some(id)),
        Err(AuthError::KeysUnavailable) => Err(ApiError::new(
            ProblemKind::Unavailable,
            "the identity provider's signing keys are not loaded yet",
        )),
        Err(e) => Err(ApiError::invalid_token(e.to_string())),
    }
}

/// The caller, who must have sent a valid token: the required form of
/// `Caller` (no token -> `401` with a `Bearer` challenge).
pub struct Authenticated(pub Arc<Identity>);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match verified_identity(parts, state).await? {
            Some(id) => Ok(Self(id)),
            None => Err(ApiError::missing_token()),
        }
    }
}
