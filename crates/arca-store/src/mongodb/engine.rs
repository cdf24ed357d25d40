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
//!
//! Change events: a log collection, `_arca_events` (`{c, s, k, t, i, b, a,
//! at}`, unique on `{c, s}`), written in the same multi-document
//! transaction as each document write, with the collection's position
//! counter and floor in `_arca_event_seq` (`{_id: name, seq, floor}`).
//! Transactions need a replica set (a single-node one will do); change
//! streams would too, and the test stand-in has none, so the log is a
//! collection every replica reads. The counter is incremented inside the
//! transaction, so two writes to one collection conflict on it and one is
//! retried: positions follow commit order (the price: the writes of one
//! collection commit one at a time). Stream tickets are in `_arca_tickets`.

use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mongodb::ClientSession;
use mongodb::options::ReturnDocument;

use arca_core::query::{Filter, Node, SortKey};
use arca_core::{CollectionName, DocId, Document, FileId, IndexDef, Scope, Tenant};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document as BsonDoc, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, IndexOptions, ValidationAction, ValidationLevel, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use serde_json::Value;

use super::files::{self, Bucket, GridFsWriter};
use super::{filter, schema, value};

mod aggregate;

use crate::{
    ByteStream, ChangeKind, CollectionSpec, EventPage, ExportPosition, FileMeta, FileWriter,
    IdempotencyBegin, IdempotencyClaim, IdempotencyKey, PageBudget, PutOutcome, Query, Store,
    StoreError, StoredCollection, StoredEvent, StoredResponse, ThumbKey, TicketRecord,
    trim_to_budget,
};

/// The catalogue collection.
const CATALOG: &str = "_arca_collections";

/// The internal index every collection has (listings in `_id` order).
const TENANT_ID_INDEX: &str = "arca_tenant_id";

/// The event log.
const EVENTS: &str = "_arca_events";

/// Each collection's event position counter and floor.
const EVENT_SEQ: &str = "_arca_event_seq";

/// Stream tickets.
const TICKETS: &str = "_arca_tickets";
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
    /// Whether document writes append to the event log (in a transaction).
    event_log: bool,
    /// Set once the event log's collections and index exist (collections
    /// are not created inside transactions).
    events_ready: tokio::sync::OnceCell<()>,
    /// One logged write per collection at a time in this process: they
    /// would conflict on the collection's counter anyway, and waiting in
    /// line costs less than failing and retrying (a retry storm when many
    /// requests write one collection). Writes through other processes
    /// still conflict, and are retried. One entry per collection written.
    write_lines: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Places for aggregations the engine evaluates itself, one per CPU
    /// (see `aggregate`).
    evaluators: std::sync::Arc<tokio::sync::Semaphore>,
    /// The GridFS bucket's indexes were made (once per process).
    file_indexes: tokio::sync::OnceCell<()>,
    /// Whether the idempotency records' expiry index was made (once per
    /// process, at the first record).
    idempotency_index: tokio::sync::OnceCell<()>,
}

/// Why one attempt at a transaction did not commit.
enum TxError {
    /// The server's error (retried when it is transient).
    Driver(mongodb::error::Error),
    /// A final answer (not found, a conflict named).
    Store(StoreError),
    /// Lost a race the retry resolves (the collection's counter was made
    /// by a concurrent write).
    Retry,
}

impl From<mongodb::error::Error> for TxError {
    fn from(e: mongodb::error::Error) -> Self {
        TxError::Driver(e)
    }
}

/// An entry to append to the event log inside a transaction.
struct Entry {
    kind: ChangeKind,
    tenant: String,
    id: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

/// Whether a transaction's failure is worth a new attempt: MongoDB's
/// transient label and write conflicts (112), and the stand-in's write
/// conflict at commit (code 8 with that message, and no label).
fn transient(e: &mongodb::error::Error) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || server_code(e) == Some(112)
        || (server_code(e) == Some(8) && server_message(e).contains("Write conflict"))
}

/// A driver error met in a transaction, as a store error: a server that
/// cannot run transactions (a standalone, code 20) is told plainly.
fn map_tx_err(e: mongodb::error::Error) -> StoreError {
    if server_code(&e) == Some(20) || server_message(&e).contains("replica set member") {
        return unavailable(
            "MongoDB refused a transaction: the event log needs a replica set (a single-node \
             replica set will do), or set events.enabled = false",
        );
    }
    map_err(e)
}

/// An integer field (`Int32` or `Int64`) as a position.
fn position(d: &BsonDoc, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// A position as BSON.
fn pos_bson(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An optional string field.
fn opt_str(d: &BsonDoc, key: &str) -> Option<String> {
    match d.get(key) {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A stored event log entry read back.
fn stored_event(d: &BsonDoc) -> Result<StoredEvent, StoreError> {
    let kind = match d.get("k") {
        Some(Bson::Int32(k)) => i64::from(*k),
        Some(Bson::Int64(k)) => *k,
        _ => return Err(unavailable("an event log entry has no kind")),
    };
    let id = match opt_str(d, "i") {
        Some(raw) => Some(
            DocId::parse(&raw)
                .map_err(|_| unavailable(format!("an event log entry names the id {raw:?}")))?,
        ),
        None => None,
    };
    Ok(StoredEvent {
        seq: position(d, "s"),
        kind: ChangeKind::of_code(kind)?,
        tenant: opt_str(d, "t").unwrap_or_default(),
        id,
        before: opt_str(d, "b"),
        after: opt_str(d, "a"),
    })
}

/// A document's JSON as clients see it (the event log's `before`/`after`).
fn client_json(doc: &Document) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| unavailable(format!("a document as JSON: {e}")))
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
pub(super) fn map_err(e: mongodb::error::Error) -> StoreError {
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
            event_log: true,
            events_ready: tokio::sync::OnceCell::new(),
            write_lines: std::sync::Mutex::default(),
            evaluators: std::sync::Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            file_indexes: tokio::sync::OnceCell::new(),
            idempotency_index: tokio::sync::OnceCell::new(),
        })
    }

    /// The GridFS bucket `files`.
    fn bucket(&self) -> Bucket {
        Bucket::of(&self.db)
    }

    /// The files document of `id` in the scope's tenant.
    async fn files_document(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Option<BsonDoc>, StoreError> {
        self.bounded_read(async {
            self.bucket()
                .files
                .find_one(doc! {"_id": files::file_key(scope.tenant(), id)})
                .max_time(self.read_timeout)
                .await
                .map_err(map_err)
        })
        .await
    }

    /// Makes the files bucket's indexes, once per process, before the first
    /// upload or listing (a listing without its index would sort the
    /// tenant's files in memory), and starts the sweep of what crashes
    /// left, in the background.
    async fn ensure_file_indexes(&self) -> Result<(), StoreError> {
        let bucket = self.bucket();
        self.file_indexes
            .get_or_try_init(|| {
                self.bounded(async {
                    bucket.ensure_indexes().await.map_err(map_err)?;
                    tokio::spawn(files::sweep(self.bucket()));
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    /// Turns the event log on (the default) or off: off, document writes
    /// run without a transaction (a standalone server will do) and append
    /// nothing to the log. Every process on one database should agree.
    pub fn with_event_log(mut self, on: bool) -> Self {
        self.event_log = on;
        self
    }

    /// Creates the event log's collections and index once per process.
    async fn ensure_event_log(&self) -> Result<(), StoreError> {
        self.events_ready
            .get_or_try_init(|| async {
                for name in [EVENTS, EVENT_SEQ] {
                    match self.db.create_collection(name).await {
                        Ok(()) => {}
                        // NamespaceExists.
                        Err(e) if server_code(&e) == Some(48) => {}
                        Err(e) if server_message(&e).contains("already exists") => {}
                        Err(e) => return Err(map_err(e)),
                    }
                }
                self.db
                    .collection::<BsonDoc>(EVENTS)
                    .create_index(
                        IndexModel::builder()
                            .keys(doc! {"c": 1, "s": 1})
                            .options(
                                IndexOptions::builder()
                                    .name("arca_events_cs".to_owned())
                                    .unique(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .await
                    .map_err(map_err)?;
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Runs `attempt` in a transaction until it commits, fails for good,
    /// or `store.timeout` passes: transient failures (write conflicts, a
    /// lost counter race) are retried with a growing pause. `attempt` gets
    /// the session and gives it back with its result.
    async fn transact<T, F, Fut>(&self, coll: &str, mut attempt: F) -> Result<T, StoreError>
    where
        T: Send,
        F: FnMut(ClientSession) -> Fut + Send,
        Fut: Future<Output = (ClientSession, Result<T, TxError>)> + Send,
    {
        self.ensure_event_log().await?;
        let line = self
            .write_lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(coll.to_owned())
            .or_default()
            .clone();
        self.bounded(async {
            let _turn = line.lock().await;
            self.transact_unbounded(&mut attempt).await
        })
        .await
    }

    async fn transact_unbounded<T, F, Fut>(&self, attempt: &mut F) -> Result<T, StoreError>
    where
        T: Send,
        F: FnMut(ClientSession) -> Fut + Send,
        Fut: Future<Output = (ClientSession, Result<T, TxError>)> + Send,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let mut session = self.db.client().start_session().await.map_err(map_tx_err)?;
            session.start_transaction().await.map_err(map_tx_err)?;
            let (mut session, result) = attempt(session).await;
            match result {
                Ok(value) => match commit(&mut session).await {
                    Ok(()) => return Ok(value),
                    Err(e) if transient(&e) => {
                        tracing::debug!(error = %e, "a transaction's commit conflicted; retrying");
                    }
                    Err(e) => return Err(map_tx_err(e)),
                },
                Err(failure) => {
                    let _ = session.abort_transaction().await;
                    match failure {
                        TxError::Retry => {}
                        TxError::Driver(e) if transient(&e) => {
                            tracing::debug!(error = %e, "a transaction conflicted; retrying");
                        }
                        TxError::Driver(e) => return Err(map_tx_err(e)),
                        TxError::Store(e) => return Err(e),
                    }
                }
            }
            if started.elapsed() + pause > self.timeout {
                return Err(unavailable(
                    "a write kept conflicting with concurrent writes to its collection",
                ));
            }
            // Full jitter: writers that collided spread out.
            let cap = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX).max(1);
            tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % cap)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Appends `entry` at the collection's next position, in `session`'s
    /// transaction; the position.
    async fn append(
        &self,
        session: &mut ClientSession,
        coll: &str,
        entry: Entry,
    ) -> Result<u64, TxError> {
        let counter = self
            .db
            .collection::<BsonDoc>(EVENT_SEQ)
            .find_one_and_update(doc! {"_id": coll}, doc! {"$inc": {"seq": 1_i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await;
        let counter = match counter {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(TxError::Store(unavailable(
                    "the event counter was not kept",
                )));
            }
            // Two first writes made the counter at once: the loser retries.
            Err(e) if server_code(&e) == Some(11000) => return Err(TxError::Retry),
            Err(e) => return Err(TxError::Driver(e)),
        };
        let seq = position(&counter, "seq");
        let opt = |v: Option<String>| v.map_or(Bson::Null, Bson::String);
        self.db
            .collection::<BsonDoc>(EVENTS)
            .insert_one(doc! {
                "c": coll,
                "s": pos_bson(seq),
                "k": entry.kind.code(),
                "t": entry.tenant,
                "i": opt(entry.id),
                "b": opt(entry.before),
                "a": opt(entry.after),
                "at": pos_bson(crate::now_ms()),
            })
            .session(&mut *session)
            .await?;
        Ok(seq)
    }

    /// Removes what crashes left in the files bucket (see
    /// `files::sweep`): how many files' stale chunks and orphan thumbnails
    /// went. Each process runs it once in the background at its first
    /// upload; operators and tests may run it any time.
    pub async fn sweep_files(&self) -> (u64, u64) {
        files::sweep(self.bucket()).await
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
        if existed && self.event_log {
            // The log ends with `Dropped`, the floor on it, the rest gone
            // (after the transaction: it can be large, and the floor
            // already hides it).
            let seq = self
                .transact(name.as_str(), |mut s| async move {
                    let r = async {
                        let entry = Entry {
                            kind: ChangeKind::Dropped,
                            tenant: String::new(),
                            id: None,
                            before: None,
                            after: None,
                        };
                        let seq = self.append(&mut s, name.as_str(), entry).await?;
                        self.db
                            .collection::<BsonDoc>(EVENT_SEQ)
                            .update_one(
                                doc! {"_id": name.as_str()},
                                doc! {"$max": {"floor": pos_bson(seq)}},
                            )
                            .session(&mut s)
                            .await?;
                        Ok(seq)
                    }
                    .await;
                    (s, r)
                })
                .await?;
            self.bounded(async {
                self.db
                    .collection::<BsonDoc>(EVENTS)
                    .delete_many(doc! {"c": name.as_str(), "s": {"$lt": pos_bson(seq)}})
                    .await
                    .map_err(map_err)
            })
            .await?;
        }
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
        let result = if self.event_log {
            let after = client_json(doc)?;
            let (tenant, id) = (
                scope.tenant_key().to_owned(),
                doc.system.id.as_str().to_owned(),
            );
            self.transact(coll.as_str(), |mut s| {
                let (stored, after, tenant, id) =
                    (stored.clone(), after.clone(), tenant.clone(), id.clone());
                async move {
                    let r = async {
                        match self.coll(coll).insert_one(stored).session(&mut s).await {
                            Ok(_) => {}
                            Err(e) if server_code(&e) == Some(11000) => {
                                return Err(TxError::Store(map_err(e)));
                            }
                            Err(e) => return Err(e.into()),
                        }
                        let entry = Entry {
                            kind: ChangeKind::Created,
                            tenant,
                            id: Some(id),
                            before: None,
                            after: Some(after),
                        };
                        self.append(&mut s, coll.as_str(), entry).await.map(|_| ())
                    }
                    .await;
                    (s, r)
                }
            })
            .await
        } else {
            self.bounded(async {
                self.coll(coll)
                    .insert_one(stored)
                    .await
                    .map(|_| ())
                    .map_err(map_err)
            })
            .await
        };
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
        if self.event_log {
            let after = client_json(doc)?;
            let filter = doc! {"_id": value::stored_id(scope.tenant(), id), "_rev": rev};
            let tenant = scope.tenant_key().to_owned();
            let result = self
                .transact(coll.as_str(), |mut s| {
                    let (stored, after, tenant, filter) = (
                        stored.clone(),
                        after.clone(),
                        tenant.clone(),
                        filter.clone(),
                    );
                    async move {
                        let r = async {
                            let replaced = self
                                .coll(coll)
                                .find_one_and_replace(filter, stored)
                                .return_document(ReturnDocument::Before)
                                .session(&mut s)
                                .await;
                            let before = match replaced {
                                Ok(Some(raw)) => value::from_stored(&raw)
                                    .map_err(|e| TxError::Store(unavailable(format!("{e:?}"))))?,
                                // Told apart outside the transaction.
                                Ok(None) => return Err(TxError::Store(StoreError::NotFound)),
                                Err(e) if server_code(&e) == Some(11000) => {
                                    return Err(TxError::Store(map_err(e)));
                                }
                                Err(e) => return Err(e.into()),
                            };
                            let entry = Entry {
                                kind: ChangeKind::Updated,
                                tenant,
                                id: Some(id.as_str().to_owned()),
                                before: Some(client_json(&before).map_err(TxError::Store)?),
                                after: Some(after),
                            };
                            self.append(&mut s, coll.as_str(), entry).await.map(|_| ())
                        }
                        .await;
                        (s, r)
                    }
                })
                .await;
            return match result {
                Ok(()) => Ok(()),
                Err(StoreError::NotFound) => Err(self.missing_or_moved(coll, scope, id).await),
                Err(e @ StoreError::Conflict(_)) => Err(self.name_conflict(coll, e).await),
                Err(e) => Err(e),
            };
        }
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
        if self.event_log {
            let tenant = scope.tenant_key().to_owned();
            let result = self
                .transact(coll.as_str(), |mut s| {
                    let (filter, tenant) = (filter.clone(), tenant.clone());
                    async move {
                        let r = async {
                            let removed = self
                                .coll(coll)
                                .find_one_and_delete(filter)
                                .session(&mut s)
                                .await?;
                            let Some(raw) = removed else {
                                return Err(TxError::Store(StoreError::NotFound));
                            };
                            let doc = value::from_stored(&raw)
                                .map_err(|e| TxError::Store(unavailable(format!("{e:?}"))))?;
                            let entry = Entry {
                                kind: ChangeKind::Deleted,
                                tenant,
                                id: Some(id.as_str().to_owned()),
                                before: Some(client_json(&doc).map_err(TxError::Store)?),
                                after: None,
                            };
                            self.append(&mut s, coll.as_str(), entry).await?;
                            Ok(doc)
                        }
                        .await;
                        (s, r)
                    }
                })
                .await;
            return match result {
                Err(StoreError::NotFound) => Err(self.missing_or_moved(coll, scope, id).await),
                other => other,
            };
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

    async fn rotate_secret(&self, name: &str) -> Result<(), StoreError> {
        let current = self.secret(name).await?;
        let binary = |bytes: [u8; 32]| mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: bytes.to_vec(),
        };
        let secrets = self.db.collection::<BsonDoc>("_arca_secrets");
        self.bounded(async {
            // The previous key first: a crash between the two writes
            // leaves the old key current, never lost.
            secrets
                .update_one(
                    doc! {"_id": format!("{name}.previous")},
                    doc! {"$set": {"value": binary(current)}},
                )
                .upsert(true)
                .await
                .map_err(map_err)?;
            secrets
                .update_one(
                    doc! {"_id": name, "value": binary(current)},
                    doc! {"$set": {"value": binary(rand::random::<[u8; 32]>())}},
                )
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn begin_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Box<dyn FileWriter>, StoreError> {
        self.ensure_file_indexes().await?;
        Ok(Box::new(GridFsWriter {
            bucket: self.bucket(),
            tenant: scope.tenant().clone(),
            key: files::file_key(scope.tenant(), id),
            buffer: Vec::new(),
            n: 0,
            written: 0,
            finished: false,
        }))
    }

    async fn file_meta(&self, scope: &Scope, id: &FileId) -> Result<Option<FileMeta>, StoreError> {
        self.files_document(scope, id)
            .await?
            .map(|d| files::meta_of(&d))
            .transpose()
    }

    async fn read_file(
        &self,
        scope: &Scope,
        id: &FileId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        let stored = self
            .files_document(scope, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let chunk = files::chunk_size_of(&stored);
        let key = files::file_key(scope.tenant(), id);
        self.bounded_read(files::read_range(&self.bucket().chunks, key, chunk, range))
            .await
    }

    async fn delete_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Option<FileMeta>, StoreError> {
        let bucket = self.bucket();
        let key = files::file_key(scope.tenant(), id);
        self.bounded(async {
            // The files document first: from then on nobody can reach the
            // file; chunks or thumbnails a crash leaves are unreachable.
            let Some(stored) = bucket
                .files
                .find_one_and_delete(doc! {"_id": key.clone()})
                .await
                .map_err(map_err)?
            else {
                return Ok(None);
            };
            bucket
                .chunks
                .delete_many(doc! {"files_id": key})
                .await
                .map_err(map_err)?;
            bucket
                .thumbnails
                .delete_many(doc! {"_id.t": scope.tenant_key(), "_id.f": id.as_str()})
                .await
                .map_err(map_err)?;
            files::meta_of(&stored).map(Some)
        })
        .await
    }

    async fn list_files(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, StoreError> {
        self.ensure_file_indexes().await?;
        let mut filter = doc! {"metadata.tenant": scope.tenant_key()};
        if let Some(owner) = owner {
            filter.insert("metadata.owner", owner);
        }
        if let Some((at, id)) = after {
            filter.insert(
                "$or",
                vec![
                    doc! {"metadata.created_at": {"$lt": at}},
                    doc! {"metadata.created_at": at, "_id.i": {"$lt": id.as_str()}},
                ],
            );
        }
        self.bounded_read(async {
            let mut cursor = self
                .bucket()
                .files
                .find(filter)
                .sort(doc! {"metadata.created_at": -1, "_id.i": -1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .max_time(self.read_timeout)
                .await
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(stored) = cursor.try_next().await.map_err(map_err)? {
                out.push(files::meta_of(&stored)?);
            }
            Ok(out)
        })
        .await
    }

    async fn export_files(
        &self,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FileMeta)>, StoreError> {
        let filter = match after {
            Some((t, i)) => doc! {"$or": [
                {"metadata.tenant": {"$gt": t}},
                {"metadata.tenant": t, "_id.i": {"$gt": i.as_str()}},
            ]},
            None => doc! {},
        };
        self.bounded_read(async {
            let mut cursor = self
                .bucket()
                .files
                .find(filter)
                .sort(doc! {"metadata.tenant": 1, "_id.i": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(stored) = cursor.try_next().await.map_err(map_err)? {
                let tenant = stored
                    .get_document("metadata")
                    .ok()
                    .and_then(|m| m.get_str("tenant").ok())
                    .ok_or_else(|| unavailable("a stored file has no tenant"))?
                    .to_owned();
                out.push((crate::tenant_of_key(&tenant)?, files::meta_of(&stored)?));
            }
            Ok(out)
        })
        .await
    }

    async fn thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self
            .bounded_read(async {
                self.bucket()
                    .thumbnails
                    .find_one(doc! {"_id": files::thumb_key(scope.tenant(), id, key)})
                    .max_time(self.read_timeout)
                    .await
                    .map_err(map_err)
            })
            .await?;
        Ok(found.and_then(|d| match d.get("data") {
            Some(Bson::Binary(b)) => Some(b.bytes.clone()),
            _ => None,
        }))
    }

    async fn put_thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        if self.files_document(scope, id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let stored = doc! {
            "_id": files::thumb_key(scope.tenant(), id, key),
            "data": mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes,
            },
        };
        match self
            .bounded(async {
                self.bucket()
                    .thumbnails
                    .insert_one(stored)
                    .await
                    .map(|_| ())
                    .map_err(map_err)
            })
            .await
        {
            // Made meanwhile by another process: the first one is kept.
            Err(StoreError::Conflict(_)) => {}
            other => other?,
        }
        // A delete that ran meanwhile may have removed the thumbnails
        // before this one arrived: look again, and take it back.
        if self.files_document(scope, id).await?.is_none() {
            self.bounded(async {
                self.bucket()
                    .thumbnails
                    .delete_one(doc! {"_id": files::thumb_key(scope.tenant(), id, key)})
                    .await
                    .map(|_| ())
                    .map_err(map_err)
            })
            .await?;
            return Err(StoreError::NotFound);
        }
        Ok(())
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

    async fn event_head(&self, coll: &CollectionName) -> Result<u64, StoreError> {
        let counter = self
            .bounded(async {
                self.db
                    .collection::<BsonDoc>(EVENT_SEQ)
                    .find_one(doc! {"_id": coll.as_str()})
                    .await
                    .map_err(map_err)
            })
            .await?;
        Ok(counter.map_or(0, |c| position(&c, "seq").max(position(&c, "floor"))))
    }

    async fn events(
        &self,
        coll: &CollectionName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.bounded_read(async {
            let mut cursor = self
                .db
                .collection::<BsonDoc>(EVENTS)
                .find(doc! {"c": coll.as_str(), "s": {"$gt": pos_bson(after)}})
                .sort(doc! {"s": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .max_time(self.read_timeout)
                .await
                .map_err(map_err)?;
            let mut events = Vec::new();
            while let Some(d) = cursor.try_next().await.map_err(map_err)? {
                events.push(stored_event(&d)?);
            }
            // Read after the entries (see the trait).
            let floor = self
                .db
                .collection::<BsonDoc>(EVENT_SEQ)
                .find_one(doc! {"_id": coll.as_str()})
                .await
                .map_err(map_err)?
                .map_or(0, |c| position(&c, "floor"));
            Ok(EventPage { events, floor })
        })
        .await
    }

    async fn prune_events(&self, older_than_ms: u64, max: usize) -> Result<u64, StoreError> {
        self.bounded(async {
            let counters: Vec<BsonDoc> = self
                .db
                .collection::<BsonDoc>(EVENT_SEQ)
                .find(doc! {})
                .await
                .map_err(map_err)?
                .try_collect()
                .await
                .map_err(map_err)?;
            let log = self.db.collection::<BsonDoc>(EVENTS);
            let mut pruned = 0u64;
            for counter in counters {
                let room = max.saturating_sub(usize::try_from(pruned).unwrap_or(usize::MAX));
                if room == 0 {
                    break;
                }
                let Some(coll) = opt_str(&counter, "_id") else {
                    continue;
                };
                let mut cursor = log
                    .find(doc! {"c": &coll, "s": {"$gt": pos_bson(position(&counter, "floor"))}})
                    .sort(doc! {"s": 1})
                    .limit(i64::try_from(room).unwrap_or(i64::MAX))
                    .projection(doc! {"s": 1, "at": 1})
                    .await
                    .map_err(map_err)?;
                let mut last = None;
                while let Some(d) = cursor.try_next().await.map_err(map_err)? {
                    if position(&d, "at") >= older_than_ms {
                        break;
                    }
                    last = Some(position(&d, "s"));
                }
                let Some(last) = last else { continue };
                // The floor first: a reader between the two steps sees a
                // reset, never a silent gap.
                self.db
                    .collection::<BsonDoc>(EVENT_SEQ)
                    .update_one(
                        doc! {"_id": &coll},
                        doc! {"$max": {"floor": pos_bson(last)}},
                    )
                    .await
                    .map_err(map_err)?;
                let gone = log
                    .delete_many(doc! {"c": &coll, "s": {"$lte": pos_bson(last)}})
                    .await
                    .map_err(map_err)?;
                pruned += gone.deleted_count;
            }
            Ok(pruned)
        })
        .await
    }

    async fn put_ticket(&self, ticket: &TicketRecord) -> Result<(), StoreError> {
        let hash = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: ticket.hash.to_vec(),
        };
        self.bounded(async {
            self.db
                .collection::<BsonDoc>(TICKETS)
                .insert_one(doc! {
                    "_id": hash,
                    "c": ticket.coll.as_str(),
                    "h": &ticket.holder,
                    "exp": pos_bson(ticket.expires_at_ms),
                })
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn take_ticket(
        &self,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let key = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: hash.to_vec(),
        };
        let taken = self
            .bounded(async {
                self.db
                    .collection::<BsonDoc>(TICKETS)
                    .find_one_and_delete(doc! {"_id": key})
                    .await
                    .map_err(map_err)
            })
            .await?;
        let Some(t) = taken else { return Ok(None) };
        let expires_at_ms = position(&t, "exp");
        if expires_at_ms <= now_ms {
            return Ok(None);
        }
        let coll = opt_str(&t, "c")
            .and_then(|c| CollectionName::parse(&c).ok())
            .ok_or_else(|| unavailable("a stored ticket names no collection"))?;
        Ok(Some(TicketRecord {
            hash: *hash,
            coll,
            holder: opt_str(&t, "h").unwrap_or_default(),
            expires_at_ms,
        }))
    }

    async fn prune_tickets(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.bounded(async {
            self.db
                .collection::<BsonDoc>(TICKETS)
                .delete_many(doc! {"exp": {"$lte": pos_bson(now_ms)}})
                .await
                .map(|r| r.deleted_count)
                .map_err(map_err)
        })
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

/// Commits `session`'s transaction, trying the commit again while its
/// outcome is unknown (a network error during the commit).
async fn commit(session: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut tries = 0;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e)
                if tries < 3
                    && e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT) =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
