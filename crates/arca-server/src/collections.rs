//! `/v1/collections`: defining, listing, reading and deleting collections
//! (schema admins only).

use arca_core::{CollectionDef, CollectionName};
use arca_store::PutOutcome;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::access::schema_admin;
use crate::error::{ApiError, ProblemKind};
use crate::extract::{Authenticated, JsonBytes, PathParams, parse_json};
use crate::gateway::Collection;
use crate::respond::json;
use crate::state::AppState;

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
    responses((status = 200, description = "Every collection", body = crate::wire::CollectionList),
              crate::wire::Guarded))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    schema_admin(state.auth().settings(), &caller)?;
    let items: Vec<Value> = state
        .gateway()
        .collections()
        .iter()
        .map(|c| definition_json(c))
        .collect();
    Ok(json(StatusCode::OK, &json!({"items": items})))
}

#[utoipa::path(get, operation_id = "read_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    responses((status = 200, description = "The definition", body = crate::wire::CollectionOutput),
              (status = 404, description = "No such collection or document", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded))]
pub(crate) async fn read(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
) -> Result<Response, ApiError> {
    schema_admin(state.auth().settings(), &caller)?;
    let c = state.gateway().collection(&name_or_404(p.get("name")?)?)?;
    Ok(json(StatusCode::OK, &definition_json(&c)))
}

#[utoipa::path(put, operation_id = "put_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    request_body(content = crate::wire::CollectionInput, content_type = "application/json"),
    responses((status = 200, description = "Updated", body = crate::wire::CollectionOutput),
              (status = 201, description = "Created", body = crate::wire::CollectionOutput),
              (status = 400, description = "Malformed JSON or an invalid definition (naming the keyword)", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 409, description = "A new unique index meets duplicates; nothing changed", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded, crate::wire::WithBody))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let admin = schema_admin(state.auth().settings(), &caller)?;
    let name = CollectionName::parse(p.get("name")?)
        .map_err(|e| ApiError::new(ProblemKind::InvalidDefinition, e.to_string()))?;
    let body = parse_json(&body)?;
    let def = CollectionDef::parse(&body)
        .and_then(|def| def.refuse_duplicate_indexes().map(|()| def))
        .map_err(|e| ApiError::new(ProblemKind::InvalidDefinition, e.to_string()))?;
    let (outcome, c) = state.gateway().define(&admin, &name, &def).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
    };
    Ok(json(status, &definition_json(&c)))
}

#[utoipa::path(delete, operation_id = "delete_collection", path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    responses((status = 204, description = "Deleted with its documents"), (status = 404, description = "No such collection or document", body = crate::wire::Problem, content_type = "application/problem+json"), crate::wire::Guarded))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    p: PathParams,
) -> Result<Response, ApiError> {
    let admin = schema_admin(state.auth().settings(), &caller)?;
    let name = name_or_404(p.get("name")?)?;
    let existed = state.gateway().undefine(&admin, &name).await?;
    if existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            ProblemKind::CollectionNotFound,
            format!("no collection named {name}"),
        ))
    }
}
