//! Wire types: the shapes of request and response bodies that the OpenAPI
//! document describes (`ToSchema`) and the problem responses shared by many
//! routes (`IntoResponses`). Handlers name them in their `#[utoipa::path]`
//! annotations; this module depends on no other module of the crate, so
//! both the handlers and the OpenAPI assembly can use it.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The `Idempotency-Key` request header, as the OpenAPI document
/// describes it (on every create).
pub const IDEMPOTENCY_KEY_DOC: &str = "Makes the create safe to retry: the first result for this key (status and body, errors included) is kept per caller for idempotency.retention and replayed to retries; 1 to 255 printable ASCII characters, bare (as the pattern says) or as a quoted string (RFC 8941, e.g. \"k-1\"); needs a bearer token";

/// The bare form of an `Idempotency-Key` (the quoted one is accepted too).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!#-~][!-~]{0,254}$";

/// The problem responses of every route behind the access rules (one
/// place for their wording, listed in each `#[utoipa::path]`).
#[derive(utoipa::IntoResponses)]
pub enum Guarded {
    #[response(
        status = 401,
        description = "Missing or invalid token",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "Not allowed",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 503,
        description = "Store unavailable or request timed out",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// The problem responses of a route addressing a collection's documents.
#[derive(utoipa::IntoResponses)]
pub enum Addressed {
    #[response(
        status = 400,
        description = "Malformed request",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 404,
        description = "No such collection or document",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
}

/// The problem response of a route addressing one file.
#[derive(utoipa::IntoResponses)]
pub enum NoSuchFile {
    #[response(
        status = 404,
        description = "No such file (or another tenant's)",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
}

/// The problem responses of a route taking a JSON body.
#[derive(utoipa::IntoResponses)]
pub enum WithBody {
    #[response(
        status = 408,
        description = "The body did not arrive within server.request_timeout",
        content_type = "application/problem+json"
    )]
    BodyTimeout(Problem),
    #[response(
        status = 413,
        description = "Body over server.max_body_bytes",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "Body is not JSON, or compressed (Content-Encoding)",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// An RFC 9457 problem (every error response).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"type": "urn:arca:problem:invalid-document", "title": "Document does not fit the collection",
    "status": 422, "detail": "1 validation error", "errors": [{"path": "/age", "message": "-1 is less than the minimum of 0"}]}))]
pub struct Problem {
    /// A stable URI per error kind (`urn:arca:problem:<slug>`).
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: Option<String>,
    /// One entry per validation failure (422).
    pub errors: Option<Vec<FieldErrorDoc>>,
}

/// One validation failure.
#[derive(Serialize, ToSchema)]
pub struct FieldErrorDoc {
    /// JSON pointer to the offending value.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// `{"status": "ok"}` / `{"status": "ready"}`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// A collection definition, as sent to `PUT /v1/collections/{name}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"schema": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]},
    "indexes": [{"fields": {"email": 1}, "unique": true}],
    "access": {"read": {"roles": ["*"], "filter": {"_owner": {"$claim": "sub"}}}, "create": {"roles": ["editor"]}}}))]
pub struct CollectionInput {
    /// JSON Schema (draft 2020-12, portable subset) of the documents.
    #[schema(value_type = Object)]
    pub schema: Option<Value>,
    /// Declared indexes: `{"fields": {"path": 1 | -1}, "unique": bool, "sparse": bool}`;
    /// at most 32, of at most 8 fields each, one per key pattern (field
    /// order and directions).
    #[schema(value_type = Vec<Object>)]
    pub indexes: Option<Vec<Value>>,
    /// Access rules per action (`read`, `create`, `update`, `delete`), each
    /// `{"roles": [...], "filter": {...}}`.
    #[schema(value_type = Object)]
    pub access: Option<Value>,
}

/// A stored collection definition.
#[derive(Serialize, ToSchema)]
pub struct CollectionOutput {
    /// The name.
    pub name: String,
    /// The schema as given.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Declared indexes.
    #[schema(value_type = Vec<Object>)]
    pub indexes: Vec<Value>,
    /// Access rules as given.
    #[schema(value_type = Object)]
    pub access: Value,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// `GET /v1/collections`.
#[derive(Serialize, ToSchema)]
pub struct CollectionList {
    /// Every collection.
    pub items: Vec<CollectionOutput>,
}

/// A document of any collection: the system fields and the user fields.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"_id": "6b0c5496846d0fce4ccb0ab8", "_rev": 1, "_created_at": "2026-11-29T16:36:38.740Z",
    "_updated_at": "2026-11-29T16:36:38.740Z", "_owner": "ana", "name": "Ana"}))]
pub struct AnyDocument {
    /// Id (client-chosen or generated).
    #[serde(rename = "_id")]
    pub id: Option<String>,
    /// Revision.
    #[serde(rename = "_rev")]
    pub rev: Option<u64>,
    /// Creation time.
    #[serde(rename = "_created_at")]
    pub created_at: Option<String>,
    /// Last write time.
    #[serde(rename = "_updated_at")]
    pub updated_at: Option<String>,
    /// The creator's `sub`.
    #[serde(rename = "_owner")]
    pub owner: Option<String>,
}

/// A page of documents.
#[derive(Serialize, ToSchema)]
pub struct DocumentPage {
    /// The documents (projected when `fields` is given).
    pub items: Vec<AnyDocument>,
    /// Cursor for the next page, or null on the last page.
    pub next: Option<String>,
}

/// `{"count": n}`.
#[derive(Serialize, ToSchema)]
pub struct CountOutput {
    /// Matching documents.
    pub count: u64,
}

/// `POST /v1/collections/{name}/aggregate`: a MongoDB aggregation
/// pipeline of the allowed stages (docs/aggregate.md).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"pipeline": [
    {"$match": {"status": {"$in": ["open", "late"]}}},
    {"$group": {"_id": "$status", "count": {"$sum": 1}, "total": {"$sum": "$amount"}}},
    {"$sort": {"count": -1}}
]}))]
pub struct AggregateInput {
    /// The stages, in order: `$match $project $addFields $set $unset
    /// $group $sort $limit $skip $unwind $count $lookup`.
    #[schema(value_type = Vec<Object>)]
    pub pipeline: Vec<Value>,
}

/// `{"items": [...]}`: the pipeline's results, in order.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"items": [{"_id": "open", "count": 12, "total": 1830.5}, {"_id": "late", "count": 3, "total": 410}]}))]
pub struct AggregateOutput {
    /// The results (any shape the stages give; at most
    /// `aggregate.max_results`).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
}

/// `POST /v1/collections/{name}/access/explain`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"action": "update"}))]
pub struct ExplainInput {
    /// `read`, `create`, `update` or `delete`.
    pub action: String,
    /// Admins only: explain for these claims instead of the caller's.
    #[schema(value_type = Option<Object>)]
    pub claims: Option<Value>,
}

/// The decision for an action and the effective filters.
#[derive(Serialize, ToSchema)]
pub struct ExplainOutput {
    /// The collection.
    pub collection: String,
    /// The action.
    pub action: String,
    /// Whether the role stage admits the caller.
    pub allowed: bool,
    /// What the role stage would answer (200, 401 or 403).
    pub status: u16,
    /// Why.
    pub reason: String,
    /// The identity explained (null without a token).
    #[schema(value_type = Option<Object>)]
    pub identity: Option<Value>,
    /// The action's rule as defined.
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Value>,
    /// The action's effective filter.
    #[schema(value_type = Object)]
    pub scope: Value,
    /// The read scope's effective filter.
    #[schema(value_type = Object)]
    pub read_scope: Value,
    /// How to read the answer.
    pub note: String,
}

/// A `multipart/form-data` upload: one part named `file`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the body is streamed, not parsed into this
pub struct MultipartFile {
    /// The file's bytes (its part's `filename` and `Content-Type` are used).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `POST /v1/collections/{name}/events/tickets`: a stream ticket.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ticket": "kQ3m0x1c9yW5Zr2L7aV8pE4tB6nD0sJ1hU3gF5kM7oA", "expires_in": 60}))]
pub struct TicketOutput {
    /// Pass as `?ticket=` to the collection's stream, once.
    pub ticket: String,
    /// Seconds it stays valid (`events.ticket_ttl`).
    pub expires_in: u64,
}

/// One message of a change event stream (`text/event-stream`), its SSE
/// fields shown as JSON: `id:` (the position, for `Last-Event-ID`),
/// `event:` and `data:` (one line of JSON).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "42", "event": "updated", "data": {"_id": "a1", "_rev": 2, "_created_at": "2026-12-06T10:00:00.000Z",
    "_updated_at": "2026-12-06T10:00:01.000Z", "_owner": "ana", "title": "Milk"}}))]
pub struct ChangeEvent {
    /// The event's position in the collection's log, decimal.
    pub id: String,
    /// `created` (a document the caller can read appeared: created, or
    /// changed into its read scope), `updated`, `deleted` (deleted, or
    /// changed out of its read scope), or `reset` (refetch, then follow:
    /// the resume point is no longer kept, or the client was too slow and
    /// the stream closes).
    #[schema(pattern = "^(created|updated|deleted|reset)$")]
    pub event: String,
    /// `created`/`updated`: the document as `GET` returns it; `deleted`:
    /// `{"_id"}`; `reset`: `{"reason": "expired" | "slow"}`.
    #[schema(value_type = Object)]
    pub data: Value,
}
