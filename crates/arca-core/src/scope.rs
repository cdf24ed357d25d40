//! `Scope`: the part of the data a request may touch. Every store call takes
//! one, so an unscoped query does not type-check; this module is the only
//! place that builds one.

use crate::name::Tenant;

/// The tenant boundary (and, with access rules, the row filter) that every
/// store operation is confined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    tenant: Tenant,
}

impl Scope {
    /// The scope of a caller in `tenant`.
    pub fn tenant(tenant: Tenant) -> Self {
        Self { tenant }
    }

    /// The tenant this scope is confined to.
    pub fn tenant_key(&self) -> &str {
        self.tenant.key()
    }
}
