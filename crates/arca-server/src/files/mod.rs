//! `/v1/files`: uploads (raw bodies or one multipart `file` part), the
//! caller's files (or an admin's whole tenant's) newest first (an
//! extension of the contract), range
//! downloads, metadata, thumbnails, deletes and signed links. Every call
//! goes through the gateway's `FilesGrant`, which confines it to the
//! caller's tenant (or a link's one file).
//!
//! Uploads are streamed: each chunk is hashed, counted against
//! `files.max_bytes` (413 as soon as it is passed, or before reading when
//! `Content-Length` says so) and handed to the store in pieces of at most
//! `BATCH` bytes, so an upload holds about that much memory whatever its
//! size. An image (sniffed from its first bytes) is then read back and
//! checked on the bounded image pool before the commit makes it visible.
//!
//! An upload with an `Idempotency-Key` is received and checked first, then
//! committed through `idempotency::run` with a fingerprint over its digest,
//! name and type: a retry's bytes are received again and, when the first
//! upload's answer is replayed, thrown away (`Pending`).
//!
//! Submodules: `imaging` (sniffing, image checks, thumbnails), `serve`
//! (ranges, ETags, content disposition).

pub mod imaging;
pub mod serve;

use std::pin::pin;

use arca_core::FileId;
use arca_core::query::cursor::{self, Cursor, CursorError};
use arca_store::{FileMeta, ImageFacts, ThumbFormat, ThumbKey};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ProblemKind};
use crate::extract::{Caller, PathParams, content_coding};
use crate::gateway::{FilesGrant, Received, Upload, links};
use crate::idempotency::{self, Fingerprint};
use crate::middleware::{RequestDeadline, UPLOAD_ROUTE};
use crate::state::AppState;
use imaging::{Format, ImageProblem};

/// The files routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(UPLOAD_ROUTE, post(upload).get(list))
        .route("/v1/files/{id}", get(download).delete(remove))
        .route("/v1/files/{id}/metadata", get(metadata))
        .route("/v1/files/{id}/thumbnail", get(thumbnail))
        .route("/v1/files/{id}/links", post(create_link))
}

/// Bytes handed to the store at once: what an upload holds in memory (plus
/// the chunk in hand), and large enough that a 25 MiB upload is ~100 store
/// writes.
const BATCH: usize = 256 << 10;

/// How long before the upload's time is up its body must have arrived.
const BODY_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// What a multipart body may add around its file part (boundaries, part
/// headers) beyond `files.max_bytes` before its `Content-Length` alone
/// refuses it.
const MULTIPART_SLACK: u64 = 64 << 10;

/// The metadata of a file, as the contract shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileOutput {
    /// The file's id (32 hex digits).
    pub id: String,
    /// The file name (cleaned: last path segment, no control characters).
    pub filename: String,
    /// Sniffed from the bytes for images; else as declared; else
    /// `application/octet-stream`.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex (the `ETag`, quoted).
    pub sha256: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// For images: dimensions and format; `null` otherwise.
    pub image: Option<ImageOutput>,
}

/// An image's facts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImageOutput {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// `png`, `jpeg`, `gif` or `webp`.
    pub format: String,
}

/// A page of files, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FilePage {
    /// The files' metadata.
    pub items: Vec<FileOutput>,
    /// Cursor for the next page, or null on the last page.
    pub next: Option<String>,
}

/// A signed link.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LinkOutput {
    /// The file's URL (a path on this server, to put after its base URL)
    /// with the signature's query parameters; add `size` and use
    /// `/thumbnail` in place of the end for thumbnails.
    pub url: String,
    /// Seconds until the link expires.
    pub expires_in: u64,
}

impl From<&FileMeta> for FileOutput {
    fn from(m: &FileMeta) -> Self {
        Self {
            id: m.id.to_string(),
            filename: m.filename.clone(),
            content_type: m.content_type.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
            created_at: m.created_at.clone(),
            image: m.image.as_ref().map(|i| ImageOutput {
                width: i.width,
                height: i.height,
                format: i.format.clone(),
            }),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(ProblemKind::FileNotFound, "no such file")
}

/// The `{id}` segment; an id that cannot exist is simply not found.
fn file_id(p: &PathParams) -> Result<FileId, ApiError> {
    FileId::parse(p.get("id")?).map_err(|_| not_found())
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ProblemKind::PayloadTooLarge,
        format!("files are limited to {max} bytes (files.max_bytes)"),
    )
}

fn invalid_file(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidFile, detail)
}

fn image_problem(p: ImageProblem) -> ApiError {
    invalid_file(p.to_string())
}

fn set(res: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().insert(name, v);
    }
}

/// The grant for a read: the caller's token when one was sent, else the
/// request's signed link (401 without either, or with a bad link).
async fn read_grant(
    state: &AppState,
    caller: &Caller,
    id: &FileId,
    query: Option<&str>,
) -> Result<FilesGrant, ApiError> {
    if caller.identity.is_some() {
        return state.gateway().files(caller);
    }
    match links::parse(query) {
        Some(Ok(link)) => state.gateway().files_by_link(id, &link).await,
        Some(Err(())) => Err(ApiError::new(
            ProblemKind::Unauthorized,
            "the link's parameters are malformed",
        )),
        None => Err(ApiError::missing_token()),
    }
}

/// What a received body came to.
struct Pumped {
    size: u64,
    sha256: String,
    /// The first bytes, for sniffing.
    head: Vec<u8>,
}

/// Streams `body` into the upload: hashing, counting against `max`, and
/// writing in batches of `BATCH`; each chunk must arrive before `deadline`.
async fn pump<S>(
    upload: &mut Upload,
    body: S,
    max: u64,
    deadline: Option<tokio::time::Instant>,
) -> Result<Pumped, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    let mut body = pin!(body);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut head = Vec::with_capacity(imaging::SNIFF_BYTES);
    let mut batch = BytesMut::with_capacity(BATCH);
    loop {
        let next = match deadline {
            Some(at) => tokio::time::timeout_at(at, body.next())
                .await
                .map_err(|_| {
                    ApiError::new(
                        ProblemKind::RequestTimeout,
                        "the upload did not arrive within files.upload_timeout",
                    )
                })?,
            None => body.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large(max));
        }
        hasher.update(&chunk);
        if head.len() < imaging::SNIFF_BYTES {
            let take = (imaging::SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH {
            upload.write(batch.split().freeze()).await?;
        }
    }
    if !batch.is_empty() {
        upload.write(batch.freeze()).await?;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Pumped { size, sha256, head })
}

fn unreadable_body() -> ApiError {
    ApiError::bad_request("the request body could not be read")
}

/// The first parameter `name` of a query string.
fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Receives the body into `upload`: a raw body, or the one `file` part of
/// a multipart form. Returns what was pumped, the declared content type
/// and the part's file name.
async fn receive(
    upload: &mut Upload,
    req: Request,
    max: u64,
) -> Result<(Pumped, Option<String>, Option<String>), ApiError> {
    // The body must be in a moment before the request's time is up, so
    // that a client still sending gets its 408 rather than the 503 the
    // timeout layer gives when both fall due at the same instant.
    let deadline = req
        .extensions()
        .get::<RequestDeadline>()
        .map(|d| d.0 - BODY_MARGIN);
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let boundary = declared
        .as_deref()
        .filter(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("multipart/form-data"))
        })
        .map(|ct| {
            multer::parse_boundary(ct)
                .map_err(|_| ApiError::bad_request("multipart/form-data without a boundary"))
        })
        .transpose()?;
    let body = req.into_body().into_data_stream();
    let Some(boundary) = boundary else {
        let pumped = pump(
            upload,
            body.map(|c| c.map_err(|_| unreadable_body())),
            max,
            deadline,
        )
        .await?;
        return Ok((pumped, declared, None));
    };
    let malformed = |e: multer::Error| match e {
        multer::Error::StreamReadFailed(_) => unreadable_body(),
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    };
    let mut form = multer::Multipart::new(body, boundary);
    let within = |at: Option<tokio::time::Instant>| async move {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let field = tokio::select! {
        f = form.next_field() => f.map_err(malformed)?,
        () = within(deadline) => return Err(ApiError::new(ProblemKind::RequestTimeout, "the upload did not arrive within files.upload_timeout")),
    };
    let field =
        field.ok_or_else(|| ApiError::bad_request("the multipart body has no `file` part"))?;
    if field.name() != Some("file") {
        return Err(ApiError::bad_request(
            "the multipart body must hold one part named `file` (and nothing else)",
        ));
    }
    let part_type = field.content_type().map(ToString::to_string);
    let part_name = field.file_name().map(str::to_owned);
    let pumped = pump(upload, field.map(|c| c.map_err(malformed)), max, deadline).await?;
    let more = tokio::select! {
        f = form.next_field() => f.map_err(malformed)?,
        () = within(deadline) => return Err(ApiError::new(ProblemKind::RequestTimeout, "the upload did not arrive within files.upload_timeout")),
    };
    if more.is_some() {
        return Err(ApiError::bad_request(
            "the multipart body must hold one part named `file` (and nothing else)",
        ));
    }
    Ok((pumped, part_type, part_name))
}

#[utoipa::path(post, operation_id = "upload_file", path = "/v1/files", tag = "files",
    params(("filename" = Option<String>, Query, description = "The file name (raw bodies; a multipart part's own name is used otherwise)"),
        ("Idempotency-Key" = Option<String>, Header, description = crate::wire::IDEMPOTENCY_KEY_DOC, pattern = r#"^[!#-~][!-~]{0,254}$"#)),
    request_body(description = "The file: the raw bytes with their `Content-Type`, or `multipart/form-data` with one part named `file`. At most `files.max_bytes` (default 25 MiB).",
        content(
            (Vec<u8> = "application/octet-stream"),
            (Vec<u8> = "image/*"),
            (crate::wire::MultipartFile = "multipart/form-data"))),
    responses((status = 201, description = "Stored", body = FileOutput,
                headers(("Location" = String, description = "The file's URL"), ("ETag" = String, description = "The quoted SHA-256"),
                        ("Idempotent-Replayed" = String, description = "`true` on the replay of an upload sent before with the same Idempotency-Key"))),
              (status = 409, description = "The first upload with the same Idempotency-Key is still running", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 400, description = "A malformed multipart body", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 408, description = "The body did not arrive within files.upload_timeout", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 413, description = "Over files.max_bytes", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 415, description = "A compressed body (Content-Encoding)", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 422, description = "An empty file, or an image over files.max_image_pixels or that does not decode; or the Idempotency-Key was used for another request", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::Guarded))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let grant = state.gateway().files(&caller)?;
    let cfg = state.config().files.clone();
    if let Some(coding) = content_coding(req.headers()) {
        return Err(ApiError::new(
            ProblemKind::UnsupportedMediaType,
            format!(
                "compressed uploads are not accepted (Content-Encoding: {coding}); send the bytes as they are"
            ),
        ));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/"));
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let slack = if multipart { MULTIPART_SLACK } else { 0 };
    if declared_len.is_some_and(|n| n > cfg.max_bytes.saturating_add(slack)) {
        return Err(too_large(cfg.max_bytes));
    }
    // A malformed key is refused before any byte is received.
    idempotency::key_of(req.headers())?;
    let headers = req.headers().clone();
    let uri = req.uri().clone();
    let mut upload = grant.upload().await?;
    let received = match accept(&mut upload, req, raw.as_deref(), &cfg).await {
        Ok(received) => received,
        Err(e) => {
            // In the background: the answer (a 408 near the deadline, say)
            // must not wait for the store to throw the bytes away.
            tokio::spawn(upload.abort());
            return Err(e);
        }
    };
    // The same key for other bytes, another name or type is another
    // request (422).
    let fingerprint = Fingerprint::new(
        &Method::POST,
        &uri,
        &[
            received.sha256.as_bytes(),
            received.filename.as_bytes(),
            received.content_type.as_bytes(),
        ],
    );
    let pending = Pending(Some(upload));
    let work = commit(pending, received);
    idempotency::run(&state, &caller, &headers, || fingerprint, work).await
}

/// A received upload not yet committed: thrown away (in the background)
/// when dropped uncommitted, as when an `Idempotency-Key` replays the
/// first upload's answer instead of running this one.
struct Pending(Option<Upload>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(upload) = self.0.take() {
            tokio::spawn(upload.abort());
        }
    }
}

/// Commits a received upload: the 201 answer.
async fn commit(mut pending: Pending, received: Received) -> Result<Response, ApiError> {
    let upload = pending
        .0
        .take()
        .ok_or_else(|| ApiError::internal("an upload was committed twice"))?;
    let meta = upload.commit(received).await?;
    let mut res = crate::respond::json_of(StatusCode::CREATED, &FileOutput::from(&meta));
    set(
        &mut res,
        header::LOCATION,
        &format!("/v1/files/{}", meta.id),
    );
    set(&mut res, header::ETAG, &serve::etag(&meta.sha256));
    Ok(res)
}

/// Receives and checks an upload: what the commit will store.
async fn accept(
    upload: &mut Upload,
    req: Request,
    query: Option<&str>,
    cfg: &crate::config::FilesConfig,
) -> Result<Received, ApiError> {
    let (pumped, declared, part_name) = receive(upload, req, cfg.max_bytes).await?;
    if pumped.size == 0 {
        return Err(invalid_file("the file is empty"));
    }
    let filename = serve::clean_filename(
        &query_param(query, "filename")
            .or(part_name)
            .unwrap_or_default(),
    );
    let (content_type, image) = match imaging::sniff(&pumped.head) {
        Some(format) => {
            let max = cfg.max_image_pixels;
            let (width, height) = upload
                .check(move |bytes| imaging::check(bytes, format, max))
                .await?
                .map_err(image_problem)?;
            let facts = ImageFacts {
                width,
                height,
                format: format.name().into(),
            };
            (format.mime().to_owned(), Some(facts))
        }
        None => (
            declared
                .as_deref()
                .and_then(serve::clean_content_type)
                .filter(|t| !t.starts_with("multipart/"))
                .unwrap_or_else(|| "application/octet-stream".into()),
            None,
        ),
    };
    Ok(Received {
        filename,
        content_type,
        size: pumped.size,
        sha256: pumped.sha256,
        image,
    })
}

/// The headers every file response carries: type, tag, ranges, and how a
/// browser may show it (inline only for verified images; anything else an
/// attachment in a sandbox).
fn file_headers(res: &mut Response, meta: &FileMeta, etag: &str) {
    set(res, header::CONTENT_TYPE, &meta.content_type);
    set(res, header::ETAG, etag);
    set(res, header::ACCEPT_RANGES, "bytes");
    let inline = meta.image.is_some();
    res.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        serve::disposition(inline, &meta.filename),
    );
    if !inline {
        set(res, header::CONTENT_SECURITY_POLICY, "sandbox");
    }
}

#[utoipa::path(get, operation_id = "download_file", path = "/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id", pattern = "^[0-9a-f]{32}$"),
        ("Range" = Option<String>, Header, description = "One byte range: `bytes=0-99`, `bytes=100-` or `bytes=-100` (several ranges are answered with the whole file)"),
        ("If-Range" = Option<String>, Header, description = "The ETag the range is for"),
        ("If-None-Match" = Option<String>, Header, description = "ETags already held"),
        ("exp" = Option<u64>, Query, description = "Signed link: expiry (Unix seconds)"),
        ("tid" = Option<String>, Query, description = "Signed link: the tenant"),
        ("sig" = Option<String>, Query, description = "Signed link: the signature (instead of a bearer token)")),
    responses((status = 200, description = "The bytes, with the file's content type", content_type = "*/*", body = Vec<u8>,
                headers(("ETag" = String, description = "The quoted SHA-256"), ("Accept-Ranges" = String), ("Content-Disposition" = String),
                        ("Content-Security-Policy" = String, description = "`sandbox`, for anything but verified images"))),
              (status = 206, description = "One byte range", content_type = "*/*", body = Vec<u8>,
                headers(("Content-Range" = String, description = "`bytes a-b/N`"), ("ETag" = String))),
              (status = 304, description = "Not modified (If-None-Match)", headers(("ETag" = String))),
              crate::wire::NoSuchFile,
              (status = 416, description = "No byte of the range is in the file", body = crate::wire::Problem, content_type = "application/problem+json",
                headers(("Content-Range" = String, description = "`bytes */N`"))),
              crate::wire::Guarded))]
pub(crate) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    p: PathParams,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = file_id(&p)?;
    let grant = read_grant(&state, &caller, &id, raw.as_deref()).await?;
    let meta = grant.meta(&id).await?;
    let tag = serve::etag(&meta.sha256);
    if crate::conditions::not_modified(&headers, &tag) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        set(&mut res, header::ETAG, &tag);
        return Ok(res);
    }
    let (status, range) = match serve::part(&headers, meta.size, &tag) {
        serve::Part::Unsatisfiable => {
            let mut res = ApiError::new(
                ProblemKind::RangeNotSatisfiable,
                format!("the file has {} bytes", meta.size),
            )
            .into_response();
            set(
                &mut res,
                header::CONTENT_RANGE,
                &format!("bytes */{}", meta.size),
            );
            return Ok(res);
        }
        serve::Part::Whole => (StatusCode::OK, 0..meta.size),
        serve::Part::Range(r) => (StatusCode::PARTIAL_CONTENT, r),
    };
    let stream = grant.read(&id, range.clone()).await?;
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    file_headers(&mut res, &meta, &tag);
    set(
        &mut res,
        header::CONTENT_LENGTH,
        &(range.end - range.start).to_string(),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut res,
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{}", range.start, range.end - 1, meta.size),
        );
    }
    Ok(res)
}

#[utoipa::path(get, operation_id = "file_metadata", path = "/v1/files/{id}/metadata", tag = "files",
    params(("id" = String, Path, description = "File id", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The file's metadata", body = FileOutput,
                headers(("ETag" = String, description = "The quoted SHA-256"))),
              crate::wire::NoSuchFile,
              crate::wire::Guarded))]
pub(crate) async fn metadata(
    State(state): State<AppState>,
    caller: Caller,
    p: PathParams,
) -> Result<Response, ApiError> {
    let id = file_id(&p)?;
    let meta = state.gateway().files(&caller)?.meta(&id).await?;
    let mut res = crate::respond::json_of(StatusCode::OK, &FileOutput::from(&meta));
    set(&mut res, header::ETAG, &serve::etag(&meta.sha256));
    Ok(res)
}

/// A files listing's query: which files (the caller's own, or with
/// `all=true` every file of the tenant), how many, and from where.
struct ListQuery {
    all: bool,
    limit: usize,
    /// The position to continue after: a `created_at` and an id.
    after: Option<(String, FileId)>,
    /// What this listing's cursors are bound to (`list_fingerprint`).
    fingerprint: String,
}

/// What a files listing's cursor is bound to: it only continues a files
/// listing of the same kind (a documents cursor is refused, and a cursor
/// of one's own files does not continue a listing of all of them).
fn list_fingerprint(all: bool) -> String {
    cursor::fingerprint(
        "/v1/files",
        if all { "all" } else { "own" },
        "-created_at,-id",
    )
}

/// `all` (`true` or `false`, default `false`), `limit` (1 to 1000,
/// default 20) and the `after` cursor of a files listing, checked with the
/// store's cursor key `key`.
fn parse_list_query(raw: Option<&str>, key: &[u8]) -> Result<ListQuery, ApiError> {
    let mut all_text = None;
    let mut limit_text = None;
    let mut after_text = None;
    for (k, v) in crate::documents::query_pairs(raw)? {
        let slot = match k.as_ref() {
            "all" => &mut all_text,
            "limit" => &mut limit_text,
            "after" => &mut after_text,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(format!(
                "the `{k}` parameter is given twice"
            )));
        }
    }
    let all = match all_text.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("all must be true or false")),
    };
    let limit = crate::documents::parse_limit(limit_text.as_deref())?;
    let fingerprint = list_fingerprint(all);
    let after = match after_text {
        None => None,
        Some(text) => {
            let cursor = Cursor::decode(&text, &fingerprint, 1, key).map_err(|e| match e {
                CursorError::Foreign => ApiError::bad_request(
                    "this cursor belongs to another listing (all=true and all=false are two)",
                ),
                e => ApiError::bad_request(e.to_string()),
            })?;
            // Signed by this server, so well formed; checked all the same.
            let invalid = || ApiError::bad_request(CursorError::Invalid.to_string());
            let at = cursor.key[0].as_str().ok_or_else(invalid)?.to_owned();
            let id = FileId::parse(&cursor.id).map_err(|_| invalid())?;
            Some((at, id))
        }
    };
    Ok(ListQuery {
        all,
        limit,
        after,
        fingerprint,
    })
}

#[utoipa::path(get, operation_id = "list_files", path = "/v1/files", tag = "files",
    params(("all" = Option<bool>, Query, description = "`true`: every file of the tenant (admins only); default: the files the caller uploaded"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 20", minimum = 1, maximum = 1000),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page")),
    responses((status = 200, description = "A page of files, newest first", body = FilePage),
              (status = 400, description = "A bad `all` or `limit`, or a cursor that is not the `next` of the same listing", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::Guarded))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.gateway().files(&caller)?;
    let key = state.gateway().cursor_key().await?;
    let ListQuery {
        all,
        limit,
        after,
        fingerprint,
    } = parse_list_query(raw.as_deref(), &key)?;
    // One extra file tells whether a next page exists.
    let mut files = grant
        .list(
            all,
            after.as_ref().map(|(at, id)| (at.as_str(), id)),
            limit + 1,
        )
        .await?;
    let next = if files.len() > limit {
        files.truncate(limit);
        files.last().map(|last| {
            Cursor {
                key: vec![serde_json::Value::String(last.created_at.clone())],
                id: last.id.to_string(),
            }
            .encode(&fingerprint, &key)
        })
    } else {
        None
    };
    let page = FilePage {
        items: files.iter().map(FileOutput::from).collect(),
        next,
    };
    Ok(crate::respond::json_of(StatusCode::OK, &page))
}

#[utoipa::path(delete, operation_id = "delete_file", path = "/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id", pattern = "^[0-9a-f]{32}$")),
    responses((status = 204, description = "Deleted, with its thumbnails"),
              crate::wire::NoSuchFile,
              crate::wire::Guarded))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    p: PathParams,
) -> Result<Response, ApiError> {
    let id = file_id(&p)?;
    state.gateway().files(&caller)?.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether `Accept` admits WebP (`image/webp`, not with `q=0`).
fn accepts_webp(headers: &HeaderMap) -> bool {
    crate::respond::accepts(headers, |media| media.eq_ignore_ascii_case("image/webp"))
}

/// Thumbnail bounds: 16 to 1024 pixels, 256 by default.
fn thumbnail_bound(query: Option<&str>) -> Result<u32, ApiError> {
    let mut sizes = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "size")
        .map(|(_, v)| v.into_owned());
    let size = sizes.next();
    if sizes.next().is_some() {
        return Err(ApiError::bad_request("the `size` parameter is given twice"));
    }
    match size {
        None => Ok(256),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (16..=1024).contains(n))
            .ok_or_else(|| ApiError::bad_request("size must be an integer from 16 to 1024")),
    }
}

#[utoipa::path(get, operation_id = "file_thumbnail", path = "/v1/files/{id}/thumbnail", tag = "files",
    params(("id" = String, Path, description = "File id", pattern = "^[0-9a-f]{32}$"),
        ("size" = Option<u32>, Query, description = "Bound on the longer side, 16 to 1024 (default 256); never upscaled", minimum = 16, maximum = 1024),
        ("Accept" = Option<String>, Header, description = "`image/webp` gets WebP; JPEG otherwise"),
        ("If-None-Match" = Option<String>, Header, description = "ETags already held"),
        ("exp" = Option<u64>, Query, description = "Signed link: expiry"),
        ("tid" = Option<String>, Query, description = "Signed link: the tenant"),
        ("sig" = Option<String>, Query, description = "Signed link: the signature")),
    responses((status = 200, description = "The thumbnail (EXIF orientation applied, aspect kept)", body = Vec<u8>,
                content(("image/jpeg"), ("image/webp")), headers(("ETag" = String), ("Vary" = String))),
              (status = 304, description = "Not modified (If-None-Match)"),
              (status = 400, description = "size outside 16..1024", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::NoSuchFile,
              (status = 415, description = "The file is not an image", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::Guarded))]
pub(crate) async fn thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    p: PathParams,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = file_id(&p)?;
    let bound = thumbnail_bound(raw.as_deref())?;
    let grant = read_grant(&state, &caller, &id, raw.as_deref()).await?;
    let meta = grant.meta(&id).await?;
    let Some((image, format)) = meta
        .image
        .as_ref()
        .and_then(|i| Format::from_name(&i.format).map(|f| (i, f)))
    else {
        return Err(ApiError::new(
            ProblemKind::UnsupportedMediaType,
            "thumbnails are made of images (png, jpeg, gif, webp) only",
        ));
    };
    // Bounds at or above the image's longer side all give the image at
    // its own size: one cached thumbnail serves them.
    let bound = bound.min(image.width.max(image.height));
    let out = if accepts_webp(&headers) {
        ThumbFormat::Webp
    } else {
        ThumbFormat::Jpeg
    };
    let tag = format!("\"{}-{bound}-{}\"", meta.sha256, out.as_str());
    let mut res = if crate::conditions::not_modified(&headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let max = state.config().files.max_image_pixels;
        let key = ThumbKey {
            size: bound,
            format: out,
        };
        let bytes = grant
            .thumbnail(&meta, key, move |bytes| {
                imaging::thumbnail(bytes, format, max, bound, out).map_err(image_problem)
            })
            .await?;
        let mut res = Response::new(Body::from(bytes));
        let mime = match out {
            ThumbFormat::Jpeg => "image/jpeg",
            ThumbFormat::Webp => "image/webp",
        };
        set(&mut res, header::CONTENT_TYPE, mime);
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline"),
        );
        res
    };
    set(&mut res, header::ETAG, &tag);
    res.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    Ok(res)
}

#[utoipa::path(post, operation_id = "create_file_link", path = "/v1/files/{id}/links", tag = "files",
    params(("id" = String, Path, description = "File id", pattern = "^[0-9a-f]{32}$")),
    responses((status = 201, description = "A signed link to the file's bytes (and, with `/thumbnail` and `size`, its thumbnails), usable without a token until it expires", body = LinkOutput),
              crate::wire::NoSuchFile,
              crate::wire::Guarded))]
pub(crate) async fn create_link(
    State(state): State<AppState>,
    caller: Caller,
    p: PathParams,
) -> Result<Response, ApiError> {
    let id = file_id(&p)?;
    let ttl = state.config().files.link_ttl.0;
    let query = state.gateway().files(&caller)?.link(&id, ttl).await?;
    let body = LinkOutput {
        url: format!("/v1/files/{id}?{query}"),
        expires_in: ttl.as_secs().max(1),
    };
    Ok(crate::respond::json_of(StatusCode::CREATED, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_bounds_are_16_to_1024() {
        assert_eq!(thumbnail_bound(None).ok(), Some(256));
        assert_eq!(thumbnail_bound(Some("size=16")).ok(), Some(16));
        assert_eq!(thumbnail_bound(Some("size=1024&sig=x")).ok(), Some(1024));
        for bad in [
            "size=15",
            "size=1025",
            "size=-1",
            "size=abc",
            "size=",
            "size=1&size=2",
        ] {
            assert!(thumbnail_bound(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn webp_only_when_accepted() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).expect("v"));
            m
        };
        assert!(accepts_webp(&h("image/avif,image/webp,*/*")));
        assert!(!accepts_webp(&h("image/webp;q=0, */*")));
        assert!(!accepts_webp(&h("image/*")));
        assert!(!accepts_webp(&HeaderMap::new()));
    }
}
