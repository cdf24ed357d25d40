//! The OpenAPI 3.1 document. The static part is generated from the code:
//! each handler carries a `#[utoipa::path]` annotation and the payload
//! types derive `ToSchema`. The dynamic part is added per request from the
//! live catalogue, so the document follows collection changes without a
//! restart: for each collection, component schemas made from its JSON
//! Schema (plus the system fields) and concrete typed paths
//! (`/v1/collections/orders/documents` takes and returns `OrdersDocument`),
//! and the security scheme (OpenID Connect at `auth.issuer`, or HTTP bearer
//! in dev mode).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::gateway::Collection;
use crate::state::AppState;
use crate::wire::{
    AggregateInput, AggregateOutput, AnyDocument, ChangeEvent, CollectionInput, CollectionList,
    CollectionOutput, CountOutput, DocumentPage, ExplainInput, ExplainOutput, FieldErrorDoc,
    Problem, Status, TicketOutput,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Arca",
        description = "Self-hosted document API: collections validated by JSON Schema, MongoDB-style queries, OIDC bearer tokens, tenant segregation. Errors are application/problem+json (catalogue: docs/errors.md).",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        openapi_json,
        crate::types::types_ts,
        crate::collections::list,
        crate::collections::read,
        crate::collections::put,
        crate::collections::remove,
        crate::documents::list,
        crate::documents::create,
        crate::documents::read,
        crate::documents::replace,
        crate::documents::patch,
        crate::documents::remove,
        crate::documents::count,
        crate::documents::aggregate,
        crate::events::events,
        crate::events::ticket,
        crate::explain::explain,
        crate::files::upload,
        crate::files::list,
        crate::files::download,
        crate::files::metadata,
        crate::files::thumbnail,
        crate::files::remove,
        crate::files::create_link,
    ),
    components(schemas(Problem, FieldErrorDoc, Status, CollectionInput, CollectionOutput, CollectionList,
        AnyDocument, DocumentPage, CountOutput, AggregateInput, AggregateOutput, ExplainInput, ExplainOutput,
        TicketOutput, ChangeEvent, crate::files::FileOutput, crate::files::FilePage, crate::files::ImageOutput, crate::files::LinkOutput,
        crate::wire::MultipartFile)),
    tags(
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "collections", description = "Collection definitions (schema admins)"),
        (name = "documents", description = "Documents of any collection"),
        (name = "events", description = "Change events (Server-Sent Events) and stream tickets"),
        (name = "access", description = "Access rule debugging"),
        (name = "files", description = "Files and images: uploads, range downloads, thumbnails, signed links"),
    )
)]
struct ApiDoc;

/// The static part of the document, as JSON.
fn base() -> Value {
    static BASE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    BASE.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({})))
        .clone()
}

/// The documentation routes: `/openapi.json`, and the interactive `/docs`
/// page (Swagger UI, its assets embedded in the binary) unless
/// `docs.public` is false — a browser cannot send a bearer token to it.
pub fn router(public: bool) -> Router<AppState> {
    let router = Router::new().route("/openapi.json", get(openapi_json));
    if !public {
        return router;
    }
    let ui = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).try_it_out_enabled(true));
    router.merge(Router::from(ui).layer(axum::middleware::from_fn(docs_encoding)))
}

/// The largest `/docs` asset (the Swagger UI bundle is ~1.5 MB plain).
const MAX_DOCS_ASSET: usize = 16 << 20;

/// utoipa-swagger-ui sends its embedded assets gzip-compressed whatever the
/// request accepts (its handler does not negotiate). Every browser accepts
/// gzip; for a client that does not (`curl` without `--compressed`), the
/// asset is decompressed here, so it never gets a coding it did not ask for.
async fn docs_encoding(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use std::io::Read;
    let gzip_ok = accepts_gzip(req.headers().get_all(header::ACCEPT_ENCODING).iter());
    let res = next.run(req).await;
    let gzipped = res
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzipped {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    parts
        .headers
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip_ok {
        return Response::from_parts(parts, body);
    }
    let Ok(compressed) = axum::body::to_bytes(body, MAX_DOCS_ASSET).await else {
        return ApiError::internal("a /docs asset could not be read").into_response();
    };
    let mut plain = Vec::new();
    if let Err(e) = flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut plain) {
        return ApiError::internal(format!("a /docs asset is not valid gzip: {e}")).into_response();
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(plain))
}

/// The OpenAPI document of this server, with a schema and typed paths for
/// every collection.
#[utoipa::path(get, operation_id = "openapi", path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object,
            headers(("ETag" = String, description = "Weak tag of this version of the document"))),
        (status = 304, description = "If-None-Match names the current document"),
        (status = 401, description = "docs.public is false and no valid token was sent", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn openapi_json(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    visible(&state, &mut parts).await?;
    // Rendering the document costs ~0.5 ms of CPU with a few collections
    // and compressing it ~0.4 ms, and the route is public by default: both
    // are done once per catalogue generation, not once per request.
    let doc = state.derived(|| Rendered::of(&document(&state)));
    Ok(doc.respond(&parts.headers, "application/json"))
}

/// Whether the API description (`/openapi.json`, `/v1/types.ts`) may be
/// sent: always when `docs.public` (the default: the contract has these
/// routes ignore any `Authorization` header, so a stale token in a client
/// does not turn them into a 401; no token is even verified), else to a
/// caller with a valid token (401 otherwise).
pub(crate) async fn visible(
    state: &AppState,
    parts: &mut axum::http::request::Parts,
) -> Result<(), ApiError> {
    if !state.config().docs.public {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.identity.is_none() {
            return Err(ApiError::missing_token());
        }
    }
    Ok(())
}

/// A generated text as sent: plain and gzip-compressed, with a weak ETag.
pub(crate) struct Rendered {
    plain: Bytes,
    gzip: Bytes,
    /// A weak ETag shared by both encodings: a hash of the plain text,
    /// stable across restarts (`DefaultHasher::new` has fixed keys).
    etag: HeaderValue,
}

impl Rendered {
    fn of(doc: &Value) -> Self {
        Self::text(serde_json::to_vec(doc).unwrap_or_default())
    }

    /// `plain`, compressed once.
    pub(crate) fn text(plain: Vec<u8>) -> Self {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let gzip = gz
            .write_all(&plain)
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hasher::write(&mut hasher, &plain);
        let tag = format!("W/\"{:016x}\"", std::hash::Hasher::finish(&hasher));
        Self {
            plain: plain.into(),
            gzip: gzip.into(),
            etag: HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("W/\"0\"")),
        }
    }

    /// Whether an `If-None-Match` header names this rendering (weak
    /// comparison, as RFC 9110 wants for it; `*` matches too).
    fn matches<'a>(&self, if_none_match: impl Iterator<Item = &'a HeaderValue>) -> bool {
        fn opaque(t: &str) -> &str {
            t.strip_prefix("W/").unwrap_or(t)
        }
        let ours = opaque(self.etag.to_str().unwrap_or_default());
        if_none_match
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || opaque(t) == ours)
    }

    /// The answer to a GET with `headers`: 304 when `If-None-Match` names
    /// this rendering, else the text as `content_type`, gzip-encoded when
    /// accepted (already compressed: the compression layer leaves it).
    pub(crate) fn respond(&self, headers: &HeaderMap, content_type: &'static str) -> Response {
        if self.matches(headers.get_all(header::IF_NONE_MATCH).iter()) {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            res.headers_mut().insert(header::ETAG, self.etag.clone());
            res.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            return res;
        }
        let gzip = accepts_gzip(headers.get_all(header::ACCEPT_ENCODING).iter());
        let mut res = (
            [
                (header::CONTENT_TYPE, content_type),
                (header::VARY, "accept-encoding"),
            ],
            if gzip {
                self.gzip.clone()
            } else {
                self.plain.clone()
            },
        )
            .into_response();
        res.headers_mut().insert(header::ETAG, self.etag.clone());
        if gzip {
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        res
    }
}

/// Whether `Accept-Encoding` admits gzip: `gzip` or `*` with a non-zero
/// quality, and no `gzip;q=0`. (The compression layer negotiates for every
/// other response; this one is compressed ahead of time, so it decides
/// here. No header at all means identity, as the layer does.)
pub(crate) fn accepts_gzip<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    accepts_encoding(values, "gzip")
}

/// Whether `Accept-Encoding` admits the content coding `wanted` (named
/// or `*` with a non-zero quality, and not refused by name).
pub(crate) fn accepts_encoding<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    wanted: &str,
) -> bool {
    let mut named = None;
    let mut any = false;
    for value in values.filter_map(|v| v.to_str().ok()) {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case(wanted) {
                named = Some(q > 0.0);
            } else if coding == "*" {
                any = q > 0.0;
            }
        }
    }
    named.unwrap_or(any)
}

/// Builds the whole document for the current catalogue.
pub fn document(state: &AppState) -> Value {
    let mut doc = base();
    doc["openapi"] = json!("3.1.0");
    if state.config().metrics.listen.is_some()
        && let Some(paths) = doc["paths"].as_object_mut()
    {
        // Served on its own listener, not at this document's server.
        paths.remove("/metrics");
    }
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let bearer = json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token from the identity provider (or `arca token` in dev mode)."});
    let mut schemes = Map::new();
    schemes.insert("bearer".into(), bearer);
    let mut requirement = vec![json!({"bearer": []})];
    if let Some(issuer) = state.auth().issuer().filter(|_| !state.auth().is_dev()) {
        schemes.insert(
            "oidc".into(),
            json!({"type": "openIdConnect",
                   "openIdConnectUrl": format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))}),
        );
        requirement.insert(0, json!({"oidc": []}));
    }
    doc["components"]["securitySchemes"] = Value::Object(schemes);
    // Every /v1 operation takes a token (some also work without one, per
    // the collection's rules: the empty requirement says so).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            // `/v1/types.ts` is visible like this document (`docs.public`).
            if !path.starts_with("/v1/") || path == "/v1/types.ts" {
                continue;
            }
            if let Some(ops) = item.as_object_mut() {
                for op in ops.values_mut() {
                    let mut req = requirement.clone();
                    if path.contains("/documents")
                        || path.ends_with("/count")
                        || path.ends_with("/explain")
                        || path.contains("/events")
                    {
                        req.push(json!({}));
                    }
                    op["security"] = Value::Array(req);
                }
            }
        }
    }
    // OpenAPI 3.1 has no way to say what each message of a
    // `text/event-stream` is (3.2's `itemSchema` does): the extension
    // `x-event-schema` names the schema of one event.
    if let Some(stream) = doc
        .pointer_mut(
            "/paths/~1v1~1collections~1{name}~1events/get/responses/200/content/text~1event-stream",
        )
        .and_then(Value::as_object_mut)
    {
        stream.insert(
            "x-event-schema".into(),
            json!({"$ref": "#/components/schemas/ChangeEvent"}),
        );
    }
    for c in state.gateway().collections() {
        add_collection(&mut doc, &c, &requirement);
    }
    doc
}

/// `orders` -> `Orders`; `order_lines` -> `OrderLines`.
pub(crate) fn type_name(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn system_properties() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "_id".into(),
        json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "readOnly": true}),
    );
    m.insert(
        "_rev".into(),
        json!({"type": "integer", "minimum": 1, "readOnly": true}),
    );
    m.insert(
        "_created_at".into(),
        json!({"type": "string", "format": "date-time", "readOnly": true}),
    );
    m.insert(
        "_updated_at".into(),
        json!({"type": "string", "format": "date-time", "readOnly": true}),
    );
    m.insert(
        "_owner".into(),
        json!({"type": ["string", "null"], "readOnly": true}),
    );
    m
}

/// A copy of `schema` without the keywords a projection can break
/// (`required`, minimum counts): the shape of a listed, projected document.
fn relaxed(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "required" | "minProperties" | "minItems" | "$schema"
                    )
                })
                .map(|(k, v)| (k.clone(), relaxed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(relaxed).collect()),
        other => other.clone(),
    }
}

fn with_system_fields(schema: &Value, required: bool) -> Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.remove("$schema");
        let props = obj.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.extend(system_properties());
        }
        if required {
            let req = obj.entry("required").or_insert_with(|| json!([]));
            if let Some(r) = req.as_array_mut() {
                for f in ["_id", "_rev", "_created_at", "_updated_at", "_owner"] {
                    r.push(json!(f));
                }
            }
        }
    }
    s
}

fn problem(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The component schemas of a collection, named `<T>Input`,
/// `<T>Document`, `<T>Listed` and `<T>Patch` (`T` = `type_name`): what
/// `/openapi.json` lists and `/v1/types.ts` declares, made in one place.
pub(crate) struct CollectionSchemas {
    /// `T` of the names.
    pub type_name: String,
    /// A create's or a replace's body: the schema, and `_id` optional.
    pub input: Value,
    /// A stored document: the schema and the (required) system fields.
    pub document: Value,
    /// A listed document, which a projection may have cut.
    pub listed: Value,
    /// A PATCH body (`patch_schema`).
    pub patch: Value,
}

impl CollectionSchemas {
    /// The schemas of `c`.
    pub(crate) fn of(c: &Collection) -> Self {
        let name = c.name.as_str();
        let t = type_name(name);
        let source = c.def.schema.source();
        let mut input = source.clone();
        if let Some(o) = input.as_object_mut() {
            o.remove("$schema");
            // System fields a client may send back (ignored) or use (`_id`).
            if let Some(p) = o
                .entry("properties")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            {
                p.insert("_id".into(), client_id_schema());
            }
        }
        let mut patch = patch_schema(source);
        patch["description"] = json!(format!(
            "JSON Merge Patch (RFC 7396) of a {name} document: every field optional, null deletes it, nested objects are patches themselves; the result is validated against {t}Document's schema."
        ));
        Self {
            document: with_system_fields(source, true),
            listed: with_system_fields(&relaxed(source), false),
            input,
            patch,
            type_name: t,
        }
    }
}

/// `_id` as a client may send it.
fn client_id_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"})
}

/// The schema of a JSON Merge Patch (RFC 7396) of documents of `schema`
/// (an object schema): every field optional and nullable (`null` deletes
/// it), keeping the field's own schema otherwise; a field that is an
/// object is a patch itself (a patch merges into it), while any other
/// value, an array included, is replaced whole and so keeps its schema
/// whole. Keywords that constrain an object as a whole (`required`,
/// property counts, `allOf`/`anyOf`/`oneOf`/`not`) are left out: the
/// server validates the patched document against the full schema.
pub(crate) fn patch_schema(schema: &Value) -> Value {
    let mut patch = patch_object(schema);
    if let Some(p) = patch.as_object_mut() {
        p.insert("type".into(), json!("object"));
        if let Some(props) = p
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            props.insert("_id".into(), client_id_schema());
        }
    }
    patch
}

/// Whether a subschema describes objects (a `type` naming `object`, or
/// object keywords without a `type`).
fn is_object_schema(schema: &Value) -> bool {
    let Some(o) = schema.as_object() else {
        return false;
    };
    match o.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => o.contains_key("properties") || o.contains_key("additionalProperties"),
    }
}

/// An object subschema as a patch (see `patch_schema`).
fn patch_object(schema: &Value) -> Value {
    let Some(o) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for k in ["type", "title", "description"] {
        if let Some(v) = o.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    for k in ["properties", "patternProperties"] {
        if let Some(Value::Object(props)) = o.get(k) {
            let patched: Map<String, Value> = props
                .iter()
                .map(|(name, sub)| (name.clone(), nullable(patch_value(sub))))
                .collect();
            out.insert(k.into(), Value::Object(patched));
        }
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(false)) => {
            out.insert("additionalProperties".into(), json!(false));
        }
        Some(sub @ Value::Object(_)) => {
            out.insert("additionalProperties".into(), nullable(patch_value(sub)));
        }
        _ => {}
    }
    Value::Object(out)
}

/// A field's value in a patch: a patch itself if it is an object, else
/// its own schema.
fn patch_value(schema: &Value) -> Value {
    if is_object_schema(schema) {
        patch_object(schema)
    } else {
        schema.clone()
    }
}

/// `schema`, or `null`.
fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn add_collection(doc: &mut Value, c: &Collection, requirement: &[Value]) {
    let name = c.name.as_str();
    let CollectionSchemas {
        type_name: t,
        input,
        document,
        listed,
        patch,
    } = CollectionSchemas::of(c);
    let schemas = &mut doc["components"]["schemas"];
    schemas[format!("{t}Document")] = document;
    schemas[format!("{t}Listed")] = listed;
    schemas[format!("{t}Input")] = input;
    schemas[format!("{t}Patch")] = patch;
    let doc_ref = json!({"$ref": format!("#/components/schemas/{t}Document")});
    let listed_ref = json!({"$ref": format!("#/components/schemas/{t}Listed")});
    let input_ref = json!({"$ref": format!("#/components/schemas/{t}Input")});
    let patch_ref = json!({"$ref": format!("#/components/schemas/{t}Patch")});
    let mut security: Vec<Value> = requirement.to_vec();
    security.push(json!({}));
    let etag =
        json!({"ETag": {"description": "The revision: \"<_rev>\"", "schema": {"type": "string"}}});
    let common = |ok: Value| {
        let mut r = json!({
            "400": problem("Malformed request"),
            "401": problem("Missing or invalid token"),
            "403": problem("Not allowed by the collection's rules"),
            "404": problem("No such collection or document (or not readable by the caller)"),
            "503": problem("Store unavailable or request timed out"),
        });
        if let (Some(r), Some(ok)) = (r.as_object_mut(), ok.as_object()) {
            r.extend(ok.clone());
        }
        r
    };
    let writes = |ok: Value| {
        let mut r = common(ok);
        r["409"] = problem("Duplicate _id or unique index value");
        r["412"] = problem("If-Match does not match the current revision, or If-None-Match does");
        r["408"] = problem("The body did not arrive within server.request_timeout");
        r["413"] = problem("Body over server.max_body_bytes");
        r["415"] = problem("Body is not JSON, or compressed (Content-Encoding)");
        r["422"] = problem("The document does not fit the collection");
        r
    };
    let mut create_responses = writes(json!({"201": {"description": "Created",
        "headers": {"ETag": etag["ETag"], "Location": {"schema": {"type": "string"}},
            "Idempotent-Replayed": {"description": "`true` on the replay of a request sent before with the same Idempotency-Key",
                "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": doc_ref}}}}));
    create_responses["409"] = problem(
        "Duplicate _id or unique index value; or the first request with the same Idempotency-Key is still running",
    );
    create_responses["422"] = problem(
        "The document does not fit the collection; or the Idempotency-Key was used for another request",
    );
    let id_param = json!({"name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}});
    let query_params = json!([
        {"name": "filter", "in": "query", "description": "MongoDB-style filter (JSON)", "schema": {"type": "string"}},
        {"name": "sort", "in": "query", "description": "Comma-separated fields, `-` for descending", "schema": {"type": "string"}},
        {"name": "fields", "in": "query", "description": "Inclusion projection (comma-separated paths)", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}},
        {"name": "after", "in": "query", "description": "The `next` cursor of the previous page", "schema": {"type": "string"}},
    ]);
    let base = format!("/v1/collections/{name}");
    let tag = json!([name]);
    let paths = &mut doc["paths"];
    paths[format!("{base}/documents")] = json!({
        "get": {"tags": tag, "summary": format!("List {name} documents"), "operationId": format!("list_{name}"),
                "security": security, "parameters": query_params,
                "responses": common(json!({"200": {"description": "A page of documents",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["items", "next"],
                        "properties": {"items": {"type": "array", "items": listed_ref}, "next": {"type": ["string", "null"]}}}}}}}))},
        "post": {"tags": tag, "summary": format!("Create a {name} document"), "operationId": format!("create_{name}"),
                 "security": security,
                 "parameters": [{"name": "Idempotency-Key", "in": "header",
                     "description": crate::wire::IDEMPOTENCY_KEY_DOC,
                     "schema": {"type": "string", "pattern": crate::wire::IDEMPOTENCY_KEY_PATTERN}}],
                 "requestBody": {"required": true, "content": {"application/json": {"schema": input_ref}}},
                 "responses": create_responses},
    });
    let ok_doc = |d: &str| json!({"200": {"description": d, "headers": etag, "content": {"application/json": {"schema": doc_ref}}}});
    let conditions = json!([
        {"name": "If-Match", "in": "header", "description": "Required revision (`\"N\"` or `*`)", "schema": {"type": "string"}},
        {"name": "If-None-Match", "in": "header",
         "description": "Refuse the write (412) if the current revision is one of these; `*`: if the document exists",
         "schema": {"type": "string"}},
    ]);
    let mut get_ok = ok_doc("The document");
    get_ok["304"] = json!({"description": "Not modified (If-None-Match)", "headers": etag});
    paths[format!("{base}/documents/{{id}}")] = json!({
        "parameters": [id_param],
        "get": {"tags": tag, "summary": format!("Read a {name} document"), "operationId": format!("read_{name}"),
                "security": security,
                "parameters": [{"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
                "responses": common(get_ok)},
        "put": {"tags": tag, "summary": format!("Replace a {name} document"), "operationId": format!("replace_{name}"),
                "security": security, "parameters": conditions,
                "requestBody": {"required": true, "content": {"application/json": {"schema": input_ref}}},
                "responses": writes(ok_doc("The new revision"))},
        "patch": {"tags": tag, "summary": format!("Merge-patch a {name} document"), "operationId": format!("patch_{name}"),
                  "security": security, "parameters": conditions,
                  "requestBody": {"required": true, "content": {
                      "application/merge-patch+json": {"schema": patch_ref}, "application/json": {"schema": patch_ref}}},
                  "responses": writes(ok_doc("The new revision"))},
        "delete": {"tags": tag, "summary": format!("Delete a {name} document"), "operationId": format!("delete_{name}"),
                   "security": security, "parameters": conditions,
                   "responses": writes(json!({"204": {"description": "Deleted"}}))},
    });
    paths[format!("{base}/count")] = json!({
        "get": {"tags": tag, "summary": format!("Count {name} documents"), "operationId": format!("count_{name}"),
                "security": security,
                "parameters": [{"name": "filter", "in": "query", "schema": {"type": "string"}}],
                "responses": common(json!({"200": {"description": "The count",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountOutput"}}}}}))},
    });
    let mut aggregate_responses = common(json!({"200": {"description": "The results",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AggregateOutput"}}}}}));
    aggregate_responses["408"] = problem("The body did not arrive within server.request_timeout");
    aggregate_responses["413"] = problem("Body over server.max_body_bytes");
    aggregate_responses["415"] = problem("Body is not JSON, or compressed (Content-Encoding)");
    paths[format!("{base}/aggregate")] = json!({
        "post": {"tags": tag, "summary": format!("Aggregate {name} documents"), "operationId": format!("aggregate_{name}"),
                 "description": "A pipeline of the allowed stages (docs/aggregate.md); the caller's tenant and read rule apply before the first stage and to every $lookup.",
                 "security": security,
                 "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AggregateInput"}}}},
                 "responses": aggregate_responses},
    });
    add_events(doc, name, &t, &security, &common);
    if let Some(tags) = doc["tags"].as_array_mut() {
        tags.push(json!({"name": name, "description": format!("The {name} collection")}));
    }
}

/// The collection's typed change stream and tickets: `{T}Event`, one
/// message of the stream, with the collection's document as its data.
fn add_events(
    doc: &mut Value,
    name: &str,
    t: &str,
    security: &[Value],
    common: &dyn Fn(Value) -> Value,
) {
    doc["components"]["schemas"][format!("{t}Event")] = json!({
        "type": "object",
        "description": format!("One message of the {name} change stream (its SSE fields as JSON): `created`/`updated` carry the document, `deleted` its `_id`, `reset` a reason (refetch, then follow)."),
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The position, for Last-Event-ID"},
            "event": {"type": "string", "enum": ["created", "updated", "deleted", "reset"]},
            "data": {"oneOf": [
                {"$ref": format!("#/components/schemas/{t}Document")},
                {"type": "object", "required": ["_id"], "properties": {"_id": {"type": "string"}}, "additionalProperties": false},
                {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string", "enum": ["expired", "slow"]}}},
            ]},
        },
    });
    let tag = json!([name]);
    let params = json!([
        {"name": "ticket", "in": "query", "description": "A stream ticket (single use), for browsers' EventSource", "schema": {"type": "string"}},
        {"name": "last_event_id", "in": "query", "description": "Resume after this event id (the header wins)", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        {"name": "Last-Event-ID", "in": "header", "description": "Resume after this event id", "schema": {"type": "string"}},
    ]);
    let mut stream = common(json!({"200": {
    "description": format!("The {name} change stream: events as the caller may read them"),
    "content": {"text/event-stream": {
        "schema": {"type": "string"},
        "x-event-schema": {"$ref": format!("#/components/schemas/{t}Event")},
    }}}}));
    stream["503"] = problem("events.max_subscribers streams are open, or the store is unavailable");
    doc["paths"][format!("/v1/collections/{name}/events")] = json!({
        "get": {"tags": tag, "summary": format!("Follow changes to {name} documents (Server-Sent Events)"),
                "operationId": format!("events_{name}"), "security": security, "parameters": params,
                "responses": stream},
    });
    doc["paths"][format!("/v1/collections/{name}/events/tickets")] = json!({
        "post": {"tags": tag, "summary": format!("A single-use ticket for the {name} stream (EventSource)"),
                 "operationId": format!("events_ticket_{name}"), "security": security,
                 "responses": common(json!({"201": {"description": "The ticket",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TicketOutput"}}}}}))},
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_pascal_case() {
        assert_eq!(type_name("orders"), "Orders");
        assert_eq!(type_name("order_lines"), "OrderLines");
        assert_eq!(type_name("a1_b2"), "A1B2");
    }

    #[test]
    fn relaxed_schemas_drop_what_projection_breaks() {
        let s = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "object", "required": ["b"], "minProperties": 1}}});
        assert_eq!(
            relaxed(&s),
            json!({"type": "object", "properties": {"a": {"type": "object"}}})
        );
    }

    #[test]
    fn patches_make_every_field_optional_and_nullable_and_keep_its_type() {
        let s = json!({"type": "object", "required": ["a", "o"], "additionalProperties": false,
            "minProperties": 1, "anyOf": [{"required": ["a"]}],
            "properties": {
                "a": {"type": "string", "minLength": 1},
                "o": {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
                "l": {"type": "array", "items": {"type": "object", "required": ["y"]}}}});
        let p = patch_schema(&s);
        let nothing = json!({"type": "null"});
        assert_eq!(
            p,
            json!({"type": "object", "additionalProperties": false, "properties": {
                "a": {"anyOf": [{"type": "string", "minLength": 1}, nothing]},
                "o": {"anyOf": [{"type": "object", "properties": {"x": {"anyOf": [{"type": "integer"}, nothing]}}}, nothing]},
                "l": {"anyOf": [{"type": "array", "items": {"type": "object", "required": ["y"]}}, nothing]},
                "_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}})
        );
        // Open objects stay open: extra fields nullable too.
        let open =
            patch_schema(&json!({"type": "object", "additionalProperties": {"type": "number"}}));
        assert_eq!(
            open["additionalProperties"],
            json!({"anyOf": [{"type": "number"}, nothing]})
        );
    }

    fn accepts(values: &[&str]) -> bool {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).expect("value"))
            .collect();
        accepts_gzip(values.iter())
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["br, GZIP;q=0.5"]));
        assert!(accepts(&["deflate", "gzip"]));
        assert!(accepts(&["*"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["gzip; q=0.0, *"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(!accepts(&["br"]));
    }
}
