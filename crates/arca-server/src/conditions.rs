//! Conditional requests (RFC 9110, section 13): what `If-Match` and
//! `If-None-Match` ask for, and whether a write may proceed at a revision.
//! The gateway checks them against the revision it read, so a write and
//! its condition see the same document.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::error::{ApiError, ProblemKind};

/// Whether `If-None-Match` names `etag` for a read (weak comparison, as
/// RFC 9110 wants for it; `*` too): the answer is then 304. Shared by every
/// route that serves content with a tag (files, the console, `web.root`).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    fn opaque(t: &str) -> &str {
        t.strip_prefix("W/").unwrap_or(t)
    }
    let ours = opaque(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || opaque(t) == ours)
}

/// What an `If-Match` / `If-None-Match` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityTags {
    /// `*`
    Any,
    /// Revisions named by `"N"` tags (weak tags kept apart).
    Revs { strong: Vec<u64>, weak: Vec<u64> },
}

impl EntityTags {
    /// Reads a header; `None` when absent. Unparseable tags match nothing.
    pub fn from_header(headers: &HeaderMap, name: header::HeaderName) -> Option<Self> {
        let mut strong = Vec::new();
        let mut weak = Vec::new();
        let mut seen = false;
        for v in headers.get_all(name).iter() {
            seen = true;
            let s = v.to_str().unwrap_or_default();
            for tag in s.split(',').map(str::trim) {
                if tag == "*" {
                    return Some(Self::Any);
                }
                let (is_weak, t) = match tag.strip_prefix("W/") {
                    Some(t) => (true, t),
                    None => (false, tag),
                };
                if let Some(n) = t
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|t| t.parse().ok())
                {
                    if is_weak {
                        weak.push(n)
                    } else {
                        strong.push(n)
                    }
                }
            }
        }
        seen.then_some(Self::Revs { strong, weak })
    }

    /// Strong comparison (`If-Match`).
    pub fn matches_strong(&self, rev: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Revs { strong, .. } => strong.contains(&rev),
        }
    }

    /// Weak comparison (`If-None-Match`).
    pub fn matches_weak(&self, rev: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Revs { strong, weak } => strong.contains(&rev) || weak.contains(&rev),
        }
    }
}

/// A request's conditional headers (each `None` when absent), read
/// without copying the request's headers.
pub struct Preconditions {
    /// `If-Match`, for writes.
    pub if_match: Option<EntityTags>,
    /// `If-None-Match`: a read answers 304 when it matches, a write is
    /// refused with 412.
    pub if_none_match: Option<EntityTags>,
}

impl Preconditions {
    /// Whether a write may change the document at revision `rev`, in RFC
    /// 9110's order (section 13.2.2): `If-Match` must match (strong
    /// comparison), then `If-None-Match` must not (weak comparison; `*`
    /// matches any existing document). A failed condition is 412.
    pub fn check_write(&self, rev: u64) -> Result<(), ApiError> {
        if self
            .if_match
            .as_ref()
            .is_some_and(|t| !t.matches_strong(rev))
        {
            // The same problem as a write that loses its revision race.
            return Err(ApiError::from(arca_store::StoreError::RevMismatch));
        }
        if self
            .if_none_match
            .as_ref()
            .is_some_and(|t| t.matches_weak(rev))
        {
            return Err(ApiError::new(
                ProblemKind::PreconditionFailed,
                "the document's current revision matches If-None-Match",
            ));
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            if_match: EntityTags::from_header(&parts.headers, header::IF_MATCH),
            if_none_match: EntityTags::from_header(&parts.headers, header::IF_NONE_MATCH),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = "\"abc\"";
        assert!(not_modified(&headers(&[("if-none-match", "\"abc\"")]), tag));
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"abc\"")]),
            tag
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", \"abc\"")]),
            tag
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), tag));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"abcd\"")]),
            tag
        ));
        assert!(!not_modified(&headers(&[]), tag));
    }
}
