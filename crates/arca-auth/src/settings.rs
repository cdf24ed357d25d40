//! The `[auth]` configuration section.

use arca_core::HumanDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Accepted audiences: one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single accepted `aud` value.
    One(String),
    /// Any of these `aud` values.
    Many(Vec<String>),
}

impl Audience {
    /// The accepted values as a list.
    pub fn values(&self) -> Vec<String> {
        match self {
            Audience::One(s) => vec![s.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// `[auth]`: where tokens come from and how claims map to identities.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// OIDC issuer; discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: Option<String>,
    /// JWKS URL override (skips discovery).
    pub jwks_url: Option<String>,
    /// Accepted `aud` value(s).
    pub audience: Option<Audience>,
    /// Claim holding roles (dotted path allowed).
    pub roles_claim: String,
    /// Claim holding the tenant (dotted path allowed).
    pub tenant_claim: String,
    /// Tokens without a tenant get 403 on data routes.
    pub require_tenant: bool,
    /// The role that bypasses access rules within its tenant.
    pub admin_role: String,
    /// The role that manages collection definitions (default: `admin_role`).
    pub schema_admin_role: Option<String>,
    /// Background JWKS refresh period.
    pub jwks_refresh: HumanDuration,
    /// Minimum interval between refetches caused by unknown `kid`s.
    pub jwks_min_refetch: HumanDuration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: HumanDuration,
    /// Verified tokens kept in memory to skip repeat signature checks.
    pub token_cache_size: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            jwks_url: None,
            audience: None,
            roles_claim: "roles".into(),
            tenant_claim: "tid".into(),
            require_tenant: false,
            admin_role: "admin".into(),
            schema_admin_role: None,
            jwks_refresh: HumanDuration(Duration::from_secs(600)),
            jwks_min_refetch: HumanDuration(Duration::from_secs(10)),
            leeway: HumanDuration(Duration::from_secs(60)),
            token_cache_size: 10_000,
        }
    }
}

impl AuthSettings {
    /// The role that manages collection definitions.
    pub fn schema_admin(&self) -> &str {
        self.schema_admin_role
            .as_deref()
            .unwrap_or(&self.admin_role)
    }
}
