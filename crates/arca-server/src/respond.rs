//! Small response helpers shared by the resource modules.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Whether `Accept` lists a media range that `wanted` takes (given the
/// range as sent) with a non-zero quality.
pub fn accepts(headers: &HeaderMap, wanted: impl Fn(&str) -> bool) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            q > 0.0 && wanted(range)
        })
}

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
