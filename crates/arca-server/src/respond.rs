//! Small response helpers shared by the resource modules, and the mapping
//! of store errors to problems.

use std::time::Instant;

use arca_store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{ApiError, ProblemKind};

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Response {
    json_of(status, body)
}

/// A JSON response from anything serializable.
pub fn json_of<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A JSON response from bytes already serialized.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

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
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                ApiError::new(ProblemKind::Unavailable, "the store is unavailable")
            }
        }
    }
}

/// Runs a store operation and records its latency.
pub async fn timed<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let start = Instant::now();
    let out = fut.await;
    crate::metrics::record_store_op(op, start.elapsed());
    out.map_err(ApiError::from)
}
