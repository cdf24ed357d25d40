//! Every store call timed in one place: a `Store` that forwards to the
//! engine and records each operation's latency in
//! `store_operation_duration_seconds{op}`, so no operation can be missed
//! by a handler that forgot to time it.

use std::sync::Arc;
use std::time::Instant;

use arca_core::pipeline::Pipeline;
use arca_core::query::Filter;
use arca_core::{CollectionName, DocId, Document, DocumentText, Scope, Tenant};
use arca_store::{
    AggregateLimits, CollectionSpec, ExportPosition, IdempotencyBegin, IdempotencyClaim,
    IdempotencyKey, LookupScopes, PageWriter, PutOutcome, Query, Store, StoreError,
    StoredCollection, StoredResponse,
};

/// A `Store` that times the engine it wraps.
pub struct Timed(pub Arc<dyn Store>);

/// Awaits `fut` and records its latency under `op`.
async fn time<T>(op: &'static str, fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = fut.await;
    crate::metrics::record_store_op(op, start.elapsed());
    out
}

#[async_trait::async_trait]
impl Store for Timed {
    async fn ping(&self) -> Result<(), StoreError> {
        time("ping", self.0.ping()).await
    }

    async fn catalog_generation(&self) -> Result<u64, StoreError> {
        time("catalog_generation", self.0.catalog_generation()).await
    }

    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError> {
        time("collections", self.0.collections()).await
    }

    async fn put_collection(&self, spec: CollectionSpec<'_>) -> Result<PutOutcome, StoreError> {
        time("put_collection", self.0.put_collection(spec)).await
    }

    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError> {
        time("delete_collection", self.0.delete_collection(name)).await
    }

    async fn insert(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
    ) -> Result<(), StoreError> {
        time("insert", self.0.insert(coll, scope, doc)).await
    }

    async fn get(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<Document>, StoreError> {
        time("get", self.0.get(coll, scope, id)).await
    }

    async fn get_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<DocumentText>, StoreError> {
        time("get", self.0.get_text(coll, scope, id)).await
    }

    async fn replace(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
        expected_rev: u64,
    ) -> Result<(), StoreError> {
        time("replace", self.0.replace(coll, scope, doc, expected_rev)).await
    }

    async fn delete(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: Option<u64>,
    ) -> Result<Document, StoreError> {
        time("delete", self.0.delete(coll, scope, id, expected_rev)).await
    }

    async fn find(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError> {
        time("find", self.0.find(coll, scope, query)).await
    }

    async fn find_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<DocumentText>, StoreError> {
        time("find", self.0.find_text(coll, scope, query)).await
    }

    async fn find_written(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        write: PageWriter,
    ) -> Result<Vec<u8>, StoreError> {
        time("find", self.0.find_written(coll, scope, query, write)).await
    }

    async fn count(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        time("count", self.0.count(coll, scope, filter)).await
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        time("secret", self.0.secret(name)).await
    }

    async fn export(
        &self,
        coll: &CollectionName,
        after: Option<&ExportPosition>,
        limit: usize,
    ) -> Result<Vec<(Tenant, Document)>, StoreError> {
        time("export", self.0.export(coll, after, limit)).await
    }

    async fn aggregate(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &Pipeline,
        lookups: &LookupScopes,
        limits: &AggregateLimits,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        time(
            "aggregate",
            self.0.aggregate(coll, scope, pipeline, lookups, limits),
        )
        .await
    }

    // ---- Idempotency keys (issue 22) ----

    async fn idempotency_begin(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        time("idempotency_begin", self.0.idempotency_begin(claim)).await
    }

    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        time(
            "idempotency_finish",
            self.0.idempotency_finish(key, run, response),
        )
        .await
    }

    async fn idempotency_renew(
        &self,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        time(
            "idempotency_renew",
            self.0.idempotency_renew(key, run, lease_until),
        )
        .await
    }

    async fn idempotency_release(&self, key: &IdempotencyKey, run: &str) -> Result<(), StoreError> {
        time("idempotency_release", self.0.idempotency_release(key, run)).await
    }

    async fn idempotency_purge(&self, now: i64, limit: usize) -> Result<u64, StoreError> {
        time("idempotency_purge", self.0.idempotency_purge(now, limit)).await
    }
}
