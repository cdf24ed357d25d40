//! `POST /v1/collections/{name}/access/explain` (schema admins only): why
//! an action is allowed or not for the caller or for given claims, with
//! the effective filters. It runs the same role stage as the gateway
//! (`access::check_roles`), so the explanation and the enforcement always
//! agree.

use arca_auth::Identity;
use arca_auth::identity::{roles_from, tenant_from};
use arca_core::query::Claims;
use arca_core::{AccessRule, Action, Tenant};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use crate::access::schema_admin;
use crate::access::{CallerClaims, RoleCheck, admits, check_roles, verb};
use crate::error::ApiError;
use crate::extract::{Authenticated, JsonBytes, Target, parse_json};
use crate::respond::json;
use crate::state::AppState;

/// The explain route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/collections/{name}/access/explain", post(explain))
}

/// `{"$claim": NAME}` replaced by the claim's value, for display only (the
/// enforced filter substitutes in the parsed tree, where a value can never
/// become an operator). Returns whether a claim was missing.
fn substitute_for_display(v: &Value, claims: &CallerClaims<'_>, missing: &mut bool) -> Value {
    match v {
        Value::Object(m) => {
            if let (1, Some(Value::String(name))) = (m.len(), m.get("$claim")) {
                return match claims.claim(name) {
                    Some(Value::Null) | None => {
                        *missing = true;
                        Value::Null
                    }
                    Some(val) => json!({"$literal": val}),
                };
            }
            Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), substitute_for_display(x, claims, missing)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|x| substitute_for_display(x, claims, missing))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn parse_action(v: Option<&Value>) -> Result<Action, ApiError> {
    match v.and_then(Value::as_str) {
        Some("read") => Ok(Action::Read),
        Some("create") => Ok(Action::Create),
        Some("update") => Ok(Action::Update),
        Some("delete") => Ok(Action::Delete),
        _ => Err(ApiError::bad_request(
            "\"action\" is one of read, create, update, delete",
        )),
    }
}

/// An identity made from claims an admin supplies to explain.
fn identity_from_claims(
    state: &AppState,
    claims: &Map<String, Value>,
) -> Result<Identity, ApiError> {
    let settings = state.auth().settings();
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("explain")
        .to_owned();
    let roles = roles_from(arca_auth::identity::dotted(claims, &settings.roles_claim));
    let tenant = tenant_from(arca_auth::identity::dotted(claims, &settings.tenant_claim))
        .map_err(|e| ApiError::bad_request(format!("claims: {e}")))?;
    Ok(Identity {
        sub,
        roles,
        tenant,
        claims: claims.clone(),
        expires_at: 0,
    })
}

fn scope_json(
    rule: Option<&AccessRule>,
    claims: &CallerClaims<'_>,
    bypass: bool,
    denied: bool,
) -> Value {
    if denied {
        return json!({"filter": null, "matches_nothing": true});
    }
    if bypass {
        return json!({"filter": {}, "matches_nothing": false, "note": "the admin role bypasses access rules"});
    }
    let mut missing = false;
    let filter = rule
        .and_then(|r| r.filter.as_ref())
        .map(|f| substitute_for_display(f, claims, &mut missing))
        .unwrap_or_else(|| json!({}));
    json!({"filter": filter, "matches_nothing": missing})
}

/// `POST /v1/collections/{name}/access/explain` with `{"action": ...}` and,
/// for admins, `"claims"`: whether the action is allowed, why, and the
/// effective filters.
#[utoipa::path(post, operation_id = "explain_access", path = "/v1/collections/{name}/access/explain", tag = "access", params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    request_body(content = crate::wire::ExplainInput, content_type = "application/json"),
    responses((status = 200, description = "The decision", body = crate::wire::ExplainOutput),
              crate::wire::Guarded, crate::wire::Addressed, crate::wire::WithBody))]
pub(crate) async fn explain(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Target(coll): Target,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    // The rules and their filters are the schema admins' business: a
    // caller who could read them could learn how to get around them.
    schema_admin(state.auth().settings(), &caller)?;
    let body = parse_json(&bytes)?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body is an object with \"action\""))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "action" | "claims"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown key \"{k}\" (expected action, claims)"
        )));
    }
    let action = parse_action(obj.get("action"))?;
    let subject: Option<Identity> = match obj.get("claims") {
        None => Some(caller.as_ref().clone()),
        Some(Value::Object(claims)) => Some(identity_from_claims(&state, claims)?),
        Some(_) => return Err(ApiError::bad_request("\"claims\" is an object")),
    };
    let id = subject.as_ref();
    let claims = CallerClaims(id);
    let check = check_roles(state.auth().settings(), id, &coll.name, &coll.def, action);
    let (allowed, status, reason, bypass) = match &check {
        RoleCheck::Admin => (
            true,
            200,
            "the admin role bypasses access rules (never the tenant)".to_owned(),
            true,
        ),
        RoleCheck::Allowed(r) => (true, 200, r.clone(), false),
        RoleCheck::Denied(e, r) => (false, e.kind().describe().0.as_u16(), r.clone(), false),
    };
    let rule = coll.def.access.rule(action);
    let read_rule = coll.def.access.rule(Action::Read);
    let can_read = bypass || read_rule.is_some_and(|r| admits(r, id));
    let out = json!({
        "collection": coll.name.as_str(),
        "action": verb(action),
        "identity": id.map(|i| json!({"sub": i.sub, "roles": i.roles, "tenant": match &i.tenant {
            Tenant::None => Value::Null,
            Tenant::Id(t) => Value::String(t.clone()),
        }})),
        "allowed": allowed,
        "status": status,
        "reason": reason,
        "rule": rule.map(|r| json!({"roles": r.roles, "filter": r.filter})),
        "scope": scope_json(rule, &claims, bypass, !allowed),
        "read_scope": scope_json(read_rule, &claims, bypass, !allowed || !can_read),
        "note": "documents outside read_scope answer 404; readable documents outside scope answer 403 for create, update and delete; {\"$literal\": v} marks a substituted claim value",
    });
    Ok(json(StatusCode::OK, &out))
}
