//! `/v1/collections/{name}/documents`, `/count` and `/aggregate`: create,
//! read, replace, patch, delete, list, count and aggregate documents. Each handler resolves the collection,
//! asks `access::authorize` for the caller's `Scope`, validates the body
//! against the schema, and lets the store apply the write atomically
//! against the revision it read (`If-Match` and `If-None-Match` are
//! checked against that revision).

use arca_core::document::ClientBody;
use arca_core::pipeline::Pipeline;
use arca_core::query::{Cursor, Filter, Projection, Sort, cursor};
use arca_core::{DocId, Document, DocumentError, DocumentText, merge_patch, split_client_body};
use arca_store::{PageWriter, Query, StoreError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::conditions::Preconditions;
use crate::error::ApiError;
use crate::extract::{Caller, JsonBytes, PathParams, Target, parse_document_json, parse_json};
use crate::gateway::{Collection, Create, Delete, Read, Update};
use crate::idempotency::{self, Fingerprint};
use crate::respond::json;
use crate::state::AppState;

/// The document routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/collections/{name}/documents", get(list).post(create))
        .route(
            "/v1/collections/{name}/documents/{id}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .route("/v1/collections/{name}/count", get(count))
        .route("/v1/collections/{name}/aggregate", post(aggregate))
}

fn document_error(e: DocumentError) -> ApiError {
    match e {
        DocumentError::NotAnObject => ApiError::invalid_document(vec![arca_core::FieldError {
            path: String::new(),
            message: "a document is a JSON object".into(),
        }]),
        DocumentError::Invalid(errors) => ApiError::invalid_document(errors),
    }
}

fn document_response(
    status: StatusCode,
    doc: &Document,
    location: Option<&Collection>,
) -> Response {
    let mut res = crate::respond::json_of(status, doc);
    set_etag(&mut res, &doc.etag());
    if let Some(c) = location {
        let loc = format!("/v1/collections/{}/documents/{}", c.name, doc.system.id);
        if let Ok(v) = HeaderValue::from_str(&loc) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

/// Sets the `ETag` header (`"<rev>"`, always a valid header value).
fn set_etag(res: &mut Response, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
}

#[utoipa::path(post, operation_id = "create_document", path = "/v1/collections/{name}/documents", tag = "documents", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"),
        ("Idempotency-Key" = Option<String>, Header, description = crate::wire::IDEMPOTENCY_KEY_DOC, pattern = r#"^[!#-~][!-~]{0,254}$"#)),
    request_body(content = Object, content_type = "application/json", description = "The document (optionally with `_id`)"),
    responses((status = 201, description = "Created", body = crate::wire::AnyDocument,
                headers(("ETag" = String, description = "\"<_rev>\""), ("Location" = String, description = "The document's URL"),
                        ("Idempotent-Replayed" = String, description = "`true` on the replay of a request sent before with the same Idempotency-Key"))),
              (status = 409, description = "Duplicate _id or unique index value; or the first request with the same Idempotency-Key is still running", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 422, description = "The document does not fit the collection; or the Idempotency-Key was used for another request", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded, crate::wire::Addressed, crate::wire::WithBody))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    headers: HeaderMap,
    uri: Uri,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let work = create_document(state.clone(), caller.clone(), coll, bytes.clone());
    let fingerprint = || Fingerprint::new(&Method::POST, &uri, &[&bytes]);
    idempotency::run(&state, &caller, &headers, fingerprint, work).await
}

/// A create, whole: the access check, the body, the insert, the answer.
async fn create_document(
    state: AppState,
    caller: Caller,
    coll: std::sync::Arc<Collection>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Create>(&caller, &coll)?;
    let body = split_client_body(parse_document_json(&bytes)?, None).map_err(document_error)?;
    let stored = grant.create(body, bytes.len()).await?;
    Ok(document_response(StatusCode::CREATED, &stored, Some(&coll)))
}

#[utoipa::path(get, operation_id = "read_document", path = "/v1/collections/{name}/documents/{id}", tag = "documents", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"), ("id" = String, Path, description = "Document id", pattern = r"^[A-Za-z0-9_-]{1,128}$"),
        ("If-None-Match" = Option<String>, Header, description = "ETag(s) already held")),
    responses((status = 200, description = "The document", body = crate::wire::AnyDocument,
                headers(("ETag" = String, description = "\"<_rev>\""))),
              (status = 304, description = "Not modified", headers(("ETag" = String))),
              crate::wire::Guarded, crate::wire::Addressed))]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    p: PathParams,
    Preconditions { if_none_match, .. }: Preconditions,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Read>(&caller, &coll)?;
    let id = p.doc_id()?;
    // The stored text goes out as is: nothing here needs the parsed body.
    let doc = grant.get_text(&id).await?.ok_or_else(|| {
        ApiError::new(
            crate::error::ProblemKind::DocumentNotFound,
            "no such document",
        )
    })?;
    let mut res = if if_none_match.is_some_and(|t| t.matches_weak(doc.system.rev)) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        crate::respond::json_bytes(StatusCode::OK, doc.to_json_bytes())
    };
    set_etag(&mut res, &doc.etag());
    Ok(res)
}

#[utoipa::path(put, operation_id = "replace_document", path = "/v1/collections/{name}/documents/{id}", tag = "documents", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"), ("id" = String, Path, description = "Document id", pattern = r"^[A-Za-z0-9_-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "Required revision"),
        ("If-None-Match" = Option<String>, Header, description = "Refuse the write (412) if the current revision is one of these; `*`: if the document exists")),
    request_body(content = Object, content_type = "application/json", description = "The full new body"),
    responses((status = 200, description = "The new revision", body = crate::wire::AnyDocument,
                headers(("ETag" = String, description = "\"<_rev>\""))),
              (status = 409, description = "Duplicate unique index value", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 412, description = "If-Match does not match, or If-None-Match does", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 422, description = "The document does not fit the collection", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded, crate::wire::Addressed, crate::wire::WithBody))]
pub(crate) async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    p: PathParams,
    pre: Preconditions,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Update>(&caller, &coll)?;
    let id = p.doc_id()?;
    let ClientBody { fields, errors, .. } =
        split_client_body(parse_document_json(&bytes)?, Some(&id)).map_err(document_error)?;
    let doc = grant
        .update(
            &id,
            &pre,
            &errors,
            Some(bytes.len()),
            |_| Ok(fields.clone()),
        )
        .await?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

#[utoipa::path(patch, operation_id = "patch_document", path = "/v1/collections/{name}/documents/{id}", tag = "documents", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"), ("id" = String, Path, description = "Document id", pattern = r"^[A-Za-z0-9_-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "Required revision"),
        ("If-None-Match" = Option<String>, Header, description = "Refuse the write (412) if the current revision is one of these; `*`: if the document exists")),
    request_body(description = "JSON Merge Patch (RFC 7396)", content(
        (Object = "application/merge-patch+json"), (Object = "application/json"))),
    responses((status = 200, description = "The new revision", body = crate::wire::AnyDocument,
                headers(("ETag" = String, description = "\"<_rev>\""))),
              (status = 409, description = "Duplicate unique index value", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 412, description = "If-Match does not match, or If-None-Match does", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 422, description = "The result does not fit the collection", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded, crate::wire::Addressed, crate::wire::WithBody))]
pub(crate) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    p: PathParams,
    pre: Preconditions,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Update>(&caller, &coll)?;
    let id = p.doc_id()?;
    let patch_value = parse_document_json(&bytes)?;
    if !patch_value.is_object() {
        return Err(ApiError::invalid_document(vec![arca_core::FieldError {
            path: String::new(),
            message: "a merge patch for a document is a JSON object".into(),
        }]));
    }
    let ClientBody {
        fields: patch,
        errors,
        ..
    } = split_client_body(patch_value, Some(&id)).map_err(document_error)?;
    let limit = state.config().server.max_body_bytes;
    let doc = grant.update(&id, &pre, &errors, None, |current| {
        let mut body = current.body.clone();
        merge_patch(&mut body, patch.clone());
        // Patches could grow a document past what any request may carry,
        // and then it could never be sent back whole with PUT.
        let len = arca_core::document::body_len(&body);
        if len > limit {
            return Err(ApiError::invalid_document(vec![arca_core::FieldError {
                path: String::new(),
                message: format!(
                    "the patched document would be {len} bytes of JSON, over server.max_body_bytes ({limit})"
                ),
            }]));
        }
        Ok(body)
    })
    .await?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

#[utoipa::path(delete, operation_id = "delete_document", path = "/v1/collections/{name}/documents/{id}", tag = "documents", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"), ("id" = String, Path, description = "Document id", pattern = r"^[A-Za-z0-9_-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "Required revision"),
        ("If-None-Match" = Option<String>, Header, description = "Refuse the write (412) if the current revision is one of these; `*`: if the document exists")),
    responses((status = 204, description = "Deleted"),
              (status = 409, description = "The document kept changing; retry", body = crate::wire::Problem, content_type = "application/problem+json"), (status = 412, description = "If-Match does not match, or If-None-Match does", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded, crate::wire::Addressed))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    p: PathParams,
    pre: Preconditions,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Delete>(&caller, &coll)?;
    grant.delete(&p.doc_id()?, &pre).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A listing's query parameters, parsed: `filter`, `sort`, `fields`,
/// `limit` (1 to 1000, default 20) and the `after` cursor, which must come
/// from a listing with the same filter and sort.
struct ListParams {
    query: Query,
    fields: Option<Projection>,
    fingerprint: String,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// Parses the `filter` parameter; its canonical text feeds the cursor
/// fingerprint.
fn parse_filter(raw: Option<&str>) -> Result<(Filter, String), ApiError> {
    match raw {
        None => Ok((Filter::all(), String::new())),
        Some(text) => {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| bad(format!("filter is not valid JSON: {e}")))?;
            let f = Filter::parse(&v).map_err(|e| bad(format!("invalid filter: {e}")))?;
            Ok((f, v.to_string()))
        }
    }
}

/// A request's query parameters, decoded; refused (400) when a decoded
/// name or value is not UTF-8: `form_urlencoded` would put U+FFFD in place
/// of the bad bytes, and a filter value, sort or projection would silently
/// mean something the client did not send.
pub(crate) fn query_pairs(raw: Option<&str>) -> Result<form_urlencoded::Parse<'_>, ApiError> {
    let raw = raw.unwrap_or_default();
    if percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .is_err()
    {
        return Err(bad("query parameters must be UTF-8 once percent-decoded"));
    }
    Ok(form_urlencoded::parse(raw.as_bytes()))
}

/// A listing's `limit` parameter: 1 to 1000, default 20 (documents and
/// files alike).
pub(crate) fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(20),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("limit must be an integer from 1 to 1000")),
    }
}

/// `collection` and `key` (the store's cursor key) bind and check cursors.
fn parse_list_params(
    raw: Option<&str>,
    collection: &str,
    key: &[u8],
) -> Result<ListParams, ApiError> {
    let mut filter_text = None;
    let mut sort_text = None;
    let mut fields_text = None;
    let mut after_text = None;
    let mut limit_text = None;
    for (k, v) in query_pairs(raw)? {
        let slot = match k.as_ref() {
            "filter" => &mut filter_text,
            "sort" => &mut sort_text,
            "fields" => &mut fields_text,
            "after" => &mut after_text,
            "limit" => &mut limit_text,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(bad(format!("the `{k}` parameter is given twice")));
        }
    }
    let limit = parse_limit(limit_text.as_deref())?;
    let (filter, canonical) = parse_filter(filter_text.as_deref())?;
    let sort = match sort_text.as_deref() {
        None => Sort::by_id(),
        Some(t) => Sort::parse(t).map_err(bad)?,
    };
    let fields = fields_text
        .as_deref()
        .map(Projection::parse)
        .transpose()
        .map_err(bad)?;
    let fingerprint = cursor::fingerprint(collection, &canonical, &sort.canonical());
    let after = after_text
        .as_deref()
        .map(|t| Cursor::decode(t, &fingerprint, sort.fields().len(), key))
        .transpose()
        .map_err(bad)?;
    Ok(ListParams {
        query: Query {
            filter,
            sort,
            after,
            limit,
            max_bytes: None,
        },
        fields,
        fingerprint,
    })
}

#[utoipa::path(get, operation_id = "list_documents", path = "/v1/collections/{name}/documents", tag = "documents",
    params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"),
        ("filter" = Option<String>, Query, description = "MongoDB-style filter (JSON)"),
        ("sort" = Option<String>, Query, description = "Comma-separated fields, `-` for descending"),
        ("fields" = Option<String>, Query, description = "Inclusion projection (comma-separated paths)"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 20", minimum = 1, maximum = 1000),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page")),
    responses((status = 200, description = "A page of documents", body = crate::wire::DocumentPage),
              crate::wire::Guarded, crate::wire::Addressed))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Read>(&caller, &coll)?;
    let key = state.gateway().cursor_key().await?;
    let mut params = parse_list_params(raw.as_deref(), coll.name.as_str(), &key)?;
    let limit = params.query.limit;
    // One extra document tells whether a next page exists.
    params.query.limit = limit + 1;
    let max_bytes = state.config().query.max_page_bytes;
    let ListParams {
        query,
        fields,
        fingerprint,
    } = params;
    let sort = query.sort.clone();
    let Some(projection) = fields else {
        // No projection: the stored texts go out as they are, written into
        // the response on the engine's thread.
        let write: PageWriter = Box::new(move |mut docs| {
            let sizes: Vec<usize> = docs.iter().map(DocumentText::json_len_hint).collect();
            let next = match page_end(&mut docs, sizes, limit, max_bytes) {
                Some(last) => {
                    let whole: Value = serde_json::from_slice(&last.to_json_bytes())
                        .map_err(|e| StoreError::Unavailable(format!("a stored document: {e}")))?;
                    next_cursor(&sort, &fingerprint, &key, &whole, &last.system.id)
                }
                None => Value::Null,
            };
            Ok(page_json(&docs, &next))
        });
        let body = grant.find_written(query, write).await?;
        return Ok(crate::respond::json_bytes(StatusCode::OK, body));
    };
    let mut docs = grant.find(query).await?;
    let sizes: Vec<usize> = docs
        .iter()
        .map(|d| arca_core::document::json_len(&d.system, arca_core::document::body_len(&d.body)))
        .collect();
    let next = page_end(&mut docs, sizes, limit, max_bytes).map_or(Value::Null, |last| {
        next_cursor(&sort, &fingerprint, &key, &last.to_json(), &last.system.id)
    });
    let items: Vec<Value> = docs
        .iter()
        .map(|d| projection.apply(&d.to_json()))
        .collect();
    Ok(json(StatusCode::OK, &json!({"items": items, "next": next})))
}

/// Cuts a listing fetched with a look-ahead (`query.limit` of `page + 1`,
/// and the engine's byte rule, `arca_store::PageBudget`) to what the page
/// holds: at most `page` documents, and of those the ones that fit in
/// `max_bytes` (`sizes` in order, at least one); returns the last one kept
/// when more followed it (a next page exists).
fn page_end<T>(
    docs: &mut Vec<T>,
    sizes: impl IntoIterator<Item = usize>,
    page: usize,
    max_bytes: usize,
) -> Option<&T> {
    let keep = arca_store::fits(sizes, max_bytes).min(page);
    if docs.len() <= keep {
        return None;
    }
    docs.truncate(keep);
    docs.last()
}

/// The cursor after `whole` (a document as clients see it) in `sort`.
fn next_cursor(sort: &Sort, fingerprint: &str, key: &[u8], whole: &Value, id: &DocId) -> Value {
    Value::String(
        Cursor {
            key: sort.key(whole).0,
            id: id.as_str().to_owned(),
        }
        .encode(fingerprint, key),
    )
}

/// `{"items": [...], "next": ...}` around a page's documents, written
/// from their stored texts.
fn page_json(docs: &[DocumentText], next: &Value) -> Vec<u8> {
    let size: usize = docs.iter().map(DocumentText::json_len_hint).sum();
    let mut out = Vec::with_capacity(64 + size);
    out.extend_from_slice(b"{\"items\":[");
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        doc.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"next\":");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, next);
    out.push(b'}');
    out
}

#[utoipa::path(post, operation_id = "aggregate_documents", path = "/v1/collections/{name}/aggregate", tag = "documents",
    params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    request_body(content = crate::wire::AggregateInput, description = "The pipeline (docs/aggregate.md): the caller's tenant and read rule apply before the first stage and to every $lookup"),
    responses((status = 200, description = "The results", body = crate::wire::AggregateOutput),
              crate::wire::Guarded, crate::wire::Addressed, crate::wire::WithBody))]
pub(crate) async fn aggregate(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Read>(&caller, &coll)?;
    let body = parse_json(&bytes)?;
    if !body.is_object() {
        return Err(bad(
            "the body must be an object: {\"pipeline\": [stages...]}",
        ));
    }
    let pipeline = Pipeline::parse(&body).map_err(|e| bad(e.to_string()))?;
    // Every $lookup target: known (400) and readable by the caller (403),
    // with its own scope.
    let lookups = state.gateway().lookup_scopes(&caller, &pipeline)?;
    let items = grant.aggregate(&pipeline, &lookups).await?;
    Ok(json(StatusCode::OK, &json!({"items": items})))
}

#[utoipa::path(get, operation_id = "count_documents", path = "/v1/collections/{name}/count", tag = "documents",
    params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"), ("filter" = Option<String>, Query, description = "MongoDB-style filter (JSON)")),
    responses((status = 200, description = "The count", body = crate::wire::CountOutput),
              crate::wire::Guarded, crate::wire::Addressed))]
pub(crate) async fn count(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let grant = state.gateway().authorize::<Read>(&caller, &coll)?;
    let mut filter_text = None;
    for (k, v) in query_pairs(raw.as_deref())? {
        if k == "filter" && filter_text.replace(v.into_owned()).is_some() {
            return Err(bad("the `filter` parameter is given twice"));
        }
    }
    let (filter, _) = parse_filter(filter_text.as_deref())?;
    let n = grant.count(&filter).await?;
    Ok(json(StatusCode::OK, &json!({"count": n})))
}
