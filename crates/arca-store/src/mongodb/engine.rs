//! The MongoDB engine: the `Store` trait over the official driver.
//!
//! Layout (see `value` for a document's): one MongoDB collection per Arca
//! collection, named as it; the catalogue in `_arca_collections`, one
//! document per definition (`{_id: name, def: <JSON text>, created_at,
//! updated_at, nonce}`). Every index leads with `_tenant`: an internal
//! `{_tenant: 1, _id: 1}` for listings in `_id` order, and each declared
//! one as `{_tenant: 1, <fields>...}` (a non-unique one ends with `_id` so
//! an equality page comes in `_id` order). Unique indexes are therefore per
//! tenant; `sparse` becomes a partial filter (with the tenant first, a
//! compound index's `sparse` would skip nothing). Callers' idempotency
//! records live in `_arca_idempotency`, one per (tenant, subject, key),
//! claimed by a unique `_id` insert and changed only conditionally on the
//! run that holds them.
//!
//! Queries: the scope's and the client's filters are translated by
//! `filter` into a BSON filter that matches a superset; unless the
//! translation is exact, every candidate is checked by the reference
//! evaluator, which always has the last word. In `_id` order a page is a
//! keyset range on `{_tenant, _id}` (never `skip`); in another order every
//! candidate past the cursor is ranked in a bounded heap, as the embedded
//! engine does.
//!
//! Faults: every operation runs under `timeout` (server selection
//! included); reads also carry `maxTimeMS` (`read_timeout`). A primary that
//! is gone is `Unavailable`, a read past its time `Timeout`. The
//! catalogue generation is a hash of every definition's random nonce (set
//! in the same single-document write as the definition), so replicas see
//! a change without a transaction.

use std::collections::{BinaryHeap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use arca_core::query::{Filter, Node, SortKey};
use arca_core::{CollectionName, DocId, Document, IndexDef, Scope, Tenant};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document as BsonDoc, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, IndexOptions, ValidationAction, ValidationLevel, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use serde_json::Value;

use super::{filter, schema, value};

mod aggregate;

use crate::{
    CollectionSpec, ExportPosition, IdempotencyBegin, IdempotencyClaim, IdempotencyKey, PageBudget,
    PutOutcome, Query, Store, StoreError, StoredCollection, StoredResponse, trim_to_budget,
};

/// The catalogue collection.
const CATALOG: &str = "_arca_collections";

/// The internal index every collection has (listings in `_id` order).
const TENANT_ID_INDEX: &str = "arca_tenant_id";

/// Callers' idempotency records: `{_id: {t, s, k}, fp, run, lease, exp,
/// done, status, headers, body}` (`lease` and `exp` are dates).
const IDEMPOTENCY: &str = "_arca_idempotency";

/// How the MongoDB engine is opened.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// A `mongodb://` or `mongodb+srv://` URI; its path names the database
    /// (`arca` when it has none).
    pub uri: String,
    /// Bound on every operation, server selection included.
    pub timeout: Duration,
    /// Reads running longer are stopped by the server (`maxTimeMS`).
    pub read_timeout: Duration,
    /// Check every candidate with the reference evaluator even where the
    /// filter's translation is exact (and so never push a listing's limit
    /// to the server): for MongoDB-compatible servers whose matching
    /// differs from MongoDB's (the test stand-in; some managed
    /// "MongoDB-compatible" services). Results are then the evaluator's
    /// whatever the server; listings cost more.
    pub verify: bool,
}

/// The MongoDB engine.
pub struct MongoStore {
    db: Database,
    timeout: Duration,
    read_timeout: Duration,
    verify: bool,
    /// The collections the catalogue held at the last look: writes to
    /// another are `CollectionMissing` (MongoDB would create it).
    known: RwLock<HashSet<String>>,
    /// Places for aggregations the engine evaluates itself, one per CPU
    /// (see `aggregate`).
    evaluators: std::sync::Arc<tokio::sync::Semaphore>,
    /// Whether the idempotency records' expiry index was made (once per
    /// process, at the first record).
    idempotency_index: tokio::sync::OnceCell<()>,
}

/// What `_arca_collections.def` holds (the same record as the embedded
/// engine's, as JSON text: a schema's numbers keep their kind and its
/// `$`-keywords need no escaping).
#[derive(serde::Serialize, serde::Deserialize)]
struct CollectionRecord {
    schema: Value,
    indexes: Vec<IndexDef>,
    access: Value,
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

/// The server's error code, when it sent one.
fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// The message of a write or command error (server text: for the logs
/// and for reading an index name, never for clients).
fn server_message(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        other => other.to_string(),
    }
}

/// Maps a driver error. Duplicate keys are resolved to field names by the
/// caller (`name_conflict`).
fn map_err(e: mongodb::error::Error) -> StoreError {
    match server_code(&e) {
        Some(11000) => StoreError::Conflict(server_message(&e)),
        // MaxTimeMSExpired.
        Some(50) => StoreError::Timeout,
        // NamespaceNotFound.
        Some(26) => StoreError::CollectionMissing,
        // DocumentValidationFailure: the database's own `$jsonSchema`
        // refused what the API accepted.
        Some(121) => StoreError::Unavailable(format!(
            "the database's validator refused a document the API accepted: {}",
            server_message(&e)
        )),
        _ => unavailable(e),
    }
}

/// A stable index name for a declared index (reconciling indexes is then
/// a set difference of names). FNV-1a: a small stable hash, not security.
fn index_name(def: &IndexDef) -> String {
    let text = serde_json::to_string(def).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("arca_{h:016x}")
}

/// The stored path of a field a filter or an index names.
fn stored_path(path: &str) -> String {
    if path == "_id" {
        "_id.i".into()
    } else {
        path.to_owned()
    }
}

/// The index model of a declared index.
fn index_model(def: &IndexDef) -> IndexModel {
    let mut keys = doc! {"_tenant": 1};
    for (path, dir) in &def.fields {
        keys.insert(stored_path(path), if *dir < 0 { -1 } else { 1 });
    }
    if !def.unique && !def.fields.iter().any(|(p, _)| p == "_id") {
        keys.insert("_id.i", 1);
    }
    let mut options = IndexOptions::builder()
        .name(index_name(def))
        .unique(def.unique)
        .build();
    if def.sparse {
        // Indexed when any of its fields is present (the embedded engine's
        // rule). `sparse: true` itself would skip nothing: `_tenant` is
        // always there.
        let present: Vec<Bson> = def
            .fields
            .iter()
            .map(|(p, _)| Bson::Document(doc! {stored_path(p): {"$exists": true}}))
            .collect();
        options.partial_filter_expression = Some(if present.len() == 1 {
            match present.into_iter().next() {
                Some(Bson::Document(d)) => d,
                _ => doc! {},
            }
        } else {
            doc! {"$or": present}
        });
    }
    IndexModel::builder().keys(keys).options(options).build()
}

/// `{$and: [a, b]}`, or one of them when the other is empty.
fn and(a: BsonDoc, b: BsonDoc) -> BsonDoc {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => doc! {"$and": [a, b]},
    }
}

/// A candidate ranked by a sort order (the bounded heap's greatest is the
/// worst kept).
struct Ranked<'a> {
    key: SortKey,
    doc: Document,
    bytes: usize,
    sort: &'a arca_core::query::Sort,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort.compare(
            &self.key,
            self.doc.system.id.as_str(),
            &other.key,
            other.doc.system.id.as_str(),
        )
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

impl MongoStore {
    /// Prepares the client (the URI is parsed here; `mongodb+srv://`
    /// resolves DNS). The set of known collections is loaded by the first
    /// `collections`. Arca's defaults where the URI is
    /// silent: writes acknowledged by the majority and journaled, reads
    /// from the primary, server selection bounded by `timeout`.
    pub async fn connect(opts: &MongoOptions) -> Result<Self, StoreError> {
        let mut options = tokio::time::timeout(opts.timeout, ClientOptions::parse(&opts.uri))
            .await
            .map_err(|_| unavailable("resolving the MongoDB URI timed out"))?
            .map_err(|e| unavailable(format!("the MongoDB URI: {}", e.kind)))?;
        if options.write_concern.is_none() {
            options.write_concern = Some(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            );
        }
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(opts.timeout);
        }
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(opts.timeout);
        }
        if options.app_name.is_none() {
            options.app_name = Some("arca".into());
        }
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| "arca".into());
        let client = Client::with_options(options).map_err(|e| unavailable(e.kind))?;
        // No round trip here: the driver connects lazily, so a database
        // out of reach at start is met by the first operation (and the
        // server's readiness), not by a failed start.
        Ok(Self {
            db: client.database(&database),
            timeout: opts.timeout,
            read_timeout: opts.read_timeout,
            verify: opts.verify,
            known: RwLock::new(HashSet::new()),
            evaluators: std::sync::Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            idempotency_index: tokio::sync::OnceCell::new(),
        })
    }

    /// The database in use.
    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    fn coll(&self, name: &CollectionName) -> Collection<BsonDoc> {
        self.db.collection(name.as_str())
    }

    fn catalog(&self) -> Collection<BsonDoc> {
        self.db.collection(CATALOG)
    }

    /// Runs `fut` within the operation bound.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("the MongoDB operation timed out"))?
    }

    /// Runs a read within its bound: the server stops it at
    /// `read_timeout`; the client waits that and `timeout` more.
    async fn bounded_read<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.read_timeout + self.timeout, fut)
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    /// `CollectionMissing` unless the catalogue holds `name` (MongoDB would
    /// create a missing collection on the first write to it).
    /// (A name not seen yet is looked up in the catalogue once: another
    /// process may have defined it since this one last read the list.)
    async fn known(&self, name: &CollectionName) -> Result<(), StoreError> {
        if self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name.as_str())
        {
            return Ok(());
        }
        let defined = self
            .bounded(async {
                self.catalog()
                    .find_one(doc! {"_id": name.as_str()})
                    .projection(doc! {"_id": 1})
                    .await
                    .map_err(map_err)
            })
            .await?
            .is_some();
        if !defined {
            return Err(StoreError::CollectionMissing);
        }
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.as_str().to_owned());
        Ok(())
    }

    /// Rewrites a duplicate-key `Conflict` (holding the server's message)
    /// into one naming the fields of the index.
    async fn name_conflict(&self, coll: &CollectionName, err: StoreError) -> StoreError {
        let StoreError::Conflict(message) = &err else {
            return err;
        };
        let index = message
            .split("index: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        if index == "_id_" || index == TENANT_ID_INDEX {
            return StoreError::Conflict("_id".into());
        }
        let defs = self
            .catalog()
            .find_one(doc! {"_id": coll.as_str()})
            .await
            .ok()
            .flatten()
            .and_then(|d| d.get_str("def").ok().map(str::to_owned))
            .and_then(|d| serde_json::from_str::<CollectionRecord>(&d).ok())
            .map(|r| r.indexes)
            .unwrap_or_default();
        match defs.iter().find(|d| index_name(d) == index) {
            Some(d) => StoreError::Conflict(
                d.fields
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => StoreError::Conflict("a unique index".into()),
        }
    }

    /// After a conditional write matched nothing: `NotFound` or
    /// `RevMismatch`.
    async fn missing_or_moved(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> StoreError {
        let found = self
            .coll(coll)
            .find_one(doc! {"_id": value::stored_id(scope.tenant(), id)})
            .projection(doc! {"_rev": 1})
            .await;
        match found {
            Ok(Some(_)) => StoreError::RevMismatch,
            Ok(None) => StoreError::NotFound,
            Err(e) => map_err(e),
        }
    }

    /// The candidate filter of a scope and a client filter: the tenant,
    /// and the translation (with whether it is exact).
    fn candidates(&self, scope: &Scope, filter: &Filter) -> (BsonDoc, bool) {
        let translated = if self.verify {
            filter::filter_to_bson_loose(filter)
        } else {
            filter::filter_to_bson(filter)
        };
        (
            and(doc! {"_tenant": scope.tenant_key()}, translated.filter),
            translated.exact && !self.verify,
        )
    }

    /// Reconciles the collection's indexes with `indexes`: creates the
    /// missing ones first (a unique one meeting duplicates undoes what this
    /// call created and fails), then drops those no longer wanted.
    async fn reconcile_indexes(
        &self,
        name: &CollectionName,
        indexes: &[IndexDef],
    ) -> Result<(), StoreError> {
        let coll = self.coll(name);
        let existing: HashSet<String> = coll
            .list_index_names()
            .await
            .map_err(map_err)?
            .into_iter()
            .collect();
        let mut wanted: Vec<(String, IndexModel, Option<&IndexDef>)> = vec![(
            TENANT_ID_INDEX.into(),
            IndexModel::builder()
                .keys(doc! {"_tenant": 1, "_id.i": 1})
                .options(
                    IndexOptions::builder()
                        .name(TENANT_ID_INDEX.to_owned())
                        .build(),
                )
                .build(),
            None,
        )];
        for def in indexes {
            wanted.push((index_name(def), index_model(def), Some(def)));
        }
        let mut created = Vec::new();
        for (ix, model, def) in &wanted {
            if existing.contains(ix) {
                continue;
            }
            if let Err(e) = coll.create_index(model.clone()).await {
                for done in &created {
                    let _ = coll.drop_index(done).await;
                }
                return Err(match (server_code(&e), def) {
                    (Some(11000), Some(def)) => StoreError::DuplicatesForUniqueIndex(
                        def.fields
                            .iter()
                            .map(|(p, _)| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    _ => map_err(e),
                });
            }
            created.push(ix.clone());
        }
        for ix in existing.iter().filter(|n| n.starts_with("arca_")) {
            if !wanted.iter().any(|(w, _, _)| w == ix) {
                coll.drop_index(ix.clone()).await.map_err(map_err)?;
            }
        }
        Ok(())
    }

    /// Sets the collection's `$jsonSchema` validator (strict, error).
    async fn set_validator(
        &self,
        name: &CollectionName,
        schema_source: &Value,
        create: bool,
    ) -> Result<(), StoreError> {
        let translated = schema::validator(schema_source)
            .map_err(|e| unavailable(format!("the schema has no $jsonSchema form: {e:?}")))?;
        // Already `{$jsonSchema: ...}`.
        let validator = translated.validator;
        if create {
            self.db
                .create_collection(name.as_str())
                .validator(validator)
                .validation_level(ValidationLevel::Strict)
                .validation_action(ValidationAction::Error)
                .await
                .map_err(map_err)
        } else {
            self.db
                .run_command(doc! {
                    "collMod": name.as_str(),
                    "validator": validator,
                    "validationLevel": "strict",
                    "validationAction": "error",
                })
                .await
                .map(|_| ())
                .map_err(map_err)
        }
    }

    /// `Timeout` once a read started at `started` has run past
    /// `read_timeout`: checked between documents, so a read stops even on
    /// a server that does not enforce `maxTimeMS` for its plan.
    fn in_time(&self, started: Instant) -> Result<(), StoreError> {
        if started.elapsed() > self.read_timeout {
            Err(StoreError::Timeout)
        } else {
            Ok(())
        }
    }

    async fn find_docs(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError> {
        let started = Instant::now();
        self.known(coll).await?;
        let filter = scope.filter().clone().and(query.filter.clone());
        if matches!(filter.root(), Node::Nothing) || query.limit == 0 {
            return Ok(Vec::new());
        }
        let (mut candidates, exact) = self.candidates(scope, &filter);
        let sort = &query.sort;
        let limit = query.limit;
        if sort.is_by_id() {
            let desc = sort.fields().first().is_some_and(|(_, desc)| *desc);
            if let Some(after) = &query.after {
                // Within one tenant `_id.i` orders as `_id` does, and a
                // string range needs no comparison of embedded documents.
                candidates = and(
                    candidates,
                    doc! {"_id.i": {if desc { "$lt" } else { "$gt" }: after.id.as_str()}},
                );
            }
            let collection = self.coll(coll);
            let mut find = collection
                .find(candidates)
                .sort(doc! {"_id.i": if desc { -1 } else { 1 }})
                .max_time(self.read_timeout);
            if exact {
                find = find.limit(i64::try_from(limit).unwrap_or(i64::MAX));
            } else {
                find = find.batch_size(u32::try_from(limit.clamp(16, 1000)).unwrap_or(1000));
            }
            let mut cursor = find.await.map_err(map_err)?;
            let mut out = Vec::with_capacity(limit.min(64));
            let mut budget = PageBudget::new(query.max_bytes);
            while let Some((doc, bytes)) = next_stored(&mut cursor).await? {
                self.in_time(started)?;
                if exact || filter.matches_document(&doc) {
                    let more = budget.take(bytes);
                    out.push(doc);
                    if out.len() == limit || !more {
                        break;
                    }
                }
            }
            self.in_time(started)?;
            return Ok(out);
        }
        // Another order: every candidate past the cursor is ranked and the
        // best `limit` kept (memory O(limit) whatever the collection).
        let mut cursor = self
            .coll(coll)
            .find(candidates)
            .max_time(self.read_timeout)
            .batch_size(1000)
            .await
            .map_err(map_err)?;
        let after = query
            .after
            .as_ref()
            .map(|c| (SortKey(c.key.clone()), c.id.clone()));
        let mut best: BinaryHeap<Ranked<'_>> = BinaryHeap::new();
        let mut held = 0usize;
        while let Some((doc, bytes)) = next_stored(&mut cursor).await? {
            self.in_time(started)?;
            if !exact && !filter.matches_document(&doc) {
                continue;
            }
            let key = sort.key_document(&doc);
            let past = after.as_ref().is_none_or(|(k, id)| {
                sort.compare(&key, doc.system.id.as_str(), k, id) == std::cmp::Ordering::Greater
            });
            if !past {
                continue;
            }
            let entry = Ranked {
                key,
                doc,
                bytes,
                sort,
            };
            if best.len() < limit || best.peek().is_some_and(|worst| entry < *worst) {
                held += entry.bytes;
                best.push(entry);
                if best.len() > limit
                    && let Some(worst) = best.pop()
                {
                    held -= worst.bytes;
                }
                if let Some(max) = query.max_bytes {
                    trim_to_budget(&mut best, &mut held, max, |r| r.bytes);
                }
            }
        }
        self.in_time(started)?;
        Ok(best.into_sorted_vec().into_iter().map(|r| r.doc).collect())
    }

    async fn count_docs(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        self.known(coll).await?;
        let filter = scope.filter().clone().and(filter.clone());
        if matches!(filter.root(), Node::Nothing) {
            return Ok(0);
        }
        let (candidates, exact) = self.candidates(scope, &filter);
        if exact {
            let n = self
                .coll(coll)
                .count_documents(candidates)
                .max_time(self.read_timeout)
                .await
                .map_err(map_err)?;
            self.in_time(started)?;
            return Ok(n);
        }
        let mut cursor = self
            .coll(coll)
            .find(candidates)
            .max_time(self.read_timeout)
            .batch_size(1000)
            .await
            .map_err(map_err)?;
        let mut n = 0u64;
        while let Some(raw) = cursor.try_next().await.map_err(map_err)? {
            self.in_time(started)?;
            let doc = value::from_stored(&raw).map_err(|e| unavailable(format!("{e:?}")))?;
            if filter.matches_document(&doc) {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The next document of `cursor`, with its size as JSON (the measure of
/// a page's byte budget on every engine: `arca_core::document::json_len`).
async fn next_stored(
    cursor: &mut mongodb::Cursor<BsonDoc>,
) -> Result<Option<(Document, usize)>, StoreError> {
    let Some(stored) = cursor.try_next().await.map_err(map_err)? else {
        return Ok(None);
    };
    let doc = value::from_stored(&stored).map_err(|e| unavailable(format!("{e:?}")))?;
    let bytes =
        arca_core::document::json_len(&doc.system, arca_core::document::body_len(&doc.body));
    Ok(Some((doc, bytes)))
}

/// FNV-1a over the catalogue's (name, nonce) pairs: the generation.
fn fingerprint(pairs: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, nonce) in pairs {
        for b in name.bytes().chain([0]).chain(nonce.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// How many times a claim is tried again when the record it saw changed
/// under it (another process claimed, finished or dropped it meanwhile).
const CLAIM_ATTEMPTS: usize = 8;

/// The `_id` of a key's record.
fn idempotency_id(key: &IdempotencyKey) -> BsonDoc {
    doc! {"t": &key.tenant, "s": &key.subject, "k": &key.key}
}

fn date(ms: i64) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(ms)
}

/// A new record for `claim` (running, no response yet).
fn running_record(claim: &IdempotencyClaim<'_>, expires_at: i64) -> BsonDoc {
    doc! {
        "_id": idempotency_id(claim.key),
        "fp": claim.fingerprint,
        "run": claim.run,
        "lease": date(claim.lease_until),
        "exp": date(expires_at),
        "done": false,
    }
}

/// The kept response of a finished record.
fn stored_response(record: &BsonDoc) -> Result<StoredResponse, StoreError> {
    let status = match record.get("status") {
        Some(Bson::Int32(n)) => u16::try_from(*n).ok(),
        Some(Bson::Int64(n)) => u16::try_from(*n).ok(),
        _ => None,
    }
    .ok_or_else(|| unavailable("a kept response has no status"))?;
    let mut headers = Vec::new();
    if let Ok(list) = record.get_array("headers") {
        for pair in list {
            if let Bson::Array(p) = pair
                && let [Bson::String(name), Bson::String(value)] = p.as_slice()
            {
                headers.push((name.clone(), value.clone()));
            }
        }
    }
    let body = match record.get("body") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => Vec::new(),
    };
    Ok(StoredResponse {
        status,
        headers,
        body,
    })
}

impl MongoStore {
    fn idempotency(&self) -> Collection<BsonDoc> {
        self.db.collection(IDEMPOTENCY)
    }

    /// The index on `exp`: a TTL index (`expireAfterSeconds: 0`), so a
    /// MongoDB server drops expired records itself; `idempotency_purge`
    /// uses it too (for servers without a TTL monitor). Made once per
    /// process; a failure is logged and retried at the next record.
    async fn ensure_idempotency_index(&self) {
        let made = self
            .idempotency_index
            .get_or_try_init(|| async {
                let model = IndexModel::builder()
                    .keys(doc! {"exp": 1})
                    .options(
                        IndexOptions::builder()
                            .name("arca_expiry".to_owned())
                            .expire_after(Duration::ZERO)
                            .build(),
                    )
                    .build();
                self.idempotency()
                    .create_index(model)
                    .await
                    .map(|_| ())
                    .map_err(map_err)
            })
            .await;
        if let Err(e) = made {
            tracing::warn!(error = %e, "creating the idempotency records' expiry index failed");
        }
    }

    async fn claim(&self, claim: &IdempotencyClaim<'_>) -> Result<IdempotencyBegin, StoreError> {
        let records = self.idempotency();
        let id = idempotency_id(claim.key);
        for _ in 0..CLAIM_ATTEMPTS {
            match records
                .insert_one(running_record(claim, claim.expires_at))
                .await
            {
                Ok(_) => return Ok(IdempotencyBegin::Started),
                Err(e) if server_code(&e) == Some(11000) => {}
                Err(e) => return Err(map_err(e)),
            }
            let Some(rec) = records.find_one(doc! {"_id": &id}).await.map_err(map_err)? else {
                // Dropped meanwhile (released or purged): insert again.
                continue;
            };
            let ms = |field: &str| rec.get_datetime(field).map_or(0, |d| d.timestamp_millis());
            let seen_run = rec.get_str("run").unwrap_or_default().to_owned();
            let (expires_at, lease_until) = (ms("exp"), ms("lease"));
            let expired = expires_at <= claim.now;
            if !expired {
                if rec.get_str("fp").unwrap_or_default() != claim.fingerprint {
                    return Ok(IdempotencyBegin::Mismatch);
                }
                if rec.get_bool("done").unwrap_or(false) {
                    return Ok(IdempotencyBegin::Done(stored_response(&rec)?));
                }
                if lease_until > claim.now {
                    return Ok(IdempotencyBegin::Running);
                }
            }
            // Expired (a new record), or a run whose lease passed (taken
            // over, keeping the first run's expiry): replaced only if the
            // record is still the one seen.
            let keep = if expired {
                claim.expires_at
            } else {
                expires_at
            };
            let mut seen = doc! {"_id": &id, "run": &seen_run};
            if !expired {
                seen.insert("done", false);
            }
            let replaced = records
                .replace_one(seen, running_record(claim, keep))
                .await
                .map_err(map_err)?;
            if replaced.matched_count == 1 {
                return Ok(IdempotencyBegin::Started);
            }
        }
        // The record kept changing under this claim: another run is at it.
        Ok(IdempotencyBegin::Running)
    }
}

#[async_trait::async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            self.db
                .run_command(doc! {"ping": 1})
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn catalog_generation(&self) -> Result<u64, StoreError> {
        self.bounded(async {
            let mut cursor = self
                .catalog()
                .find(doc! {})
                .projection(doc! {"nonce": 1})
                .sort(doc! {"_id": 1})
                .await
                .map_err(map_err)?;
            let mut pairs = Vec::new();
            while let Some(d) = cursor.try_next().await.map_err(map_err)? {
                pairs.push((
                    d.get_str("_id").unwrap_or_default().to_owned(),
                    d.get_str("nonce").unwrap_or_default().to_owned(),
                ));
            }
            Ok(fingerprint(&pairs))
        })
        .await
    }

    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError> {
        let all = self
            .bounded(async {
                let mut cursor = self
                    .catalog()
                    .find(doc! {})
                    .sort(doc! {"_id": 1})
                    .await
                    .map_err(map_err)?;
                let mut out = Vec::new();
                while let Some(d) = cursor.try_next().await.map_err(map_err)? {
                    let name = d.get_str("_id").unwrap_or_default();
                    let parsed = (
                        CollectionName::parse(name),
                        d.get_str("def")
                            .ok()
                            .and_then(|t| serde_json::from_str::<CollectionRecord>(t).ok()),
                    );
                    let (Ok(name), Some(rec)) = parsed else {
                        tracing::error!(collection = %name, "unreadable collection definition skipped");
                        continue;
                    };
                    out.push(StoredCollection {
                        name,
                        schema: rec.schema,
                        indexes: rec.indexes,
                        access: rec.access,
                        created_at: d.get_str("created_at").unwrap_or_default().to_owned(),
                        updated_at: d.get_str("updated_at").unwrap_or_default().to_owned(),
                    });
                }
                Ok(out)
            })
            .await?;
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        *known = all.iter().map(|c| c.name.as_str().to_owned()).collect();
        Ok(all)
    }

    async fn put_collection(&self, spec: CollectionSpec<'_>) -> Result<PutOutcome, StoreError> {
        let record = serde_json::to_string(&CollectionRecord {
            schema: spec.schema.clone(),
            indexes: spec.indexes.to_vec(),
            access: spec.access.clone(),
        })
        .map_err(unavailable)?;
        let name = spec.name;
        let outcome = self
            .bounded(async {
                let existed = self
                    .catalog()
                    .find_one(doc! {"_id": name.as_str()})
                    .await
                    .map_err(map_err)?
                    .is_some();
                if !existed {
                    // The catalogue is authoritative: a collection of this
                    // name without an entry is left from an interrupted
                    // delete, or was created by a write racing one.
                    match self.coll(name).drop().await {
                        Ok(()) => {}
                        Err(e) if server_code(&e) == Some(26) => {}
                        Err(e) => return Err(map_err(e)),
                    }
                    self.set_validator(name, spec.schema, true).await?;
                }
                self.reconcile_indexes(name, spec.indexes).await?;
                if existed {
                    self.set_validator(name, spec.schema, false).await?;
                }
                let nonce = format!("{:032x}", rand::random::<u128>());
                self.catalog()
                    .update_one(
                        doc! {"_id": name.as_str()},
                        doc! {
                            "$set": {"def": &record, "updated_at": spec.at, "nonce": nonce},
                            "$setOnInsert": {"created_at": spec.created_at.unwrap_or(spec.at)},
                        },
                    )
                    .upsert(true)
                    .await
                    .map_err(map_err)?;
                Ok(if existed {
                    PutOutcome::Updated
                } else {
                    PutOutcome::Created
                })
            })
            .await?;
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.as_str().to_owned());
        Ok(outcome)
    }

    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError> {
        let existed = self
            .bounded(async {
                let removed = self
                    .catalog()
                    .delete_one(doc! {"_id": name.as_str()})
                    .await
                    .map_err(map_err)?;
                match self.coll(name).drop().await {
                    Ok(()) => {}
                    Err(e) if server_code(&e) == Some(26) => {}
                    Err(e) => return Err(map_err(e)),
                }
                Ok(removed.deleted_count == 1)
            })
            .await?;
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name.as_str());
        Ok(existed)
    }

    async fn insert(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
    ) -> Result<(), StoreError> {
        self.known(coll).await?;
        let stored = value::to_stored(doc, scope.tenant())
            .map_err(|e| unavailable(format!("a document BSON cannot hold: {e:?}")))?;
        let result = self
            .bounded(async {
                self.coll(coll)
                    .insert_one(stored)
                    .await
                    .map(|_| ())
                    .map_err(map_err)
            })
            .await;
        match result {
            Err(e @ StoreError::Conflict(_)) => Err(self.name_conflict(coll, e).await),
            other => other,
        }
    }

    async fn get(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<Document>, StoreError> {
        self.known(coll).await?;
        let raw = self
            .bounded_read(async {
                self.coll(coll)
                    .find_one(doc! {"_id": value::stored_id(scope.tenant(), id)})
                    .max_time(self.read_timeout)
                    .await
                    .map_err(map_err)
            })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let doc = value::from_stored(&raw).map_err(|e| unavailable(format!("{e:?}")))?;
        // Outside the row filter is the same as absent: no existence leaks.
        Ok(Some(doc).filter(|d| scope.filter().matches_document(d)))
    }

    async fn replace(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: &Document,
        expected_rev: u64,
    ) -> Result<(), StoreError> {
        self.known(coll).await?;
        let stored = value::to_stored(doc, scope.tenant())
            .map_err(|e| unavailable(format!("a document BSON cannot hold: {e:?}")))?;
        let rev = i64::try_from(expected_rev).unwrap_or(i64::MAX);
        let id = &doc.system.id;
        let result = self
            .bounded(async {
                self.coll(coll)
                    .replace_one(
                        doc! {"_id": value::stored_id(scope.tenant(), id), "_rev": rev},
                        stored,
                    )
                    .await
                    .map_err(map_err)
            })
            .await;
        match result {
            Ok(r) if r.matched_count == 1 => Ok(()),
            Ok(_) => Err(self.missing_or_moved(coll, scope, id).await),
            Err(e @ StoreError::Conflict(_)) => Err(self.name_conflict(coll, e).await),
            Err(e) => Err(e),
        }
    }

    async fn delete(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: Option<u64>,
    ) -> Result<Document, StoreError> {
        self.known(coll).await?;
        let mut filter = doc! {"_id": value::stored_id(scope.tenant(), id)};
        if let Some(rev) = expected_rev {
            filter.insert("_rev", i64::try_from(rev).unwrap_or(i64::MAX));
        }
        let removed = self
            .bounded(async {
                self.coll(coll)
                    .find_one_and_delete(filter)
                    .await
                    .map_err(map_err)
            })
            .await?;
        match removed {
            Some(raw) => value::from_stored(&raw).map_err(|e| unavailable(format!("{e:?}"))),
            None => Err(self.missing_or_moved(coll, scope, id).await),
        }
    }

    async fn find(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError> {
        self.bounded_read(self.find_docs(coll, scope, query)).await
    }

    async fn count(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        self.bounded_read(self.count_docs(coll, scope, filter))
            .await
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let candidate = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: rand::random::<[u8; 32]>().to_vec(),
        };
        let kept = self
            .bounded(async {
                self.db
                    .collection::<BsonDoc>("_arca_secrets")
                    .find_one_and_update(
                        doc! {"_id": name},
                        doc! {"$setOnInsert": {"value": candidate}},
                    )
                    .upsert(true)
                    .return_document(mongodb::options::ReturnDocument::After)
                    .await
                    .map_err(map_err)
            })
            .await?;
        match kept.as_ref().and_then(|d| d.get("value")) {
            Some(Bson::Binary(b)) => b
                .bytes
                .clone()
                .try_into()
                .map_err(|_| unavailable(format!("the secret {name:?} is not 32 bytes"))),
            _ => Err(unavailable(format!("the secret {name:?} was not kept"))),
        }
    }

    async fn export(
        &self,
        coll: &CollectionName,
        after: Option<&ExportPosition>,
        limit: usize,
    ) -> Result<Vec<(Tenant, Document)>, StoreError> {
        self.known(coll).await?;
        let filter = match after {
            // String comparisons only (no embedded-document ordering), on
            // the {_tenant, _id.i} index.
            Some(p) => doc! {"$or": [
                {"_tenant": {"$gt": p.tenant.as_str()}},
                {"_tenant": p.tenant.as_str(), "_id.i": {"$gt": p.id.as_str()}},
            ]},
            None => doc! {},
        };
        self.bounded_read(async {
            let mut cursor = self
                .coll(coll)
                .find(filter)
                .sort(doc! {"_tenant": 1, "_id.i": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(raw) = cursor.try_next().await.map_err(map_err)? {
                let key = value::stored_tenant(&raw)
                    .map_err(|e| unavailable(format!("{e:?}")))?
                    .to_owned();
                let doc = value::from_stored(&raw).map_err(|e| unavailable(format!("{e:?}")))?;
                out.push((crate::tenant_of_key(&key)?, doc));
            }
            Ok(out)
        })
        .await
    }

    async fn aggregate(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &arca_core::pipeline::Pipeline,
        lookups: &crate::LookupScopes,
        limits: &crate::AggregateLimits,
    ) -> Result<Vec<Value>, StoreError> {
        self.aggregate_docs(coll, scope, pipeline, lookups, limits)
            .await
    }

    // ---- Idempotency keys (issue 22) ----

    async fn idempotency_begin(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.ensure_idempotency_index().await;
        self.bounded(self.claim(claim)).await
    }

    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let headers: Vec<Bson> = response
            .headers
            .iter()
            .map(|(n, v)| Bson::Array(vec![Bson::String(n.clone()), Bson::String(v.clone())]))
            .collect();
        let body = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: response.body.clone(),
        };
        let updated = self
            .bounded(async {
                self.idempotency()
                    .update_one(
                        doc! {"_id": idempotency_id(key), "run": run, "done": false},
                        doc! {"$set": {
                            "done": true,
                            "status": i32::from(response.status),
                            "headers": headers,
                            "body": body,
                        }},
                    )
                    .await
                    .map_err(map_err)
            })
            .await?;
        Ok(updated.matched_count == 1)
    }

    async fn idempotency_renew(
        &self,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let updated = self
            .bounded(async {
                self.idempotency()
                    .update_one(
                        doc! {"_id": idempotency_id(key), "run": run, "done": false},
                        doc! {"$set": {"lease": date(lease_until)}},
                    )
                    .await
                    .map_err(map_err)
            })
            .await?;
        Ok(updated.matched_count == 1)
    }

    async fn idempotency_release(&self, key: &IdempotencyKey, run: &str) -> Result<(), StoreError> {
        self.bounded(async {
            self.idempotency()
                .delete_one(doc! {"_id": idempotency_id(key), "run": run, "done": false})
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn idempotency_purge(&self, now: i64, limit: usize) -> Result<u64, StoreError> {
        self.bounded(async {
            // `deleteMany` has no limit: the ids of a bounded batch first.
            let mut cursor = self
                .idempotency()
                .find(doc! {"exp": {"$lte": date(now)}})
                .projection(doc! {"_id": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(map_err)?;
            let mut ids = Vec::new();
            while let Some(d) = cursor.try_next().await.map_err(map_err)? {
                if let Some(id) = d.get("_id") {
                    ids.push(id.clone());
                }
            }
            if ids.is_empty() {
                return Ok(0);
            }
            let removed = self
                .idempotency()
                .delete_many(doc! {"_id": {"$in": ids}, "exp": {"$lte": date(now)}})
                .await
                .map_err(map_err)?;
            Ok(removed.deleted_count)
        })
        .await
    }
}
