//! `Scope`: the part of the data a request may touch: a tenant and a row
//! filter (the access rule's, with claims substituted). Every store call
//! takes one, so an unscoped query does not type-check; the server builds
//! scopes in exactly one place (its access module).

use crate::name::Tenant;
use crate::query::Filter;

/// The tenant boundary and row filter that every store operation is
/// confined to.
#[derive(Debug, Clone)]
pub struct Scope {
    tenant: Tenant,
    filter: Filter,
}

impl Scope {
    /// The whole of `tenant`'s data.
    pub fn tenant(tenant: Tenant) -> Self {
        Self {
            tenant,
            filter: Filter::all(),
        }
    }

    /// The documents of `tenant` that match `filter`.
    pub fn filtered(tenant: Tenant, filter: Filter) -> Self {
        Self { tenant, filter }
    }

    /// The tenant this scope is confined to.
    pub fn tenant_key(&self) -> &str {
        self.tenant.key()
    }

    /// The row filter (matches everything when there is none).
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}
