//! `Grant<A>`: a caller's handle on one collection for one action, made by
//! `Gateway::authorize` after the access check. It owns the `Scope` (tenant
//! and read filter) and the action's rule, and its methods are the only
//! way handlers read or write documents: each one runs the rule check
//! itself (the new document for a create; the stored and the changed
//! document for an update; the stored one for a delete), stamps ids,
//! revisions and times, and checks `If-Match`/`If-None-Match` against the
//! revision it read. Which methods exist depends on the action (`Read`,
//! `Create`, `Update`, `Delete`), so a handler cannot write through a read
//! grant.

use std::marker::PhantomData;
use std::sync::Arc;

use arca_auth::Identity;
use arca_core::document::ClientBody;
use arca_core::pipeline::Pipeline;
use arca_core::query::Filter;
use arca_core::{Action, DocId, Document, DocumentText, FieldError, Scope, SystemFields};
use arca_store::{LookupScopes, PageWriter, Query, Store, StoreError};
use serde_json::{Map, Value};

use super::catalog::Collection;
use super::limits::{CallerKey, HeavySlot, OFFLOAD_BYTES};
use super::{Shared, stamp};
use crate::conditions::Preconditions;
use crate::error::{ApiError, ProblemKind};

/// An action a grant is for.
pub trait Act: Send + Sync + 'static {
    /// The access rule the action is checked against.
    const ACTION: Action;
}

/// Reading documents (get, list, count).
pub enum Read {}
/// Creating documents.
pub enum Create {}
/// Replacing or patching documents.
pub enum Update {}
/// Deleting documents.
pub enum Delete {}

impl Act for Read {
    const ACTION: Action = Action::Read;
}
impl Act for Create {
    const ACTION: Action = Action::Create;
}
impl Act for Update {
    const ACTION: Action = Action::Update;
}
impl Act for Delete {
    const ACTION: Action = Action::Delete;
}

/// How many times a write without `If-Match` retries after losing a race.
const WRITE_RETRIES: usize = 16;

/// A permitted caller's handle on a collection for the action `A`.
pub struct Grant<A: Act> {
    pub(super) store: Arc<dyn Store>,
    pub(super) coll: Arc<Collection>,
    /// Tenant ∧ `read` filter: what the caller can see (404 outside).
    pub(super) scope: Scope,
    /// The action's own filter (for `Read`, the same as the scope's).
    pub(super) rule: Filter,
    /// The caller (none without a token): its `sub` owns what it creates.
    pub(super) caller: Option<Arc<Identity>>,
    /// Who heavy reads are counted against.
    pub(super) key: CallerKey,
    /// The limits and their bookkeeping.
    pub(super) shared: Arc<Shared>,
    pub(super) act: PhantomData<A>,
}

fn not_found() -> ApiError {
    ApiError::new(ProblemKind::DocumentNotFound, "no such document")
}

fn outside_rule(action: Action) -> ApiError {
    ApiError::new(
        ProblemKind::Forbidden,
        format!(
            "the document does not match the collection's {} rule for this caller",
            crate::access::verb(action)
        ),
    )
}

fn too_fast() -> ApiError {
    ApiError::new(
        ProblemKind::Conflict,
        "the document is changing too fast; retry",
    )
}

impl<A: Act> Grant<A> {
    /// The collection.
    pub fn collection(&self) -> &Arc<Collection> {
        &self.coll
    }

    /// 422 when `doc` holds arrays on two fields of one compound index:
    /// MongoDB cannot index it ("cannot index parallel arrays"), so no
    /// engine takes it.
    fn indexable(&self, doc: &Document) -> Result<(), ApiError> {
        for def in self.coll.def.indexes.iter().filter(|d| d.fields.len() > 1) {
            if let Some((a, b)) = arca_core::query::index::parallel_arrays(doc, def) {
                return Err(ApiError::invalid_document(vec![FieldError {
                    path: b
                        .split('.')
                        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                        .collect(),
                    message: format!(
                        "{a} and {b} are fields of one index and cannot both hold arrays (as in MongoDB: parallel arrays cannot be indexed)"
                    ),
                }]));
            }
        }
        Ok(())
    }

    /// Whether `doc` passes the action's rule.
    fn admits(&self, doc: &Document) -> bool {
        self.rule.is_all() || self.rule.matches(&doc.to_json())
    }

    /// `body` validated (see `Collection::validate`): on the blocking pool
    /// when the document is large (`size` bytes of JSON, an estimate).
    async fn validated(
        &self,
        body: Map<String, Value>,
        earlier: &[FieldError],
        size: usize,
    ) -> Result<Map<String, Value>, ApiError> {
        let max = self.shared.limits.max_errors;
        if size <= OFFLOAD_BYTES {
            return self.coll.validate(body, earlier, max);
        }
        let (coll, earlier) = (self.coll.clone(), earlier.to_vec());
        self.shared
            .offload
            .run(move || coll.validate(body, &earlier, max))
            .await?
    }

    /// A place for one heavy read of this caller (429 beyond its share).
    fn heavy_slot(&self) -> Result<HeavySlot, ApiError> {
        self.shared
            .heavy
            .acquire(self.key.clone(), self.shared.limits.heavy_per_caller)
    }

    /// The stored document within the read scope, or 404.
    async fn current(&self, id: &DocId) -> Result<Document, ApiError> {
        self.store
            .get(&self.coll.name, &self.scope, id)
            .await?
            .ok_or_else(not_found)
    }
}

impl Grant<Read> {
    /// The document as stored (its body as stored text), or `None` when
    /// it is absent or outside the read scope.
    pub async fn get_text(&self, id: &DocId) -> Result<Option<DocumentText>, ApiError> {
        Ok(self
            .store
            .get_text(&self.coll.name, &self.scope, id)
            .await?)
    }

    /// A listing's documents, parsed (for projections). Listings and
    /// counts are heavy reads: at most `query.max_concurrent_per_caller`
    /// of one caller run at once (429 beyond). Every listing also stops at
    /// `query.max_page_bytes` of documents (`Query::max_bytes`; a smaller
    /// budget given is kept).
    pub async fn find(&self, query: Query) -> Result<Vec<Document>, ApiError> {
        let _slot = self.heavy_slot()?;
        let query = self.bounded(query);
        Ok(self
            .store
            .find(&self.coll.name, &self.scope, &query)
            .await?)
    }

    /// A listing's documents with their bodies as stored text.
    pub async fn find_text(&self, query: Query) -> Result<Vec<DocumentText>, ApiError> {
        let _slot = self.heavy_slot()?;
        let query = self.bounded(query);
        Ok(self
            .store
            .find_text(&self.coll.name, &self.scope, &query)
            .await?)
    }

    /// A listing written by `write` on the engine's thread (see
    /// `Store::find_written`).
    pub async fn find_written(&self, query: Query, write: PageWriter) -> Result<Vec<u8>, ApiError> {
        let _slot = self.heavy_slot()?;
        let query = self.bounded(query);
        Ok(self
            .store
            .find_written(&self.coll.name, &self.scope, &query, write)
            .await?)
    }

    /// The results of `pipeline` over the readable documents (the scope
    /// applies before the first stage), each `$lookup` target within its
    /// scope in `lookups` (`Gateway::lookup_scopes`). A heavy read (429
    /// beyond the caller's share), within `aggregate.*`.
    pub async fn aggregate(
        &self,
        pipeline: &Pipeline,
        lookups: &LookupScopes,
    ) -> Result<Vec<Value>, ApiError> {
        let _slot = self.heavy_slot()?;
        Ok(self
            .store
            .aggregate(
                &self.coll.name,
                &self.scope,
                pipeline,
                lookups,
                &self.shared.limits.aggregate,
            )
            .await?)
    }

    /// How many readable documents match `filter`.
    pub async fn count(&self, filter: &Filter) -> Result<u64, ApiError> {
        let _slot = self.heavy_slot()?;
        Ok(self
            .store
            .count(&self.coll.name, &self.scope, filter)
            .await?)
    }

    /// `query` within the configured page byte budget.
    fn bounded(&self, mut query: Query) -> Query {
        let max = self.shared.limits.max_page_bytes;
        query.max_bytes = Some(query.max_bytes.map_or(max, |b| b.min(max)));
        query
    }
}

impl Grant<Create> {
    /// Creates a document from a client body: validated against the
    /// schema, stamped (a new id unless the client chose one, revision 1,
    /// the time, the caller as owner), checked against the create rule as
    /// it will be stored, then inserted.
    /// `size` is the body's length in bytes (large ones are validated off
    /// the async workers).
    pub async fn create(&self, body: ClientBody, size: usize) -> Result<Document, ApiError> {
        let ClientBody { id, fields, errors } = body;
        let fields = self.validated(fields, &errors, size).await?;
        let id = id.unwrap_or_else(stamp::new_id);
        let doc = Document {
            system: SystemFields::first(
                id,
                self.caller
                    .as_ref()
                    .map(|c| c.sub.clone())
                    .unwrap_or_default(),
                stamp::now(),
            ),
            body: fields,
        };
        self.indexable(&doc)?;
        if !self.admits(&doc) {
            return Err(outside_rule(Action::Create));
        }
        self.store
            .insert(&self.coll.name, &self.scope, &doc)
            .await?;
        Ok(doc)
    }
}

impl Grant<Update> {
    /// Changes a document: reads it within the read scope (404 outside),
    /// checks it against the update rule (403) and the preconditions (412),
    /// lets `change` compute the new body, validates it (422, together
    /// with `earlier` failures), checks the result against the rule (403),
    /// and writes it conditionally on the revision read. With `If-Match` a
    /// lost race is 412; without, the whole step is retried.
    ///
    /// `size` is the new body's length in bytes when known (a PUT's
    /// request), else it is counted (a PATCH's result).
    pub async fn update(
        &self,
        id: &DocId,
        pre: &Preconditions,
        earlier: &[FieldError],
        size: Option<usize>,
        change: impl Fn(&Document) -> Result<Map<String, Value>, ApiError>,
    ) -> Result<Document, ApiError> {
        for _ in 0..WRITE_RETRIES {
            let current = self.current(id).await?;
            if !self.admits(&current) {
                return Err(outside_rule(Action::Update));
            }
            pre.check_write(current.system.rev)?;
            let body = change(&current)?;
            let size = size.unwrap_or_else(|| arca_core::document::body_len(&body));
            let body = self.validated(body, earlier, size).await?;
            let next = Document {
                system: current.system.next(stamp::now()),
                body,
            };
            self.indexable(&next)?;
            if !self.admits(&next) {
                return Err(outside_rule(Action::Update));
            }
            match self
                .store
                .replace(&self.coll.name, &self.scope, &next, current.system.rev)
                .await
            {
                Ok(()) => return Ok(next),
                // Without If-Match, a lost race is retried: If-None-Match
                // and the access rule are checked again on the new revision.
                Err(StoreError::RevMismatch) if pre.if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_fast())
    }
}

impl Grant<Delete> {
    /// Deletes a document readable by the caller (404 otherwise) that
    /// passes the delete rule (403) and the preconditions (412), at the
    /// revision that was checked; returns it as it was.
    pub async fn delete(&self, id: &DocId, pre: &Preconditions) -> Result<Document, ApiError> {
        for _ in 0..WRITE_RETRIES {
            let current = self.current(id).await?;
            if !self.admits(&current) {
                return Err(outside_rule(Action::Delete));
            }
            pre.check_write(current.system.rev)?;
            match self
                .store
                .delete(&self.coll.name, &self.scope, id, Some(current.system.rev))
                .await
            {
                Ok(removed) => return Ok(removed),
                Err(StoreError::RevMismatch) if pre.if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_fast())
    }
}
