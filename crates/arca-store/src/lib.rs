//! Storage: the `Store` trait every engine implements, and the engines.
//!
//! The trait speaks arca-core types only (names, ids, documents, `Scope`),
//! never SQL or BSON, so the HTTP layer is the same whatever the engine.
//! Each method says how it maps onto MongoDB, so that the MongoDB engine
//! fits the same trait without a redesign.
//!
//! Engines store what they are given and decide nothing the contract
//! defines: ids, revisions and timestamps are stamped by the caller (the
//! server's gateway, or an operator tool) before a write, so every engine
//! stores the same values and an access rule checked before the write sees
//! exactly what is stored. Engines return documents (or their stored text);
//! how a page is framed as JSON is the server's business.

pub mod files;
pub mod mongodb;
pub mod sqlite;

use std::ops::Range;

use arca_core::query::{Cursor, Filter, Sort};
use arca_core::{CollectionName, DocId, Document, DocumentText, FileId, IndexDef, Scope, Tenant};
use serde_json::Value;

pub use files::{ByteStream, FileMeta, FileWriter, ImageFacts, ThumbFormat, ThumbKey};
pub use sqlite::{SqliteOptions, SqliteStore};

/// Re-exported so engines and callers name query types from one place.
pub use arca_core::query;

/// A failure of a store operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No such document within the scope.
    #[error("not found")]
    NotFound,
    /// The collection has no storage (deleted meanwhile).
    #[error("collection not found")]
    CollectionMissing,
    /// A duplicate `_id` or unique index value; names the fields (`_id`
    /// for the id).
    #[error("duplicate value for {0}")]
    Conflict(String),
    /// The stored revision is not the expected one.
    #[error("revision mismatch")]
    RevMismatch,
    /// A unique index cannot be added: existing documents hold duplicates.
    #[error("existing documents hold duplicate values for the unique index on {0}")]
    DuplicatesForUniqueIndex(String),
    /// A read ran past its time limit and was stopped.
    #[error("the query ran past its time limit")]
    Timeout,
    /// An aggregation cannot run or failed on the data (`400`, with the
    /// reference evaluator's reason; `PipelineError::TimedOut` is reported
    /// as `Timeout` instead).
    #[error("{0}")]
    Pipeline(arca_core::pipeline::PipelineError),
    /// The engine is unavailable (disk full, I/O error, shutting down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A stored collection definition, as the catalogue keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCollection {
    /// The name.
    pub name: CollectionName,
    /// The JSON Schema as given.
    pub schema: Value,
    /// Declared indexes.
    pub indexes: Vec<IndexDef>,
    /// Access rules as given.
    pub access: Value,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// A collection definition to store (`Store::put_collection`).
#[derive(Debug, Clone, Copy)]
pub struct CollectionSpec<'a> {
    /// The name.
    pub name: &'a CollectionName,
    /// The JSON Schema as given.
    pub schema: &'a Value,
    /// Declared indexes.
    pub indexes: &'a [IndexDef],
    /// Access rules as given.
    pub access: &'a Value,
    /// The time of this change (RFC 3339 UTC): `updated_at`, and
    /// `created_at` of a new collection unless `created_at` is given.
    pub at: &'a str,
    /// The creation time of a new collection when it is not `at` (a copy
    /// keeps the original's).
    pub created_at: Option<&'a str>,
}

/// Whether `put_collection` created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new collection.
    Created,
    /// An existing collection was redefined.
    Updated,
}

/// A listing: filter, order, position and size.
#[derive(Debug, Clone)]
pub struct Query {
    /// The client's filter (the scope's filter is applied on top).
    pub filter: Filter,
    /// The order (always completed by `_id` ascending).
    pub sort: Sort,
    /// Start strictly after this position.
    pub after: Option<Cursor>,
    /// At most this many documents.
    pub limit: usize,
    /// A budget in bytes of JSON: reading stops once the documents read
    /// before the latest one reach it (see `PageBudget`), so one listing
    /// holds about this much whatever its documents' sizes. `None`: no
    /// budget.
    pub max_bytes: Option<usize>,
}

/// The byte rule of a listing (`Query::max_bytes`): documents are taken
/// in order until those taken before the latest reach the budget. So when
/// a listing was cut by bytes, its last document lies past the budget and
/// the caller, writing documents while they fit, always has one left over
/// to tell it that more follow (at least one document is always written).
#[derive(Debug, Clone, Copy)]
pub struct PageBudget {
    max: Option<usize>,
    before_last: usize,
    last: usize,
}

impl PageBudget {
    /// The rule for `max` bytes (`None`: unbounded).
    pub fn new(max: Option<usize>) -> Self {
        Self {
            max,
            before_last: 0,
            last: 0,
        }
    }

    /// Counts one more document of `bytes`; whether reading may go on.
    pub fn take(&mut self, bytes: usize) -> bool {
        self.before_last += self.last;
        self.last = bytes;
        self.max.is_none_or(|m| self.before_last < m)
    }
}

/// Trims a bounded heap of the best documents seen (its greatest element
/// the worst) to the least that still satisfies the byte rule of
/// `PageBudget`: while dropping the worst leaves documents whose all but
/// worst reach `max`, drop it. `held` is the heap's total, kept in step.
pub fn trim_to_budget<T: Ord>(
    best: &mut std::collections::BinaryHeap<T>,
    held: &mut usize,
    max: usize,
    bytes: impl Fn(&T) -> usize,
) {
    while best.len() >= 2 {
        let Some(worst) = best.pop() else { return };
        let rest = *held - bytes(&worst);
        let next_worst = best.peek().map_or(0, &bytes);
        if rest - next_worst >= max {
            *held = rest;
            continue;
        }
        best.push(worst);
        return;
    }
}

/// How many of `sizes` (in order) a page writes under `max` bytes: while
/// they fit, and always at least one.
pub fn fits(sizes: impl IntoIterator<Item = usize>, max: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if n > 0 && total > max {
            break;
        }
        n += 1;
    }
    n
}

/// The storage engine interface.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the engine can serve (`/readyz`).
    /// MongoDB: `ping` command.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A number that changes whenever a collection definition changes,
    /// through any process using the store: replicas poll it to learn
    /// that their catalogue is stale (reading it is cheap, unlike
    /// `collections`). MongoDB: a counter document in `_arca_meta`.
    async fn catalog_generation(&self) -> Result<u64, StoreError>;

    /// Every collection definition. MongoDB: the `_arca_collections`
    /// collection.
    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError>;

    /// Creates or redefines a collection and reconciles its indexes in one
    /// step: if a new unique index meets duplicates, nothing changes. Bumps
    /// the catalogue generation. MongoDB: `createCollection`/`collMod`
    /// with the `$jsonSchema` validator, `createIndexes` (each with
    /// `_tenant` first), `dropIndexes`.
    async fn put_collection(&self, spec: CollectionSpec<'_>) -> Result<PutOutcome, StoreError>;

    /// Deletes a collection and all its documents; `false` if it did not
    /// exist. Bumps the catalogue generation. MongoDB: `drop` plus the
    /// catalogue entry.
    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError>;

    /// Inserts `doc` as given (system fields included) in the scope's
    /// tenant: `Conflict("_id")` if the id is taken there, `Conflict` naming
    /// the fields of a unique index it would break.
    /// MongoDB: `insertOne` (duplicate key 11000 -> `Conflict`).
    async fn insert(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
    ) -> Result<(), StoreError>;

    /// The document with `id` within the scope (tenant and row filter).
    /// MongoDB: `findOne({_id: {t, i}})` then the scope's row filter.
    async fn get(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<Document>, StoreError>;

    /// `get`, with the body as the stored JSON text, for reads that only
    /// pass the document on. Engines that store text override it to skip
    /// the parse; the default serializes what `get` returns.
    /// MongoDB: as `get` (BSON has no stored JSON text to pass on).
    async fn get_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<DocumentText>, StoreError> {
        Ok(self
            .get(coll, scope, id)
            .await?
            .as_ref()
            .map(DocumentText::of))
    }

    /// Replaces the stored document of `doc`'s id with `doc` (its body and
    /// system fields as given: the caller stamps the new revision and time)
    /// if the stored revision is still `expected_rev`, atomically:
    /// `RevMismatch` if it changed meanwhile, `NotFound` if it is gone.
    /// MongoDB: `replaceOne({_id: {t, i}, _rev: expected})`.
    async fn replace(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
        expected_rev: u64,
    ) -> Result<(), StoreError>;

    /// Deletes the document (only at `expected_rev` when given) and returns
    /// it as it was. MongoDB: `findOneAndDelete({_id: {t, i}[, _rev]})`.
    async fn delete(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: Option<u64>,
    ) -> Result<Document, StoreError>;

    /// Documents of the scope matching the query's filter, in its order,
    /// strictly after its cursor, at most `limit` of them.
    /// MongoDB: `find({$and: [{_tenant}, scope filter, filter, keyset
    /// condition on (sort fields, _id)]}).sort({...sort, _id: 1}).limit(n)`.
    async fn find(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError>;

    /// `find`, with each body as the stored JSON text, for listings sent
    /// without a projection. Engines that store text override it to parse
    /// only what the filter and sort read; the default serializes `find`.
    /// MongoDB: as `find`.
    async fn find_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<DocumentText>, StoreError> {
        let docs = self.find(coll, scope, query).await?;
        Ok(docs.iter().map(DocumentText::of).collect())
    }

    /// `find_text`, handed to `write` on the engine's own thread to become
    /// the bytes of a response: engines that read on threads of their own
    /// override it, so the documents are freed by the thread that made
    /// them (a cross-thread free costs the allocator several times more;
    /// measured in bench/RESULTS.md). What the bytes are (the page's JSON
    /// framing, its cursor) is the caller's business.
    async fn find_written(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        write: PageWriter,
    ) -> Result<Vec<u8>, StoreError> {
        let docs = self.find_text(coll, scope, query).await?;
        write(docs)
    }

    /// The number of documents of the scope matching `filter`.
    /// MongoDB: `countDocuments({$and: [{_tenant}, scope filter, filter]})`.
    async fn count(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError>;

    /// The 32-byte secret `name`: made at random by the first process that
    /// asks, the same for every process on the store after that (keys that
    /// replicas must share: cursor signing, link signing). MongoDB:
    /// `findOneAndUpdate({_id: name}, {$setOnInsert: {value}}, {upsert})`
    /// on `_arca_secrets`.
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError>;

    /// Rotates the secret `name`: its current value becomes
    /// `<name>.previous` and a new random value (`candidate`) the current
    /// one, in one step, so signatures made with the old key still verify
    /// against `<name>.previous` until the next rotation (an operator
    /// command, never a request). MongoDB: `findOneAndUpdate` on
    /// `_arca_secrets` conditional on the value read, then the previous
    /// key's upsert first (a crash between the two leaves the old key
    /// current, never lost).
    async fn rotate_secret(&self, name: &str) -> Result<(), StoreError>;

    /// Starts an upload of the file `id` in the scope's tenant: the writer
    /// takes its bytes chunk by chunk and `commit` makes it visible with
    /// its metadata. Nothing is visible before the commit, nor after a
    /// crash or an abort. MongoDB: a GridFS upload stream on the bucket
    /// `files` (`_id` the id; `metadata: {tenant, owner, filename,
    /// content_type, sha256, created_at, image}`), `close()`d by the
    /// commit, aborted otherwise (GridFS shows a file only once its
    /// `files` document is written, after the last chunk).
    async fn begin_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Box<dyn FileWriter>, StoreError>;

    /// The metadata of the file `id` in the scope's tenant, or `None`
    /// (also for another tenant's file). MongoDB: `files.files`
    /// `findOne({_id, "metadata.tenant"})`.
    async fn file_meta(&self, scope: &Scope, id: &FileId) -> Result<Option<FileMeta>, StoreError>;

    /// The bytes `range` (within the file's size, which the caller read
    /// from `file_meta`) of the file `id` in the scope's tenant, as a
    /// stream of chunks; `NotFound` when there is no such file. MongoDB:
    /// the chunks `n` from `start / chunkSize` to `(end - 1) / chunkSize`
    /// of `files.chunks`, trimmed at both ends (the driver's download
    /// stream cannot seek).
    async fn read_file(
        &self,
        scope: &Scope,
        id: &FileId,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError>;

    /// Deletes the file `id` of the scope's tenant with its thumbnails and
    /// returns its metadata, or `None` when there was none. MongoDB: the
    /// GridFS `delete` (its `files` document, then its chunks) after
    /// `files.thumbnails` `deleteMany({"_id.f"})`.
    async fn delete_file(&self, scope: &Scope, id: &FileId)
    -> Result<Option<FileMeta>, StoreError>;

    /// The cached thumbnail `key` of the file `id`, or `None`. MongoDB:
    /// `files.thumbnails` `findOne({_id: {t, f, s, e}})`.
    async fn thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` files' metadata of the scope's tenant (only those of
    /// `owner` when given), newest first (`created_at` descending, then id
    /// descending), strictly after `after` in that order (the `created_at`
    /// and id of the last file of the previous page). MongoDB:
    /// `files.files` `find` on `metadata.tenant` (and `metadata.owner`)
    /// sorted on `{metadata.created_at: -1, _id.i: -1}`.
    async fn list_files(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, StoreError>;

    /// Up to `limit` files' metadata in every tenant, in (tenant key, id)
    /// order, strictly after `after` (a tenant key and an id): for operator
    /// tools that move a whole store (`arca copy`), never for a request.
    /// MongoDB: `files.files` `find` sorted on `{metadata.tenant, _id.i}`.
    async fn export_files(
        &self,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FileMeta)>, StoreError>;

    /// Caches a thumbnail of the file `id` (kept until the file is
    /// deleted; a second put of the same key keeps the first); `NotFound`
    /// when the file is gone. MongoDB: `files.thumbnails` `insertOne`
    /// (a duplicate key is the first one kept), after checking the file.
    async fn put_thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Up to `limit` documents of the collection in every tenant, in
    /// (tenant key, id) order, strictly after `after`: for operator tools
    /// that move a whole store (`arca copy`), never for a request (no
    /// scope: it crosses tenants). MongoDB: `find` sorted on
    /// `{_tenant, _id.i}`.
    async fn export(
        &self,
        coll: &CollectionName,
        after: Option<&ExportPosition>,
        limit: usize,
    ) -> Result<Vec<(Tenant, Document)>, StoreError>;

    // --- Aggregation (issue 19) ---

    /// Runs `pipeline` over the documents of `coll` within `scope` (the
    /// scope applies before the first stage), with the meaning of the
    /// reference evaluator (`arca_core::pipeline`). Every collection a
    /// `$lookup` joins, at any depth, must be in `lookups` with the
    /// caller's scope on it (same tenant, that collection's read filter);
    /// one missing is `StoreError::Pipeline(Invalid)`. Runs within
    /// `limits`: past `max_time` -> `Timeout`; a stage holding more than
    /// `max_memory` bytes, more than `max_results` results, or an error
    /// that depends on the data -> `Pipeline`.
    /// MongoDB: `aggregate` of the scoped pipeline
    /// (`mongodb::pipeline::pipeline_to_bson`) with `maxTimeMS` and
    /// `allowDiskUse: false`; the engine evaluates the pipeline itself
    /// where the server's meaning would differ (see there).
    async fn aggregate(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &arca_core::pipeline::Pipeline,
        lookups: &LookupScopes,
        limits: &AggregateLimits,
    ) -> Result<Vec<Value>, StoreError>;

    // --- Change events (issue 21): the event log and stream tickets. ---
    //
    // Every successful `insert`, `replace` and `delete` also appends one
    // entry to the collection's event log, in the same transaction as the
    // change (so a write that did not commit has no entry and one that did
    // is never missing one), unless the engine was opened without an event
    // log. Entries of one collection carry increasing positions (`seq`, 1,
    // 2, ...) in commit order, the same on every engine; `delete_collection`
    // ends the collection's log with a `Dropped` entry and forgets the rest.
    // What is no longer kept is said by the collection's floor: entries at
    // or below it are gone (pruned, or dropped with the collection).

    /// The collection's latest position: the greater of its newest entry
    /// and its floor (0 when it never had one). Positions never move back,
    /// even when a collection is deleted and defined again.
    /// MongoDB: the `seq` of the collection's counter in `_arca_event_seq`.
    async fn event_head(&self, coll: &CollectionName) -> Result<u64, StoreError>;

    /// At most `limit` entries of the collection after position `after`, in
    /// order, and its floor read after them (so a floor above `after`
    /// always tells of entries no longer there, never misses one).
    /// MongoDB: `find({c, s: {$gt: after}}).sort({s: 1}).limit(n)` on
    /// `_arca_events`, then the counter's `floor`.
    async fn events(
        &self,
        coll: &CollectionName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// Forgets, per collection, the oldest entries written before
    /// `older_than_ms` (milliseconds since the epoch), at most `max` in
    /// all, raising the floors; how many went. Entries go oldest first and
    /// none goes while an older one stays (clocks of several processes may
    /// differ a little), so a floor never passes a kept entry. MongoDB: per counter, the floor is raised
    /// (`$max`) before `deleteMany({c, s: {$lte: floor}})`.
    async fn prune_events(&self, older_than_ms: u64, max: usize) -> Result<u64, StoreError>;

    /// Keeps a stream ticket (by the hash of its secret) until it is taken
    /// or expires. MongoDB: `insertOne` into `_arca_tickets`.
    async fn put_ticket(&self, ticket: &TicketRecord) -> Result<(), StoreError>;

    /// Takes the ticket with this hash, atomically: of several concurrent
    /// attempts one gets it, the others `None`; an expired one (at
    /// `now_ms`) is removed and `None` too. MongoDB: `findOneAndDelete`.
    async fn take_ticket(
        &self,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<TicketRecord>, StoreError>;

    /// Removes the tickets expired at `now_ms`; how many.
    /// MongoDB: `deleteMany({exp: {$lte: now}})`.
    async fn prune_tickets(&self, now_ms: u64) -> Result<u64, StoreError>;

    // ---- Idempotency keys (issue 22): every replica on the store sees
    // the same records, so a retry through another replica is answered
    // like one through the first. Times are milliseconds since the epoch,
    // decided by the caller (as ids and timestamps are). ----

    /// Claims `claim.key` for a run of a request (atomically, whatever
    /// process asks at the same time). A key with no record, or whose
    /// record expired (`expires_at <= now`), is claimed: `Started`, with a
    /// new record (this run, its lease, its expiry). Otherwise, with
    /// another fingerprint: `Mismatch`; finished: `Done` with the kept
    /// response; running under a lease that has not passed: `Running`;
    /// running under a passed lease (its process stopped): claimed again
    /// by this run, `Started` (the expiry stays the first run's).
    /// MongoDB: `insertOne` on `_arca_idempotency` (`_id: {t, s, k}`),
    /// else `findOne` and a takeover by `replaceOne` conditional on the
    /// run seen.
    async fn idempotency_begin(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<IdempotencyBegin, StoreError>;

    /// Keeps `response` as the result of the key's run `run`; `false` when
    /// the record is no longer this run's (taken over after its lease,
    /// expired and reclaimed, or already finished). MongoDB: `updateOne`
    /// conditional on the run.
    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError>;

    /// Extends the lease of the key's run `run` to `lease_until` (a run
    /// still working renews it, so only a run whose process stopped lets
    /// its lease pass); `false` when the record is no longer this run's or
    /// is finished. MongoDB: `updateOne` conditional on the run.
    async fn idempotency_renew(
        &self,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError>;

    /// Drops the record of a run that kept no result (it failed in a way a
    /// retry should run again), if it is still this run's and unfinished.
    /// MongoDB: `deleteOne` conditional on the run.
    async fn idempotency_release(&self, key: &IdempotencyKey, run: &str) -> Result<(), StoreError>;

    /// Deletes records expired at `now` (at most `limit` of them); how
    /// many. Expired records are already ignored by `idempotency_begin`:
    /// this only frees their space. MongoDB: `deleteMany` on `exp` (also
    /// a TTL index, for servers that run TTL monitors).
    async fn idempotency_purge(&self, now: i64, limit: usize) -> Result<u64, StoreError>;
}

/// Whose idempotency key a record is: the caller's tenant (its storage
/// key, `""` for the untenanted space), its subject, and the key the
/// client sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The tenant's storage key.
    pub tenant: String,
    /// The caller's `sub`.
    pub subject: String,
    /// The `Idempotency-Key` value.
    pub key: String,
}

/// A request's claim on an idempotency key (`Store::idempotency_begin`).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyClaim<'a> {
    /// The key.
    pub key: &'a IdempotencyKey,
    /// What identifies the request (a digest of its method, target and
    /// body): the same key with another fingerprint is a misuse.
    pub fingerprint: &'a str,
    /// This run's id (random): finishing or releasing names it.
    pub run: &'a str,
    /// Now (ms since the epoch).
    pub now: i64,
    /// Until when this run holds the key while it runs (ms).
    pub lease_until: i64,
    /// When a new record expires (ms).
    pub expires_at: i64,
}

/// What `Store::idempotency_begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is this run's: run the request, then finish or release.
    Started,
    /// Another run of the same request holds the key and has not finished.
    Running,
    /// The key was used for another request (another fingerprint).
    Mismatch,
    /// The request ran already: its response, to replay.
    Done(StoredResponse),
}

/// A response kept for replay: its status, the headers that describe it,
/// and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The scope of each collection an aggregation's `$lookup`s join, by name:
/// the caller's tenant and that collection's own read filter.
pub type LookupScopes = std::collections::HashMap<String, Scope>;

/// What one aggregation may cost (`[aggregate]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateLimits {
    /// Past this, the aggregation stops: `StoreError::Timeout`.
    pub max_time: std::time::Duration,
    /// Most bytes (estimated) one stage may hold, the results included.
    pub max_memory: u64,
    /// Most results.
    pub max_results: usize,
}

/// What a change did to a document (an event log entry's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The document was inserted (`after` only).
    Created,
    /// The document was replaced (`before` and `after`).
    Updated,
    /// The document was deleted (`before` only).
    Deleted,
    /// The collection was deleted: the last entry of its log (no
    /// document, no tenant).
    Dropped,
}

impl ChangeKind {
    /// The kind's stored code (the same on every engine).
    pub fn code(self) -> i64 {
        match self {
            ChangeKind::Created => 1,
            ChangeKind::Updated => 2,
            ChangeKind::Deleted => 3,
            ChangeKind::Dropped => 4,
        }
    }

    /// The kind of a stored code.
    pub fn of_code(code: i64) -> Result<Self, StoreError> {
        match code {
            1 => Ok(ChangeKind::Created),
            2 => Ok(ChangeKind::Updated),
            3 => Ok(ChangeKind::Deleted),
            4 => Ok(ChangeKind::Dropped),
            other => Err(StoreError::Unavailable(format!(
                "an event log entry has the unknown kind {other}"
            ))),
        }
    }
}

/// One entry of a collection's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its position in the collection's log.
    pub seq: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The tenant key of the document (`""`: the untenanted space).
    pub tenant: String,
    /// The document's id (`None` for `Dropped`).
    pub id: Option<DocId>,
    /// The document before the change, as clients see it (JSON text with
    /// the system fields): for updates and deletes.
    pub before: Option<String>,
    /// The document after the change, likewise: for creates and updates.
    pub after: Option<String>,
}

/// A page of a collection's event log (`Store::events`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventPage {
    /// The entries after the position asked for, in order.
    pub events: Vec<StoredEvent>,
    /// Entries at or below this position are no longer kept: when it is
    /// above the position asked for, some of those that followed it are
    /// gone.
    pub floor: u64,
}

/// A stream ticket as the store keeps it: by the SHA-256 of its secret
/// (the secret itself is never stored), for one collection and one
/// holder, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    /// SHA-256 of the ticket's secret.
    pub hash: [u8; 32],
    /// The collection it opens.
    pub coll: CollectionName,
    /// Who holds it, as the server serialized it (opaque here).
    pub holder: String,
    /// When it stops being accepted, in milliseconds since the epoch.
    pub expires_at_ms: u64,
}

/// The current time in milliseconds since the epoch (event and ticket
/// times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The JSON text of a document as clients see it (system fields first),
/// from its system fields and its stored body text: what the event log
/// keeps as `before` and `after`.
pub fn document_json(system: &arca_core::SystemFields, body: String) -> Option<String> {
    let text = DocumentText::new(system.clone(), body)?;
    String::from_utf8(text.to_json_bytes()).ok()
}

/// Turns a listing's documents into bytes (see `Store::find_written`).
pub type PageWriter = Box<dyn FnOnce(Vec<DocumentText>) -> Result<Vec<u8>, StoreError> + Send>;

/// Where an export page ended: the tenant key (`""` for the untenanted
/// space) and the id of its last document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPosition {
    /// The tenant's storage key.
    pub tenant: String,
    /// The last document's id.
    pub id: DocId,
}

/// The tenant of a storage key (`""` is the untenanted space).
pub fn tenant_of_key(key: &str) -> Result<Tenant, StoreError> {
    if key.is_empty() {
        Ok(Tenant::None)
    } else {
        Tenant::parse(key).map_err(|_| {
            StoreError::Unavailable(format!("a stored tenant key is invalid: {key:?}"))
        })
    }
}
