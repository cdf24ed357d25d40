//! `/v1/collections/{name}/documents` and `/count`: create, read, replace,
//! patch, delete and list documents. Each handler resolves the collection,
//! asks `access::authorize` for the caller's `Scope`, validates the body
//! against the schema, and lets the store apply the write atomically
//! against the revision it read (`If-Match` is checked inside the write).

use std::sync::Arc;

use arca_auth::Identity;
use arca_core::document::ClientBody;
use arca_core::{
    Action, CollectionName, DocId, Document, DocumentError, merge_patch, split_client_body,
};
use arca_store::{NewDocument, Page, StoreError};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::access::authorize;
use crate::error::{ApiError, ProblemKind};
use crate::extract::{Caller, EntityTags, JsonBytes, PathParams, parse_document_json};
use crate::respond::{json, timed};
use crate::state::{AppState, Collection};

/// How many times a write without `If-Match` retries after losing a race.
const WRITE_RETRIES: usize = 16;

/// The document routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/collections/{name}/documents", get(list).post(create))
        .route(
            "/v1/collections/{name}/documents/{id}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .route("/v1/collections/{name}/count", get(count))
}

fn collection(state: &AppState, raw: &str) -> Result<Arc<Collection>, ApiError> {
    let name = CollectionName::parse(raw)
        .map_err(|_| ApiError::new(ProblemKind::CollectionNotFound, "no such collection"))?;
    state.collection(&name)
}

fn not_found() -> ApiError {
    ApiError::new(ProblemKind::DocumentNotFound, "no such document")
}

/// A URL id that cannot exist is simply not found.
fn doc_id(raw: &str) -> Result<DocId, ApiError> {
    DocId::parse(raw).map_err(|_| not_found())
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

/// Validates `body` against the schema; `earlier` are failures already
/// found on reserved fields, reported together with the schema's.
fn validate(
    coll: &Collection,
    body: &Map<String, Value>,
    earlier: &[arca_core::FieldError],
) -> Result<(), ApiError> {
    // The validator takes a `Value`, hence the copy of the map.
    let mut errors = earlier.to_vec();
    errors.extend(coll.def.schema.validate(&Value::Object(body.clone())));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_document(errors))
    }
}

fn document_response(
    status: StatusCode,
    doc: &Document,
    location: Option<&Collection>,
) -> Response {
    let mut res = json(status, &doc.to_json());
    if let Ok(v) = HeaderValue::from_str(&doc.etag()) {
        res.headers_mut().insert(header::ETAG, v);
    }
    if let Some(c) = location {
        let loc = format!("/v1/collections/{}/documents/{}", c.name, doc.system.id);
        if let Ok(v) = HeaderValue::from_str(&loc) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Create)?;
    let ClientBody { id, fields, errors } =
        split_client_body(parse_document_json(&bytes)?, None).map_err(document_error)?;
    validate(&coll, &fields, &errors)?;
    let doc = NewDocument {
        id,
        owner: owner_of(&caller),
        body: fields,
    };
    let stored = timed("insert", state.store().insert(&coll.name, &scope, doc)).await?;
    Ok(document_response(StatusCode::CREATED, &stored, Some(&coll)))
}

fn owner_of(caller: &Option<Arc<Identity>>) -> String {
    caller.as_ref().map(|c| c.sub.clone()).unwrap_or_default()
}

async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Read)?;
    let id = doc_id(&p[1])?;
    let doc = timed("get", state.store().get(&coll.name, &scope, &id))
        .await?
        .ok_or_else(not_found)?;
    if EntityTags::from_header(&headers, header::IF_NONE_MATCH)
        .is_some_and(|t| t.matches_weak(doc.system.rev))
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&doc.etag()) {
            res.headers_mut().insert(header::ETAG, v);
        }
        return Ok(res);
    }
    Ok(document_response(StatusCode::OK, &doc, None))
}

/// Reads the current document, lets `change` compute the new body, and
/// writes it conditionally on the revision read. With `If-Match` a lost
/// race is 412; without, the whole step is retried.
async fn update_with(
    state: &AppState,
    coll: &Collection,
    scope: &arca_core::Scope,
    id: &DocId,
    if_match: Option<EntityTags>,
    earlier: &[arca_core::FieldError],
    change: impl Fn(&Document) -> Result<Map<String, Value>, ApiError>,
) -> Result<Document, ApiError> {
    for _ in 0..WRITE_RETRIES {
        let current = timed("get", state.store().get(&coll.name, scope, id))
            .await?
            .ok_or_else(not_found)?;
        if let Some(tags) = &if_match
            && !tags.matches_strong(current.system.rev)
        {
            return Err(StoreError::RevMismatch.into());
        }
        let body = change(&current)?;
        validate(coll, &body, earlier)?;
        match state
            .store()
            .replace(&coll.name, scope, id, current.system.rev, body)
            .await
        {
            Ok(doc) => return Ok(doc),
            Err(StoreError::RevMismatch) if if_match.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ProblemKind::Conflict,
        "the document is changing too fast; retry",
    ))
}

async fn replace(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    headers: HeaderMap,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Update)?;
    let id = doc_id(&p[1])?;
    let ClientBody { fields, errors, .. } =
        split_client_body(parse_document_json(&bytes)?, Some(&id)).map_err(document_error)?;
    let if_match = EntityTags::from_header(&headers, header::IF_MATCH);
    let doc = update_with(&state, &coll, &scope, &id, if_match, &errors, |_| {
        Ok(fields.clone())
    })
    .await?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

async fn patch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    headers: HeaderMap,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Update)?;
    let id = doc_id(&p[1])?;
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
    let if_match = EntityTags::from_header(&headers, header::IF_MATCH);
    let doc = update_with(&state, &coll, &scope, &id, if_match, &errors, |current| {
        let mut body = current.body.clone();
        merge_patch(&mut body, patch.clone());
        Ok(body)
    })
    .await?;
    Ok(document_response(StatusCode::OK, &doc, None))
}

async fn remove(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Delete)?;
    let id = doc_id(&p[1])?;
    let expected = match EntityTags::from_header(&headers, header::IF_MATCH) {
        None => None,
        Some(tags) => {
            let current = timed("get", state.store().get(&coll.name, &scope, &id))
                .await?
                .ok_or_else(not_found)?;
            if !tags.matches_strong(current.system.rev) {
                return Err(StoreError::RevMismatch.into());
            }
            Some(current.system.rev)
        }
    };
    timed(
        "delete",
        state.store().delete(&coll.name, &scope, &id, expected),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query parameters of a listing.
struct ListParams {
    limit: usize,
    after: Option<DocId>,
}

const CURSOR_VERSION: u64 = 1;

fn encode_cursor(id: &DocId) -> String {
    URL_SAFE_NO_PAD.encode(json!({"v": CURSOR_VERSION, "id": id.as_str()}).to_string())
}

fn decode_cursor(raw: &str) -> Result<DocId, ApiError> {
    let bad = || {
        ApiError::bad_request("invalid cursor: pass the `next` value of a previous page unchanged")
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if v.get("v").and_then(Value::as_u64) != Some(CURSOR_VERSION) {
        return Err(bad());
    }
    v.get("id")
        .and_then(Value::as_str)
        .and_then(|s| DocId::parse(s).ok())
        .ok_or_else(bad)
}

fn parse_list_params(raw: Option<&str>) -> Result<ListParams, ApiError> {
    let mut out = ListParams {
        limit: 20,
        after: None,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                out.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("limit must be an integer from 1 to 1000")
                    })?;
            }
            "after" => out.after = Some(decode_cursor(&v)?),
            "filter" | "sort" | "fields" => {
                return Err(ApiError::bad_request(format!(
                    "the `{k}` parameter is not supported by this version yet"
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Read)?;
    let params = parse_list_params(query.as_deref())?;
    // One extra row tells whether a next page exists.
    let mut docs = timed(
        "list",
        state.store().list(
            &coll.name,
            &scope,
            Page {
                after: params.after,
                limit: params.limit + 1,
            },
        ),
    )
    .await?;
    let next = if docs.len() > params.limit {
        docs.truncate(params.limit);
        docs.last()
            .map(|d| Value::String(encode_cursor(&d.system.id)))
    } else {
        None
    };
    let items: Vec<Value> = docs.iter().map(Document::to_json).collect();
    Ok(json(
        StatusCode::OK,
        &json!({"items": items, "next": next.unwrap_or(Value::Null)}),
    ))
}

async fn count(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParams(p): PathParams,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let coll = collection(&state, &p[0])?;
    let scope = authorize(&state, &caller, &coll, Action::Read)?;
    for (k, _) in form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        if k == "filter" {
            return Err(ApiError::bad_request(
                "the `filter` parameter is not supported by this version yet",
            ));
        }
    }
    let n = timed("count", state.store().count(&coll.name, &scope)).await?;
    Ok(json(StatusCode::OK, &json!({"count": n})))
}
