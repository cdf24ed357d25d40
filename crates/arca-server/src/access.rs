//! Who may do what: the access rules of a collection applied to a caller.
//! This module decides; it touches no data. `decide` gives, for an action,
//! the caller's tenant, the `read` rule's filter (what the caller can see)
//! and the action's own filter (what a created, changed or deleted document
//! must match), claims substituted; the gateway turns that into the scoped
//! handle handlers use. `schema_admin` is the proof a caller may manage
//! collection definitions.
//!
//! Order of outcomes, as the contract's "who gets what" says: no role for
//! the action -> 403 (401 without a token unless the action is public);
//! outside the read scope -> 404; readable but outside the action's filter
//! -> 403.

use arca_auth::{AuthSettings, Identity};
use arca_core::query::{Claims, Filter};
use arca_core::{AccessRule, Action, CollectionDef, CollectionName, Tenant};
use serde_json::Value;

use crate::error::{ApiError, ProblemKind};

/// A caller's claims for `$claim` substitution (none without a token).
pub struct CallerClaims<'a>(pub Option<&'a Identity>);

impl Claims for CallerClaims<'_> {
    fn claim(&self, name: &str) -> Option<Value> {
        self.0.and_then(|id| id.claim(name).cloned())
    }
}

/// Whether `rule`'s roles admit the caller (`public`, `*`, or a role).
pub fn admits(rule: &AccessRule, id: Option<&Identity>) -> bool {
    rule.is_public() || id.is_some_and(|id| rule.roles.iter().any(|r| r == "*" || id.has_role(r)))
}

/// The action's name as the contract writes it.
pub fn verb(action: Action) -> &'static str {
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

/// The outcome of the role stage, with its reason (shared by `decide` and
/// the explain endpoint so both always agree).
pub enum RoleCheck {
    /// The admin role: every rule is bypassed (never the tenant).
    Admin,
    /// The action's roles admit the caller; why.
    Allowed(String),
    /// Refused: the error to answer, and why.
    Denied(ApiError, String),
}

/// The role stage of `action` on the collection `name` for the caller.
pub fn check_roles(
    settings: &AuthSettings,
    id: Option<&Identity>,
    name: &CollectionName,
    def: &CollectionDef,
    action: Action,
) -> RoleCheck {
    let rule = def.access.rule(action);
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
            let why = format!("{name} has no {} rule: only admins may", verb(action));
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

/// What a permitted caller may touch for one action.
pub struct Decision {
    /// The caller's tenant (the untenanted space without a token or claim).
    pub tenant: Tenant,
    /// The `read` rule's filter: what the caller can see (404 outside).
    pub read: Filter,
    /// The action's own filter (for `read`, the same as `read`).
    pub action: Filter,
}

/// Checks `action` on the collection for the caller: the role stage, then
/// the filters of the read rule and of the action's rule.
pub fn decide(
    settings: &AuthSettings,
    id: Option<&Identity>,
    name: &CollectionName,
    def: &CollectionDef,
    action: Action,
) -> Result<Decision, ApiError> {
    let tenant = id.map(|i| i.tenant.clone()).unwrap_or(Tenant::None);
    match check_roles(settings, id, name, def, action) {
        RoleCheck::Denied(e, _) => Err(e),
        // Admins pass every rule, never the tenant boundary.
        RoleCheck::Admin => Ok(Decision {
            tenant,
            read: Filter::all(),
            action: Filter::all(),
        }),
        RoleCheck::Allowed(_) => {
            let read = match def.access.rule(Action::Read) {
                Some(r) if admits(r, id) => rule_filter(r, id)?,
                _ => Filter::nothing(),
            };
            let action_filter = match (action, def.access.rule(action)) {
                (Action::Read, _) => read.clone(),
                (_, Some(r)) => rule_filter(r, id)?,
                (_, None) => Filter::nothing(),
            };
            Ok(Decision {
                tenant,
                read,
                action: action_filter,
            })
        }
    }
}

/// Proof that the caller holds the schema admin role: the gateway's
/// catalogue changes take one, so no route can change definitions without
/// the check.
pub struct SchemaAdmin(());

/// Collection definitions need the schema admin role, whatever the tenant.
pub fn schema_admin(settings: &AuthSettings, caller: &Identity) -> Result<SchemaAdmin, ApiError> {
    let role = settings.schema_admin();
    if caller.has_role(role) {
        Ok(SchemaAdmin(()))
    } else {
        Err(ApiError::new(
            ProblemKind::Forbidden,
            format!("managing collections needs the {role} role"),
        ))
    }
}
