//! `/v1/collections`: defining, listing, reading and deleting collections
//! (schema admins only).

use std::sync::Arc;

use arca_core::{CollectionDef, CollectionName};
use arca_store::PutOutcome;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::access::require_schema_admin;
use crate::error::{ApiError, ProblemKind};
use crate::extract::{Authenticated, JsonBytes, PathParams, parse_json};
use crate::respond::{json, timed};
use crate::state::{AppState, Collection};

/// The collection routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/collections", get(list))
        .route("/v1/collections/{name}", get(read).put(put).delete(remove))
}

/// The definition as `GET` returns it.
pub fn definition_json(c: &Collection) -> Value {
    json!({
        "name": c.name.as_str(),
        "schema": c.stored.schema,
        "indexes": c.stored.indexes.iter().map(arca_core::IndexDef::to_json).collect::<Vec<_>>(),
        "access": c.stored.access,
        "created_at": c.stored.created_at,
        "updated_at": c.stored.updated_at,
    })
}

fn name_or_404(raw: &str) -> Result<CollectionName, ApiError> {
    CollectionName::parse(raw)
        .map_err(|_| ApiError::new(ProblemKind::CollectionNotFound, "no such collection"))
}

#[utoipa::path(get, operation_id = "list_collections", path = "/v1/collections", tag = "collections",
    responses((status = 200, description = "Every collection", body = crate::openapi::CollectionList),
              crate::openapi::Guarded))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    require_schema_admin(&state, &caller)?;
    let items: Vec<Value> = state
        .collections()
        .iter()
        .map(|c| definition_json(c))
        .collect();
    Ok(json(StatusCode::OK, &json!({"items": items})))
}

#[utoipa::path(get, operation_id = "read_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    responses((status = 200, description = "The definition", body = crate::openapi::CollectionOutput),
              (status = 404, description = "No such collection or document", body = crate::openapi::Problem, content_type = "application/problem+json"), crate::openapi::Guarded))]
pub(crate) async fn read(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
) -> Result<Response, ApiError> {
    require_schema_admin(&state, &caller)?;
    let c = state.collection(&name_or_404(&p[0])?)?;
    Ok(json(StatusCode::OK, &definition_json(&c)))
}

#[utoipa::path(put, operation_id = "put_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    request_body(content = crate::openapi::CollectionInput, content_type = "application/json"),
    responses((status = 200, description = "Updated", body = crate::openapi::CollectionOutput),
              (status = 201, description = "Created", body = crate::openapi::CollectionOutput),
              (status = 400, description = "Malformed JSON or an invalid definition (naming the keyword)", body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, description = "A new unique index meets duplicates; nothing changed", body = crate::openapi::Problem, content_type = "application/problem+json"), crate::openapi::Guarded, crate::openapi::WithBody))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    require_schema_admin(&state, &caller)?;
    let name = CollectionName::parse(&p[0])
        .map_err(|e| ApiError::new(ProblemKind::InvalidDefinition, e.to_string()))?;
    let body = parse_json(&body)?;
    let def = CollectionDef::parse(&body)
        .and_then(|def| def.refuse_duplicate_indexes().map(|()| def))
        .map_err(|e| ApiError::new(ProblemKind::InvalidDefinition, e.to_string()))?;
    let outcome = timed(
        "put_collection",
        state
            .store()
            .put_collection(&name, def.schema.source(), &def.indexes, &def.access_source),
    )
    .await?;
    state.reload_catalog().await.map_err(ApiError::from)?;
    let c: Arc<Collection> = state.collection(&name)?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
    };
    Ok(json(status, &definition_json(&c)))
}

#[utoipa::path(delete, operation_id = "delete_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    responses((status = 204, description = "Deleted with its documents"), (status = 404, description = "No such collection or document", body = crate::openapi::Problem, content_type = "application/problem+json"), crate::openapi::Guarded))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
) -> Result<Response, ApiError> {
    require_schema_admin(&state, &caller)?;
    let name = name_or_404(&p[0])?;
    let existed = timed("delete_collection", state.store().delete_collection(&name)).await?;
    state.reload_catalog().await.map_err(ApiError::from)?;
    if existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            ProblemKind::CollectionNotFound,
            format!("no collection named {name}"),
        ))
    }
}
