//! Who may do what: the access rules of a collection applied to a caller.
//! `authorize` is the one place where a request's `Scope` is made: the
//! caller's tenant, and the `read` rule's filter with the caller's claims
//! substituted. Handlers get the scope (what the caller may see) and the
//! action's own filter (what a created, changed or deleted document must
//! match) and never build either themselves.
//!
//! Order of outcomes, as the contract's "who gets what" says: no role for
//! the action -> 403 (401 without a token unless the action is public);
//! outside the read scope -> 404; readable but outside the action's filter
//! -> 403.

use std::sync::Arc;

use arca_auth::Identity;
use arca_auth::identity::{roles_from, tenant_from};
use arca_core::query::{Claims, Filter};
use arca_core::{AccessRule, Action, Scope, Tenant};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ProblemKind};
use crate::extract::{Caller, JsonBytes, PathParams, parse_json};
use crate::respond::json;
use crate::state::{AppState, Collection};

/// What a permitted request may touch.
pub struct Grant {
    /// Tenant ∧ `read` filter: what the caller can see (404 outside).
    pub read: Scope,
    /// The action's own filter (for `read`, the same as the scope's).
    pub action: Filter,
}

/// A caller's claims for `$claim` substitution (none without a token).
struct CallerClaims<'a>(Option<&'a Identity>);

impl Claims for CallerClaims<'_> {
    fn claim(&self, name: &str) -> Option<Value> {
        self.0.and_then(|id| id.claim(name).cloned())
    }
}

fn admits(rule: &AccessRule, id: Option<&Identity>) -> bool {
    rule.is_public() || id.is_some_and(|id| rule.roles.iter().any(|r| r == "*" || id.has_role(r)))
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}

/// The filter of `rule` for the caller: claims substituted; a missing
/// claim makes it match nothing.
fn rule_filter(rule: &AccessRule, id: Option<&Identity>) -> Result<Filter, ApiError> {
    match &rule.filter {
        None => Ok(Filter::all()),
        Some(f) => Filter::parse_with_claims(f, &CallerClaims(id))
            .map_err(|e| ApiError::internal(format!("stored access filter no longer parses: {e}"))),
    }
}

/// The outcome of the role stage, with its reason (shared by `authorize`
/// and the explain endpoint so both always agree).
enum RoleCheck {
    Admin,
    Allowed(String),
    Denied(ApiError, String),
}

fn check_roles(
    state: &AppState,
    id: Option<&Identity>,
    coll: &Collection,
    action: Action,
) -> RoleCheck {
    let settings = state.auth().settings();
    let rule = coll.def.access.rule(action);
    let Some(identity) = id else {
        return match rule {
            Some(r) if r.is_public() => {
                RoleCheck::Allowed(format!("the {} rule is public", verb(action)))
            }
            _ => RoleCheck::Denied(
                ApiError::missing_token(),
                format!("no token, and the {} rule is not public", verb(action)),
            ),
        };
    };
    if settings.require_tenant && identity.tenant == Tenant::None {
        let why = format!(
            "auth.require_tenant is set and the token has no {} claim",
            settings.tenant_claim
        );
        return RoleCheck::Denied(ApiError::new(ProblemKind::Forbidden, why.clone()), why);
    }
    if identity.has_role(&settings.admin_role) {
        return RoleCheck::Admin;
    }
    match rule {
        None => {
            let why = format!(
                "{} has no {} rule: only admins may",
                coll.name,
                verb(action)
            );
            RoleCheck::Denied(ApiError::new(ProblemKind::Forbidden, why.clone()), why)
        }
        Some(r) if admits(r, id) => {
            RoleCheck::Allowed(format!("the caller's roles fit the {} rule", verb(action)))
        }
        Some(r) => {
            let why = format!(
                "none of the caller's roles is in the {} rule's roles {:?}",
                verb(action),
                r.roles
            );
            RoleCheck::Denied(ApiError::new(ProblemKind::Forbidden, why.clone()), why)
        }
    }
}

/// Checks `action` on `coll` for the caller and returns what it may touch.
pub fn authorize(
    state: &AppState,
    caller: &Option<Arc<Identity>>,
    coll: &Collection,
    action: Action,
) -> Result<Grant, ApiError> {
    let id = caller.as_deref();
    let tenant = id.map(|i| i.tenant.clone()).unwrap_or(Tenant::None);
    match check_roles(state, id, coll, action) {
        RoleCheck::Denied(e, _) => Err(e),
        // Admins pass every rule, never the tenant boundary.
        RoleCheck::Admin => Ok(Grant {
            read: Scope::tenant(tenant),
            action: Filter::all(),
        }),
        RoleCheck::Allowed(_) => {
            let read = match coll.def.access.rule(Action::Read) {
                Some(r) if admits(r, id) => rule_filter(r, id)?,
                _ => Filter::nothing(),
            };
            let action_filter = match (action, coll.def.access.rule(action)) {
                (Action::Read, _) => read.clone(),
                (_, Some(r)) => rule_filter(r, id)?,
                (_, None) => Filter::nothing(),
            };
            Ok(Grant {
                read: Scope::filtered(tenant, read),
                action: action_filter,
            })
        }
    }
}

/// Collection definitions need the schema admin role, whatever the tenant.
pub fn require_schema_admin(state: &AppState, caller: &Identity) -> Result<(), ApiError> {
    let role = state.auth().settings().schema_admin();
    if caller.has_role(role) {
        Ok(())
    } else {
        Err(ApiError::new(
            ProblemKind::Forbidden,
            format!("managing collections needs the {role} role"),
        ))
    }
}

/// The access routes.
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
    request_body(content = crate::openapi::ExplainInput, content_type = "application/json"),
    responses((status = 200, description = "The decision", body = crate::openapi::ExplainOutput),
              crate::openapi::Guarded, crate::openapi::Addressed, crate::openapi::WithBody))]
pub(crate) async fn explain(
    State(state): State<AppState>,
    Caller(caller): Caller,
    p: PathParams,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, ApiError> {
    let name = arca_core::CollectionName::parse(&p[0])
        .map_err(|_| ApiError::new(ProblemKind::CollectionNotFound, "no such collection"))?;
    let coll = state.collection(&name)?;
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
        None => caller.as_deref().cloned(),
        Some(Value::Object(claims)) => {
            let admin = state.auth().settings().admin_role.clone();
            if !caller.as_ref().is_some_and(|c| c.has_role(&admin)) {
                return Err(ApiError::new(
                    ProblemKind::Forbidden,
                    "only admins may explain for other claims",
                ));
            }
            Some(identity_from_claims(&state, claims)?)
        }
        Some(_) => return Err(ApiError::bad_request("\"claims\" is an object")),
    };
    let id = subject.as_ref();
    let claims = CallerClaims(id);
    let check = check_roles(&state, id, &coll, action);
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
