//! The one error type of the HTTP layer and its mapping to RFC 9457
//! `application/problem+json`. Every failure a handler can meet becomes an
//! `ApiError` (so `?` works everywhere); each kind has a stable `type` URI
//! listed in `ProblemKind`, the catalogue clients branch on. Internal errors
//! are logged with the request id and never shown.

use arca_core::FieldError;
use arca_core::pipeline::PipelineError;
use arca_store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The catalogue of problem kinds: a stable slug (the `type` URI is
/// `urn:arca:problem:<slug>`), a status and a title for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// 400: malformed JSON body.
    MalformedJson,
    /// 400: a malformed request (query parameter, path, header).
    BadRequest,
    /// 400: an invalid collection definition.
    InvalidDefinition,
    /// 401: missing or invalid bearer token.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: no such route.
    RouteNotFound,
    /// 404: no such collection.
    CollectionNotFound,
    /// 404: no such document (or not readable by the caller).
    DocumentNotFound,
    /// 404: no such file (or another tenant's).
    FileNotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 408: the client did not send its whole body in time.
    RequestTimeout,
    /// 409: duplicate `_id` or unique index value.
    Conflict,
    /// 409: a request with the same `Idempotency-Key` is still running
    /// (retry shortly: `Retry-After`).
    IdempotencyKeyInUse,
    /// 412: `If-Match` does not match the current revision, or
    /// `If-None-Match` does.
    PreconditionFailed,
    /// 413: request body over the limit.
    PayloadTooLarge,
    /// 415: body content type not accepted.
    UnsupportedMediaType,
    /// 416: no byte of the requested `Range` is in the file.
    RangeNotSatisfiable,
    /// 422: the document does not fit its collection.
    InvalidDocument,
    /// 422: an empty upload, or an image that is too large or does not
    /// decode.
    InvalidFile,
    /// 422: the `Idempotency-Key` was used for another request (another
    /// body or target).
    IdempotencyKeyReused,
    /// 429: the caller has too many heavy reads in flight.
    TooManyRequests,
    /// 503: the process serves `events.max_subscribers` event streams
    /// already.
    TooManySubscribers,
    /// 500: an internal error (details only in the logs).
    Internal,
    /// 503: not ready, shutting down, or a dependency is unavailable.
    Unavailable,
    /// 503: the store did not answer (no primary, timed out, I/O error);
    /// retrying later may succeed (`Retry-After`).
    StoreUnavailable,
    /// 503: the request ran past its time limit.
    Timeout,
}

impl ProblemKind {
    /// `(status, slug, title)` of this kind.
    pub fn describe(self) -> (StatusCode, &'static str, &'static str) {
        use ProblemKind::*;
        match self {
            MalformedJson => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            BadRequest => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            InvalidDefinition => (
                StatusCode::BAD_REQUEST,
                "invalid-definition",
                "Invalid collection definition",
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            RouteNotFound => (StatusCode::NOT_FOUND, "route-not-found", "No such route"),
            CollectionNotFound => (
                StatusCode::NOT_FOUND,
                "collection-not-found",
                "No such collection",
            ),
            DocumentNotFound => (
                StatusCode::NOT_FOUND,
                "document-not-found",
                "No such document",
            ),
            FileNotFound => (StatusCode::NOT_FOUND, "file-not-found", "No such file"),
            RangeNotSatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "Range not satisfiable",
            ),
            InvalidFile => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-file",
                "Invalid file",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body not received in time",
            ),
            Conflict => (StatusCode::CONFLICT, "conflict", "Conflict"),
            IdempotencyKeyInUse => (
                StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "A request with this Idempotency-Key is still running",
            ),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            InvalidDocument => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-document",
                "Document does not fit the collection",
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key already used for another request",
            ),
            TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            TooManySubscribers => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-subscribers",
                "Too many event streams",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
            ),
        }
    }

    /// Every kind, for the catalogue in the docs and tests.
    pub const ALL: &'static [ProblemKind] = &[
        ProblemKind::MalformedJson,
        ProblemKind::BadRequest,
        ProblemKind::InvalidDefinition,
        ProblemKind::Unauthorized,
        ProblemKind::Forbidden,
        ProblemKind::RouteNotFound,
        ProblemKind::CollectionNotFound,
        ProblemKind::DocumentNotFound,
        ProblemKind::FileNotFound,
        ProblemKind::MethodNotAllowed,
        ProblemKind::RequestTimeout,
        ProblemKind::Conflict,
        ProblemKind::IdempotencyKeyInUse,
        ProblemKind::PreconditionFailed,
        ProblemKind::PayloadTooLarge,
        ProblemKind::UnsupportedMediaType,
        ProblemKind::RangeNotSatisfiable,
        ProblemKind::InvalidDocument,
        ProblemKind::InvalidFile,
        ProblemKind::IdempotencyKeyReused,
        ProblemKind::TooManyRequests,
        ProblemKind::TooManySubscribers,
        ProblemKind::Internal,
        ProblemKind::Unavailable,
        ProblemKind::Timeout,
        ProblemKind::StoreUnavailable,
    ];
}

/// A failed request, ready to become a problem+json response.
#[derive(Debug)]
pub struct ApiError {
    kind: ProblemKind,
    detail: Option<String>,
    errors: Vec<FieldError>,
    /// For 401: the `error_description` of `WWW-Authenticate`, when a token
    /// was sent (its presence adds `error="invalid_token"`).
    invalid_token: Option<String>,
    /// For 422: more failures exist than `errors` lists.
    truncated: bool,
}

impl ApiError {
    /// A problem of `kind` with a detail sentence.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: Some(detail.into()),
            errors: Vec::new(),
            invalid_token: None,
            truncated: false,
        }
    }

    /// A problem of `kind` with no detail.
    pub fn bare(kind: ProblemKind) -> Self {
        Self {
            kind,
            detail: None,
            errors: Vec::new(),
            invalid_token: None,
            truncated: false,
        }
    }

    /// The same problem with `prefix` before its detail (saying which part
    /// of a request it is about).
    pub fn with_detail_prefix(mut self, prefix: &str) -> Self {
        self.detail = Some(match self.detail.take() {
            Some(d) => format!("{prefix}{d}"),
            None => prefix.trim_end_matches([':', ' ']).to_owned(),
        });
        self
    }

    /// 400 for a malformed request.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemKind::BadRequest, detail)
    }

    /// 422 with one entry per failure.
    pub fn invalid_document(errors: Vec<FieldError>) -> Self {
        let n = errors.len();
        let mut e = Self::new(
            ProblemKind::InvalidDocument,
            format!("{n} validation error{}", if n == 1 { "" } else { "s" }),
        );
        e.errors = errors;
        e
    }

    /// 422 listing the first `errors.len()` of more failures
    /// (`validation.max_errors`): the problem says so
    /// (`"errors_truncated": true`).
    pub fn invalid_document_truncated(errors: Vec<FieldError>) -> Self {
        let n = errors.len();
        let mut e = Self::new(
            ProblemKind::InvalidDocument,
            format!(
                "{n} validation error{} listed, and there may be more: listing stops at validation.max_errors, and at the first failure for documents of more than 4096 values",
                if n == 1 { "" } else { "s" }
            ),
        );
        e.errors = errors;
        e.truncated = true;
        e
    }

    /// 401 without a token: `WWW-Authenticate: Bearer realm="arca"`.
    pub fn missing_token() -> Self {
        Self::new(ProblemKind::Unauthorized, "a bearer token is required")
    }

    /// 401 for a token that was sent and refused.
    pub fn invalid_token(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let mut e = Self::new(
            ProblemKind::Unauthorized,
            format!("invalid token: {reason}"),
        );
        e.invalid_token = Some(reason);
        e
    }

    /// 500; `cause` goes to the log (with the request id), never to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::bare(ProblemKind::Internal)
    }

    /// The kind of this problem.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    errors_truncated: bool,
}

/// The `type` URI of a problem slug.
pub fn type_uri(slug: &str) -> String {
    format!("urn:arca:problem:{slug}")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.kind.describe();
        let body = ProblemBody {
            type_: type_uri(slug),
            title,
            status: status.as_u16(),
            detail: self.detail.as_deref(),
            errors: &self.errors,
            errors_truncated: self.truncated,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (status, bytes).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection
            // cannot carry another request (RFC 9110 section 15.5.9). On
            // HTTP/2 hyper drops this connection-specific header itself.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            // RFC 9110 section 15.5.16: the content codings a request body
            // may have; none is decoded here.
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if matches!(
            self.kind,
            ProblemKind::StoreUnavailable
                | ProblemKind::Timeout
                | ProblemKind::TooManyRequests
                | ProblemKind::TooManySubscribers
                | ProblemKind::IdempotencyKeyInUse
        ) {
            // Transient: the client may try again (RFC 9110 section 10.2.3).
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            let value = match &self.invalid_token {
                // The description is ours (never the token) and kept to
                // characters that are safe inside a quoted string.
                Some(reason) => format!(
                    "Bearer realm=\"arca\", error=\"invalid_token\", error_description=\"{}\"",
                    reason.replace(
                        |c: char| c == '"' || c == '\\' || !(' '..='~').contains(&c),
                        "'"
                    )
                ),
                None => "Bearer realm=\"arca\"".to_owned(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

/// A problem response for a bare status (used for responses produced by the
/// framework with no body, such as 405 from the router).
pub fn problem_for_status(status: StatusCode) -> Option<ApiError> {
    let kind = match status {
        StatusCode::NOT_FOUND => ProblemKind::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
        StatusCode::BAD_REQUEST => ProblemKind::BadRequest,
        StatusCode::REQUEST_TIMEOUT => ProblemKind::Timeout,
        StatusCode::INTERNAL_SERVER_ERROR => ProblemKind::Internal,
        StatusCode::SERVICE_UNAVAILABLE => ProblemKind::Unavailable,
        _ => return None,
    };
    Some(ApiError::bare(kind))
}

/// How store failures reach clients: each as its problem kind; an
/// unavailable store is logged (its cause never shown).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => {
                ApiError::new(ProblemKind::DocumentNotFound, "no such document")
            }
            StoreError::CollectionMissing => {
                ApiError::new(ProblemKind::CollectionNotFound, "no such collection")
            }
            StoreError::Conflict(what) if what == "_id" => ApiError::new(
                ProblemKind::Conflict,
                "a document with this _id already exists",
            ),
            StoreError::Conflict(what) => ApiError::new(
                ProblemKind::Conflict,
                format!("duplicate value for the unique index on {what}"),
            ),
            StoreError::RevMismatch => ApiError::new(
                ProblemKind::PreconditionFailed,
                "the document changed since the given revision",
            ),
            StoreError::DuplicatesForUniqueIndex(what) => ApiError::new(
                ProblemKind::Conflict,
                format!(
                    "existing documents hold duplicate values for the new unique index on {what}; the definition was not changed"
                ),
            ),
            StoreError::Timeout => ApiError::new(
                ProblemKind::Timeout,
                "the query ran past the time limit; narrow the filter (an indexed field) or page with a smaller limit",
            ),
            StoreError::Pipeline(PipelineError::TimedOut) => ApiError::new(
                ProblemKind::Timeout,
                "the aggregation ran past aggregate.max_time; start it with a $match on an indexed field, or group fewer documents",
            ),
            StoreError::Pipeline(e) => ApiError::bad_request(e.to_string()),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                ApiError::new(
                    ProblemKind::StoreUnavailable,
                    "the store did not answer; retry shortly",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_kind_is_documented_with_a_unique_slug() {
        let doc = include_str!("../../../docs/errors.md");
        let mut slugs = std::collections::HashSet::new();
        for kind in ProblemKind::ALL {
            let (status, slug, title) = kind.describe();
            assert!(slugs.insert(slug), "duplicate slug {slug}");
            let row = format!("| `{}` | {} | {title} |", type_uri(slug), status.as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks: {row}");
        }
    }
}
