//! `Scope`: the part of the data a request may touch: a tenant and a row
//! filter (the access rule's, with claims substituted). Every store call
//! takes one, so an unscoped query does not type-check.
//!
//! Who may make one is part of the security model, so the constructors say
//! who they are for, and `clippy.toml` forbids calling them anywhere else
//! (`disallowed-methods`): the server's gateway makes scopes after the
//! access check (`Scope::authorized`), and operator tools that act with the
//! store's own authority (`arca import`, `arca copy`, engine test suites)
//! make whole-tenant scopes (`Scope::operator`). Each permitted call site
//! carries an `#[allow(clippy::disallowed_methods)]` with the reason.

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
    /// The documents of `tenant` that match `filter`, for a caller whose
    /// access was checked. Only the server's gateway calls this.
    pub fn authorized(tenant: Tenant, filter: Filter) -> Self {
        Self { tenant, filter }
    }

    /// The whole of `tenant`'s data, for operator tools that run with the
    /// store's own authority (bulk import, copying a store, engine tests),
    /// never on behalf of a request.
    pub fn operator(tenant: Tenant) -> Self {
        Self {
            tenant,
            filter: Filter::all(),
        }
    }

    /// The tenant this scope is confined to.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The storage key of the tenant (`""` for the untenanted space).
    pub fn tenant_key(&self) -> &str {
        self.tenant.key()
    }

    /// The row filter (matches everything when there is none).
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}
