//! Idempotency keys (the IETF httpapi draft "The Idempotency-Key HTTP
//! Header Field"): a client that retries a `POST` with the same
//! `Idempotency-Key` gets the first request's result instead of a second
//! effect. This module owns the header, the request's fingerprint, and the
//! run-once-then-replay step a route wraps its work in (`run`): document
//! creates use it, and any other `POST` (file uploads) adopts it with one
//! call.
//!
//! The records live in the store (`Store::idempotency_*`, reached through
//! the gateway), so every replica on it answers a retry alike. A record is
//! the caller's (tenant and subject) and the key's; it holds a fingerprint
//! of the request (method, target, body digest: the same key for another
//! request is 422), the run that holds it under a lease (a retry meanwhile
//! is 409 with `Retry-After`), and once finished the response (status,
//! the headers that describe it, body), replayed to every retry with
//! `Idempotent-Replayed: true` until `idempotency.retention` after the
//! first request.
//!
//! The claim and the work run in a task of their own: a client that goes
//! away, or a request cut by `server.request_timeout` (503), cuts neither,
//! and the result is kept for the retry. A run holds its key under a
//! lease it renews while it works (`LEASE`): only a run whose process
//! stopped lets it pass, and the next retry then runs the request again.
//! A process that stops after the work wrote and before its answer was
//! kept (a crash between two store operations) leaves the effect without
//! its record: that retry does it again (a create with a client-chosen
//! `_id` then meets 409). Closing that window would take one transaction
//! over the document and the record, which not every MongoDB deployment
//! offers.
//!
//! What is kept: every response below 500 except 408 and 429 (the
//! request's answer, errors included: a 403, a 409 duplicate, a 422). A
//! 5xx, 408 or 429 says nothing was decided: the key is released and a
//! retry runs again. A request refused before it runs (no valid token, no
//! such collection, a body that is not JSON or too large, a bad key) has
//! no record at all.
//!
//! Bounds on what a client can make the store keep: keys are 1 to 255
//! printable ASCII characters; a kept body is at most
//! `server.max_body_bytes` plus 64 KiB (a created document is its body
//! plus the system fields), larger results are answered but not kept
//! (logged; the key is released); records expire after
//! `idempotency.retention` and are purged every minute.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arca_store::{IdempotencyBegin, IdempotencyClaim, IdempotencyKey, StoredResponse};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::error::{ApiError, ProblemKind};
use crate::gateway::Caller;
use crate::state::AppState;

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks a replay (`true`).
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// What a kept body may exceed `server.max_body_bytes` by.
const BODY_HEADROOM: usize = 64 << 10;

/// The headers kept with a response and replayed: those that describe it.
const KEPT_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::LOCATION,
    header::CONTENT_LOCATION,
    header::ETAG,
];

/// How long a run holds its key without renewing the lease. A run renews
/// it every third of that while it works, so a key is held for as long as
/// its run works (longer than its request, which `server.request_timeout`
/// may cut), and freed at most this long after the process running it
/// stopped.
pub const LEASE: Duration = Duration::from_secs(15);

/// Expired records deleted by one purge (it runs every minute).
pub const PURGE_BATCH: usize = 10_000;

/// What identifies a request under a key: a SHA-256 over its method, path
/// and query, and the parts of its body the caller gives (a JSON body's
/// bytes; an upload's digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `method` on `uri` with `parts` (each
    /// length-prefixed, so parts cannot run into each other).
    pub fn new(method: &Method, uri: &Uri, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update(method.as_str().as_bytes());
        h.update([0]);
        let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        h.update(target.as_bytes());
        h.update([0]);
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Self(
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    }
}

fn bad_key(detail: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Idempotency-Key: {detail} (1 to {MAX_KEY_CHARS} printable ASCII characters, as a quoted string such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\" or bare)"
    ))
}

/// The key a request carries (`None` without the header): a structured
/// field string (`"..."`, RFC 8941, as the draft defines it) or, as many
/// clients send it, the bare characters; both name the same key. 400 for
/// anything else (two headers, empty, too long, not printable ASCII).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_key("send one header"));
    }
    let raw = value.as_bytes().trim_ascii();
    let key = match raw.strip_prefix(b"\"") {
        Some(rest) => {
            let inner = rest
                .strip_suffix(b"\"")
                .ok_or_else(|| bad_key("a quoted key must end with a quote"))?;
            let mut key = String::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                let c = match b {
                    b'\\' => match bytes.next() {
                        Some(&e @ (b'"' | b'\\')) => e,
                        _ => return Err(bad_key("only \\\" and \\\\ may be escaped")),
                    },
                    b'"' => return Err(bad_key("a quote inside the key must be escaped")),
                    b' '..=b'~' => b,
                    _ => return Err(bad_key("not printable ASCII")),
                };
                key.push(char::from(c));
            }
            key
        }
        None => {
            if !raw.iter().all(|b| (b'!'..=b'~').contains(b)) {
                return Err(bad_key("not printable ASCII (a bare key has no spaces)"));
            }
            String::from_utf8_lossy(raw).into_owned()
        }
    };
    if key.is_empty() {
        return Err(bad_key("empty"));
    }
    if key.len() > MAX_KEY_CHARS {
        return Err(bad_key(&format!("{} characters", key.len())));
    }
    Ok(Some(key))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a response is the request's answer, kept for its retries (see
/// the module comment).
fn kept(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT)
}

/// Runs `work` once per caller and `Idempotency-Key`: the route's whole
/// answer, given the request's `headers` and its `fingerprint` (made only
/// when a key was sent). Without the header, `work` simply runs. With it:
/// a first request runs `work` (in a task of its own, so it finishes even
/// if this request is dropped) and its response is kept; a retry gets
/// that response again, or 409 while the first still runs; the same key
/// with another fingerprint is 422. A key needs a bearer token (400
/// without): records are kept per caller.
///
/// `work` is what the route would do without a key, errors included: an
/// `Err` is answered (and kept) as its problem response. It is polled
/// only when this request runs; when the key answers instead (a replay,
/// 409, 422) it is dropped unpolled, so what it owns must clean up on
/// drop. A body that is streamed rather than held (an upload) is received
/// first, then `run` is called with a fingerprint over its digest and a
/// `work` that commits it: a retry's bytes are received again and, when
/// replayed, discarded.
pub async fn run<W>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    fingerprint: impl FnOnce() -> Fingerprint,
    work: W,
) -> Result<Response, ApiError>
where
    W: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let Some(key) = key_of(headers)? else {
        return work.await;
    };
    let identity = caller.identity.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "an Idempotency-Key needs a bearer token: keys and their results are kept per caller",
        )
    })?;
    let key = IdempotencyKey {
        tenant: identity.tenant.key().to_owned(),
        subject: identity.sub.clone(),
        key,
    };
    let fingerprint = fingerprint();
    // From the claim on, everything runs in a task of its own: a request
    // cut meanwhile (its client gone, `server.request_timeout`) cuts
    // neither a claim that reached the store nor the work it started, and
    // the result is kept for the retry.
    let task = claim_and_run(state.clone(), key, fingerprint, work);
    tokio::spawn(task.in_current_span())
        .await
        .map_err(|e| ApiError::internal(format!("an idempotent request's task: {e}")))?
}

/// The claim, then the replay, the refusal or the run (see `run`).
async fn claim_and_run<W>(
    state: AppState,
    key: IdempotencyKey,
    fingerprint: Fingerprint,
    work: W,
) -> Result<Response, ApiError>
where
    W: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let run_id = format!("{:032x}", rand::random::<u128>());
    let cfg = state.config();
    let now = now_ms();
    let claim = IdempotencyClaim {
        key: &key,
        fingerprint: &fingerprint.0,
        run: &run_id,
        now,
        lease_until: now.saturating_add(ms(LEASE)),
        expires_at: now.saturating_add(ms(cfg.idempotency.retention.0)),
    };
    match state.gateway().idempotency_begin(&claim).await? {
        IdempotencyBegin::Mismatch => Err(ApiError::new(
            ProblemKind::IdempotencyKeyReused,
            "this Idempotency-Key was used for another request (another body or target); use a new key for a new request",
        )),
        IdempotencyBegin::Running => Err(ApiError::new(
            ProblemKind::IdempotencyKeyInUse,
            "the first request with this Idempotency-Key is still running; retry shortly to get its result",
        )),
        IdempotencyBegin::Done(stored) => Ok(replay(stored)),
        IdempotencyBegin::Started => {
            let cap = cfg.server.max_body_bytes.saturating_add(BODY_HEADROOM);
            // A panic in the work becomes a 500 (and releases the key)
            // instead of leaving the record held until its lease ends.
            let mut work = tokio::spawn(work.in_current_span());
            let mut renewals =
                tokio::time::interval_at(tokio::time::Instant::now() + LEASE / 3, LEASE / 3);
            let joined = loop {
                tokio::select! {
                    joined = &mut work => break joined,
                    _ = renewals.tick() => renew(&state, &key, &run_id).await,
                }
            };
            let answer = match joined {
                Ok(Ok(res)) => res,
                Ok(Err(e)) => e.into_response(),
                Err(e) => {
                    ApiError::internal(format!("the request's work failed: {e}")).into_response()
                }
            };
            Ok(settle(&state, &key, &run_id, answer, cap).await)
        }
    }
}

/// Extends a working run's lease.
async fn renew(state: &AppState, key: &IdempotencyKey, run: &str) {
    let until = now_ms().saturating_add(ms(LEASE));
    match state.gateway().idempotency_renew(key, run, until).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "an Idempotency-Key's run lost its key (its record expired or was taken over); its answer will not be kept"
        ),
        Err(e) => tracing::warn!(error = %e, "renewing an Idempotency-Key's lease failed"),
    }
}

/// Keeps `answer` for the key (or releases the key when the answer is not
/// kept) and returns it.
async fn settle(
    state: &AppState,
    key: &IdempotencyKey,
    run: &str,
    answer: Response,
    cap: usize,
) -> Response {
    let gateway = state.gateway();
    if !kept(answer.status()) {
        if let Err(e) = gateway.idempotency_release(key, run).await {
            tracing::warn!(error = %e, "releasing an Idempotency-Key failed: retries get 409 until its lease ends");
        }
        return answer;
    }
    let (parts, body) = answer.into_parts();
    // Every route's answer is already in memory: this only takes it.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = gateway.idempotency_release(key, run).await;
            return ApiError::internal(format!("an answer's body could not be read: {e}"))
                .into_response();
        }
    };
    if bytes.len() > cap {
        tracing::warn!(
            bytes = bytes.len(),
            cap,
            "an answer too large to keep for its Idempotency-Key: answered, not kept (a retry runs again)"
        );
        let _ = gateway.idempotency_release(key, run).await;
        return Response::from_parts(parts, Body::from(bytes));
    }
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .flat_map(|name| {
                parts
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| (name.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
        body: bytes.to_vec(),
    };
    match gateway.idempotency_finish(key, run, &stored).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "an Idempotency-Key's run finished after its lease: another run holds the key, this answer is not the kept one"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "keeping an Idempotency-Key's answer failed: retries get 409 until its lease ends"
        ),
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// A kept response, sent again.
fn replay(stored: StoredResponse) -> Response {
    let mut res = Response::new(Body::from(stored.body));
    *res.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    h.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[&str]) -> Result<Option<String>, ApiError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                IDEMPOTENCY_KEY.clone(),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        key_of(&h)
    }

    #[test]
    fn keys_are_quoted_strings_or_bare_printable_ascii() {
        assert_eq!(key(&[]).expect("none"), None);
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(key(&[uuid]).expect("bare").as_deref(), Some(uuid));
        assert_eq!(
            key(&[&format!("\"{uuid}\"")]).expect("quoted").as_deref(),
            Some(uuid),
            "quoted and bare name the same key"
        );
        assert_eq!(
            key(&[r#""a \"b\" \\ c""#]).expect("escapes").as_deref(),
            Some(r#"a "b" \ c"#)
        );
        assert_eq!(key(&[" k "]).expect("OWS").as_deref(), Some("k"));
        let longest = "k".repeat(MAX_KEY_CHARS);
        assert_eq!(key(&[&longest]).expect("255").as_deref(), Some(&*longest));
        for bad in [
            vec!["\"\""],
            vec![""],
            vec!["a b"],
            vec!["\"unterminated"],
            vec![r#""a\nb""#],
            vec![r#""a"b""#],
            vec!["a", "b"],
        ] {
            let e = key(&bad).expect_err(&format!("{bad:?}"));
            assert_eq!(e.kind(), ProblemKind::BadRequest, "{bad:?}");
        }
        assert!(key(&[&"k".repeat(MAX_KEY_CHARS + 1)]).is_err());
        // Non-ASCII bytes (obs-text) are refused.
        let mut h = HeaderMap::new();
        h.insert(
            IDEMPOTENCY_KEY.clone(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"),
        );
        assert!(key_of(&h).is_err());
    }

    #[test]
    fn fingerprints_tell_targets_and_bodies_apart() {
        let uri = |u: &str| u.parse::<Uri>().expect("uri");
        let a = Fingerprint::new(&Method::POST, &uri("/v1/collections/a/documents"), &[b"{}"]);
        assert_eq!(
            a,
            Fingerprint::new(&Method::POST, &uri("/v1/collections/a/documents"), &[b"{}"])
        );
        for other in [
            Fingerprint::new(&Method::POST, &uri("/v1/collections/b/documents"), &[b"{}"]),
            Fingerprint::new(
                &Method::POST,
                &uri("/v1/collections/a/documents"),
                &[b"{ }"],
            ),
            Fingerprint::new(&Method::PUT, &uri("/v1/collections/a/documents"), &[b"{}"]),
            Fingerprint::new(
                &Method::POST,
                &uri("/v1/collections/a/documents?x=1"),
                &[b"{}"],
            ),
            Fingerprint::new(
                &Method::POST,
                &uri("/v1/collections/a/documents"),
                &[b"{", b"}"],
            ),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn answers_are_kept_unless_nothing_was_decided() {
        for s in [200, 201, 400, 403, 404, 409, 412, 413, 422] {
            assert!(kept(StatusCode::from_u16(s).expect("status")), "{s}");
        }
        for s in [408, 429, 500, 503] {
            assert!(!kept(StatusCode::from_u16(s).expect("status")), "{s}");
        }
    }

    #[test]
    fn replays_carry_the_kept_headers_and_the_marker() {
        let res = replay(StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("location".into(), "/v1/collections/a/documents/x".into()),
                ("etag".into(), "\"1\"".into()),
            ],
            body: b"{}".to_vec(),
        });
        assert_eq!(res.status(), 201);
        assert_eq!(
            res.headers()[header::LOCATION],
            "/v1/collections/a/documents/x"
        );
        assert_eq!(res.headers()[header::ETAG], "\"1\"");
        assert_eq!(res.headers()[&IDEMPOTENT_REPLAYED], "true");
    }
}
