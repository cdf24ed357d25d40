//! Every store call timed in one place: a `Store` that forwards to the
//! engine and records each operation's latency in
//! `store_operation_duration_seconds{op}`, so no operation can be missed
//! by a handler that forgot to time it.

use std::sync::Arc;
use std::time::Instant;

use arca_core::pipeline::Pipeline;
use arca_core::query::Filter;
use arca_core::{CollectionName, DocId, Document, DocumentText, FileId, Scope, Tenant};
use arca_store::{
    AggregateLimits, ByteStream, CollectionSpec, EventPage, ExportPosition, FileMeta, FileWriter,
    IdempotencyBegin, IdempotencyClaim, IdempotencyKey, LookupScopes, PageWriter, PutOutcome,
    Query, Store, StoreError, StoredCollection, StoredResponse, ThumbKey, TicketRecord,
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

    async fn rotate_secret(&self, name: &str) -> Result<(), StoreError> {
        time("rotate_secret", self.0.rotate_secret(name)).await
    }

    /// Timed: the opening here, each chunk written and the commit by
    /// `TimedWriter` (an upload's whole time is the client's, not the
    /// store's).
    async fn begin_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Box<dyn FileWriter>, StoreError> {
        let inner = time("begin_file", self.0.begin_file(scope, id)).await?;
        Ok(Box::new(TimedWriter(inner)))
    }

    async fn file_meta(&self, scope: &Scope, id: &FileId) -> Result<Option<FileMeta>, StoreError> {
        time("file_meta", self.0.file_meta(scope, id)).await
    }

    /// Timed to the first byte: the stream's pace is the client's.
    async fn read_file(
        &self,
        scope: &Scope,
        id: &FileId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        time("read_file", self.0.read_file(scope, id, range)).await
    }

    async fn delete_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Option<FileMeta>, StoreError> {
        time("delete_file", self.0.delete_file(scope, id)).await
    }

    async fn list_files(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, StoreError> {
        time("list_files", self.0.list_files(scope, owner, after, limit)).await
    }

    async fn export_files(
        &self,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FileMeta)>, StoreError> {
        time("export_files", self.0.export_files(after, limit)).await
    }

    async fn thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        time("thumbnail", self.0.thumbnail(scope, id, key)).await
    }

    async fn put_thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        time("put_thumbnail", self.0.put_thumbnail(scope, id, key, bytes)).await
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

    // --- Change events (issue 21) ---

    async fn event_head(&self, coll: &CollectionName) -> Result<u64, StoreError> {
        time("event_head", self.0.event_head(coll)).await
    }

    async fn events(
        &self,
        coll: &CollectionName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        time("events", self.0.events(coll, after, limit)).await
    }

    async fn prune_events(&self, older_than_ms: u64, max: usize) -> Result<u64, StoreError> {
        time("prune_events", self.0.prune_events(older_than_ms, max)).await
    }

    async fn put_ticket(&self, ticket: &TicketRecord) -> Result<(), StoreError> {
        time("put_ticket", self.0.put_ticket(ticket)).await
    }

    async fn take_ticket(
        &self,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<TicketRecord>, StoreError> {
        time("take_ticket", self.0.take_ticket(hash, now_ms)).await
    }

    async fn prune_tickets(&self, now_ms: u64) -> Result<u64, StoreError> {
        time("prune_tickets", self.0.prune_tickets(now_ms)).await
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

/// An upload whose store calls are timed one by one.
struct TimedWriter(Box<dyn FileWriter>);

#[async_trait::async_trait]
impl FileWriter for TimedWriter {
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), StoreError> {
        time("write_file", self.0.write(chunk)).await
    }

    async fn written(&mut self) -> Result<ByteStream, StoreError> {
        time("read_upload", self.0.written()).await
    }

    async fn commit(self: Box<Self>, meta: FileMeta) -> Result<(), StoreError> {
        time("commit_file", self.0.commit(meta)).await
    }

    async fn abort(self: Box<Self>) {
        time("abort_file", self.0.abort()).await
    }
}
