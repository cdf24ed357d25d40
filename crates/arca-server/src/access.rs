//! Who may do what: the collection-level role checks and the `Scope` a
//! permitted request is confined to. Every data handler goes through
//! `authorize`, the one place where a `Scope` is made from an identity.

use std::sync::Arc;

use arca_auth::Identity;
use arca_core::{Action, Scope, Tenant};

use crate::error::{ApiError, ProblemKind};
use crate::state::{AppState, Collection};

/// Checks `action` on `coll` for the caller and returns its scope.
///
/// Admins pass every rule (never the tenant boundary); an absent rule is
/// denied to everyone else; `"public"` admits callers without a token,
/// `"*"` any authenticated caller. Without a token where one is needed:
/// 401; with one but without a fitting role: 403.
pub fn authorize(
    state: &AppState,
    caller: &Option<Arc<Identity>>,
    coll: &Collection,
    action: Action,
) -> Result<Scope, ApiError> {
    let settings = state.auth().settings();
    let rule = coll.def.access.rule(action);
    let Some(id) = caller else {
        return match rule {
            Some(r) if r.is_public() => Ok(Scope::tenant(Tenant::None)),
            _ => Err(ApiError::missing_token()),
        };
    };
    if settings.require_tenant && id.tenant == Tenant::None {
        return Err(ApiError::new(
            ProblemKind::Forbidden,
            format!(
                "this server requires a tenant: the token has no {} claim",
                settings.tenant_claim
            ),
        ));
    }
    let allowed = id.has_role(&settings.admin_role)
        || rule.is_some_and(|r| {
            r.roles
                .iter()
                .any(|role| role == "*" || role == "public" || id.has_role(role))
        });
    if !allowed {
        return Err(ApiError::new(
            ProblemKind::Forbidden,
            format!(
                "no role of the caller may {} in {}",
                verb(action),
                coll.name
            ),
        ));
    }
    Ok(Scope::tenant(id.tenant.clone()))
}

/// Collection definitions need the schema admin role, whatever the tenant.
pub fn require_schema_admin(
    state: &AppState,
    caller: &Option<Arc<Identity>>,
) -> Result<(), ApiError> {
    let role = state.auth().settings().schema_admin();
    match caller {
        None => Err(ApiError::missing_token()),
        Some(id) if id.has_role(role) => Ok(()),
        Some(_) => Err(ApiError::new(
            ProblemKind::Forbidden,
            format!("managing collections needs the {role} role"),
        )),
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}
