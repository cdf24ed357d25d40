//! The one road to tenant data. The store handle the server uses lives
//! here and nowhere else: handlers ask `Gateway::authorize` for a
//! `Grant<A>` (the access check, then a handle owning the `Scope` and the
//! action's rule, whose methods run the rule check themselves), and change
//! collection definitions only with the proof of the schema admin role.
//! Every store call goes through `Timed`, so every operation is measured.
//! New data paths (aggregation, files, events) are new methods here, never
//! a second road to the store.
//!
//! Files: `catalog` (the compiled collections, kept in step with the store
//! across processes), `grant` (the per-action handles), `files` (the files
//! handle: tenant, owner and link checks, the image pool, thumbnails made
//! once), `links` (signing and verifying file links), `stamp` (ids and
//! times decided before any engine sees a write), `timed` (the measuring
//! store), `events` (the event log, what a grant sees of a change, the
//! wake-up after each committed write, stream tickets).

mod catalog;
mod events;
mod files;
mod grant;
pub mod limits;
pub mod links;
pub mod stamp;
mod timed;

use std::marker::PhantomData;
use std::sync::Arc;

use arca_auth::{AuthSettings, Identity};
use arca_core::pipeline::Pipeline;
use arca_core::{Action, CollectionDef, CollectionName, Scope};
use arca_store::{
    CollectionSpec, IdempotencyBegin, IdempotencyClaim, IdempotencyKey, LookupScopes, PutOutcome,
    Store, StoreError, StoredResponse,
};

pub use catalog::Collection;
pub use events::{Change, EventLog, LogPage, Seen, Wakeups, other_identity};
pub use files::{FilesGrant, Received, Upload};
pub use grant::{Act, Create, Delete, Grant, Read, Update};
pub use links::LinkParams;

use crate::access::{self, SchemaAdmin};
use crate::error::ApiError;
use catalog::Catalog;
use limits::{CallerKey, HeavyReads, Limits, Offload};

/// Who is asking: the verified token's identity and the client's address.
/// (Its extractor is in `extract`.) A token that was sent and is invalid
/// never makes one: it is 401 on every route that takes a caller.
#[derive(Clone)]
pub struct Caller {
    /// The verified token's identity (`None` without a token).
    pub identity: Option<Arc<Identity>>,
    /// The client's address (the peer, or the forwarded client behind a
    /// trusted proxy), when known: callers without a token are counted by
    /// it.
    pub addr: Option<std::net::IpAddr>,
}

/// What every grant shares: the limits and their bookkeeping.
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) heavy: Arc<HeavyReads>,
    pub(crate) offload: Offload,
    /// Told after each committed document write (the place events attach).
    pub(crate) wakeups: Arc<Wakeups>,
}

/// The store, its catalogue, and the rules that say who reaches what.
pub struct Gateway {
    store: Arc<dyn Store>,
    catalog: Catalog,
    settings: AuthSettings,
    shared: Arc<Shared>,
    /// The key cursors are signed with, read from the store once.
    cursor_key: tokio::sync::OnceCell<[u8; 32]>,
    /// What files grants share (image pool, thumbnails in flight, link
    /// keys).
    files: Arc<files::FilesShared>,
}

impl Gateway {
    /// Wraps `store` (every call timed) and loads the catalogue. A store
    /// out of reach is not fatal: the catalogue loads when it answers
    /// (`refresh_catalog`), and until then readiness is 503 and data
    /// routes answer 503.
    pub async fn open(
        store: Arc<dyn Store>,
        settings: AuthSettings,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let gateway = Self {
            store: Arc::new(timed::Timed(store)),
            catalog: Catalog::default(),
            settings,
            shared: Arc::new(Shared {
                limits,
                heavy: Arc::default(),
                offload: Offload::default(),
                wakeups: Arc::default(),
            }),
            cursor_key: tokio::sync::OnceCell::new(),
            files: Arc::default(),
        };
        match gateway.catalog.reload(gateway.store.as_ref()).await {
            Ok(()) => {}
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "the store does not answer; collections load when it does");
            }
            Err(e) => return Err(e),
        }
        Ok(gateway)
    }

    /// Whether the collection definitions were read (`/readyz`).
    pub fn catalog_loaded(&self) -> bool {
        self.catalog.is_loaded()
    }

    /// Checks `A` on `coll` for the caller and returns its handle. This is
    /// the one place a request's `Scope` is made.
    pub fn authorize<A: Act>(
        &self,
        caller: &Caller,
        coll: &Arc<Collection>,
    ) -> Result<Grant<A>, ApiError> {
        let id = caller.identity.as_deref();
        let decision = access::decide(&self.settings, id, &coll.name, &coll.def, A::ACTION)?;
        // The scope is made after the access check, from its decision.
        #[allow(clippy::disallowed_methods)]
        let scope = Scope::authorized(decision.tenant, decision.read);
        Ok(Grant {
            store: self.store.clone(),
            coll: coll.clone(),
            scope,
            rule: decision.action,
            key: CallerKey::of(id, caller.addr),
            caller: caller.identity.clone(),
            shared: self.shared.clone(),
            act: PhantomData,
        })
    }

    /// The scope of every collection `pipeline`'s `$lookup`s join, at any
    /// depth, for the caller: each checked as a read of that collection
    /// (its roles: 403 or 401 as for a listing of it), confined to the
    /// caller's tenant and that collection's own read filter. A collection
    /// that does not exist is 400 (it is a part of the request body, not
    /// the addressed resource).
    pub fn lookup_scopes(
        &self,
        caller: &Caller,
        pipeline: &Pipeline,
    ) -> Result<LookupScopes, ApiError> {
        let id = caller.identity.as_deref();
        let mut out = LookupScopes::new();
        for name in pipeline.lookup_targets() {
            let coll = self.catalog.get(name).map_err(|_| {
                ApiError::bad_request(format!("$lookup: unknown collection {name}"))
            })?;
            let decision = access::decide(&self.settings, id, &coll.name, &coll.def, Action::Read)
                .map_err(|e| e.with_detail_prefix(&format!("$lookup into {name}: ")))?;
            #[allow(clippy::disallowed_methods)]
            let scope = Scope::authorized(decision.tenant, decision.read);
            out.insert(name.as_str().to_owned(), scope);
        }
        Ok(out)
    }

    /// The caller's handle on its tenant's files: any caller with a token
    /// (401 without; 403 without a tenant claim when `auth.require_tenant`
    /// is set). The tenant is the token's; nothing else is reachable.
    pub fn files(&self, caller: &Caller) -> Result<FilesGrant, ApiError> {
        files::grant_for(&self.store, &self.settings, &self.files, caller)
    }

    /// The handle a signed link gives on its one file (401 when the link
    /// was tampered with, has expired, or is for another file).
    pub async fn files_by_link(
        &self,
        id: &arca_core::FileId,
        link: &LinkParams,
    ) -> Result<FilesGrant, ApiError> {
        files::grant_for_link(&self.store, &self.files, id, link).await
    }

    /// A collection by name, or 404.
    pub fn collection(&self, name: &CollectionName) -> Result<Arc<Collection>, ApiError> {
        self.catalog.get(name)
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Vec<Arc<Collection>> {
        self.catalog.all()
    }

    /// The catalogue's version (grows with every reload).
    pub fn catalog_version(&self) -> u64 {
        self.catalog.version()
    }

    /// Reloads the catalogue if another process changed a definition;
    /// whether it did.
    pub async fn refresh_catalog(&self) -> Result<bool, StoreError> {
        self.catalog.refresh(self.store.as_ref()).await
    }

    /// Creates or redefines a collection (schema admins only) and returns
    /// it as now compiled.
    pub async fn define(
        &self,
        _admin: &SchemaAdmin,
        name: &CollectionName,
        def: &CollectionDef,
    ) -> Result<(PutOutcome, Arc<Collection>), ApiError> {
        let at = stamp::now();
        let outcome = self
            .store
            .put_collection(CollectionSpec {
                name,
                schema: def.schema.source(),
                indexes: &def.indexes,
                access: &def.access_source,
                at: &at,
                created_at: None,
            })
            .await?;
        self.catalog.reload(self.store.as_ref()).await?;
        Ok((outcome, self.catalog.get(name)?))
    }

    /// Deletes a collection and its documents (schema admins only);
    /// whether it existed.
    pub async fn undefine(
        &self,
        _admin: &SchemaAdmin,
        name: &CollectionName,
    ) -> Result<bool, ApiError> {
        let existed = self.store.delete_collection(name).await?;
        // Its log now ends with `Dropped`: its streams here close at once.
        self.shared.wakeups.wake(name);
        self.catalog.reload(self.store.as_ref()).await?;
        Ok(existed)
    }

    /// The key listing cursors are signed with: kept in the store, so a
    /// cursor made by one replica is accepted by every other.
    pub async fn cursor_key(&self) -> Result<[u8; 32], ApiError> {
        self.cursor_key
            .get_or_try_init(|| self.store.secret("cursor"))
            .await
            .copied()
            .map_err(ApiError::from)
    }

    /// Whether the store answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// The authentication settings the rules are applied with.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    // ---- Idempotency keys (issue 22): the records of idempotent creates,
    // which are the caller's own (the key names its tenant and subject). ----

    /// Claims a caller's idempotency key for a run (`Store::idempotency_begin`).
    pub async fn idempotency_begin(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.store.idempotency_begin(claim).await
    }

    /// Keeps a run's response (`Store::idempotency_finish`).
    pub async fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        self.store.idempotency_finish(key, run, response).await
    }

    /// Extends a running run's lease (`Store::idempotency_renew`).
    pub async fn idempotency_renew(
        &self,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.store.idempotency_renew(key, run, lease_until).await
    }

    /// Frees a key whose run kept nothing (`Store::idempotency_release`).
    pub async fn idempotency_release(
        &self,
        key: &IdempotencyKey,
        run: &str,
    ) -> Result<(), StoreError> {
        self.store.idempotency_release(key, run).await
    }

    /// Deletes expired records (`Store::idempotency_purge`).
    pub async fn idempotency_purge(&self, now: i64, limit: usize) -> Result<u64, StoreError> {
        self.store.idempotency_purge(now, limit).await
    }
}
