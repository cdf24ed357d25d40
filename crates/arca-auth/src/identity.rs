//! `Identity`: who is calling, built from a verified token's claims.

use arca_core::Tenant;
use serde_json::{Map, Value};

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The `sub` claim.
    pub sub: String,
    /// Roles from the configured roles claim.
    pub roles: Vec<String>,
    /// The tenant from the configured tenant claim (`Tenant::None` if absent).
    pub tenant: Tenant,
    /// All claims of the token, for `$claim` substitution.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

impl Identity {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// A claim by dotted path (`realm_access.roles`).
    pub fn claim(&self, path: &str) -> Option<&Value> {
        dotted(&self.claims, path)
    }
}

/// Reads `a.b.c` from nested objects; a top-level key that itself contains
/// dots (Auth0's namespaced claims such as `https://x.com/roles`) wins.
pub fn dotted<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Roles from a claim value: a list of strings, or one string.
pub fn roles_from(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The tenant from a claim value: absent or `null` is the untenanted space;
/// a string or an integer names a tenant; anything else is refused.
pub fn tenant_from(value: Option<&Value>) -> Result<Tenant, String> {
    match value {
        None | Some(Value::Null) => Ok(Tenant::None),
        Some(Value::String(s)) => Tenant::parse(s).map_err(|e| e.to_string()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Tenant::parse(&n.to_string()).map_err(|e| e.to_string())
        }
        Some(_) => Err("the tenant claim must be a string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn dotted_paths_read_nested_and_namespaced_claims() {
        let c = claims(json!({"realm_access": {"roles": ["a"]}, "https://x.io/roles": ["b"]}));
        assert_eq!(roles_from(dotted(&c, "realm_access.roles")), vec!["a"]);
        assert_eq!(roles_from(dotted(&c, "https://x.io/roles")), vec!["b"]);
        assert_eq!(dotted(&c, "realm_access.missing"), None);
    }

    #[test]
    fn a_single_string_is_one_role() {
        assert_eq!(roles_from(Some(&json!("admin"))), vec!["admin"]);
        assert_eq!(roles_from(Some(&json!(["a", 1, "b"]))), vec!["a", "b"]);
        assert!(roles_from(Some(&json!({"a": 1}))).is_empty());
    }

    #[test]
    fn tenant_claims_are_checked() {
        assert_eq!(tenant_from(None), Ok(Tenant::None));
        assert_eq!(tenant_from(Some(&json!("t1"))), Ok(Tenant::Id("t1".into())));
        assert_eq!(tenant_from(Some(&json!(42))), Ok(Tenant::Id("42".into())));
        assert!(tenant_from(Some(&json!(""))).is_err());
        assert!(tenant_from(Some(&json!(["t"]))).is_err());
    }
}
