//! The embedded engine: one SQLite file in WAL mode. Writes go to a single
//! writer thread (group commit, see `writer`); reads go to a few dedicated
//! reader threads, each owning one read connection, so no SQLite call ever
//! runs on an async worker thread. (Dedicated threads rather than tokio's
//! blocking pool: under load that pool grew to dozens of short-lived threads,
//! each with its own allocator heap, and the shared connection pool needed a
//! lock; a fixed set of readers bounds both.)
//!
//! Layout: `_arca_collections` holds definitions; each collection is a table
//! `c_<name>(tenant, id, rev, created_at, updated_at, owner, doc JSONB)` with
//! primary key `(tenant, id)`; declared indexes are expression indexes
//! leading with `tenant`. Queries: `plan` narrows candidates with SQL through
//! an index where it can, and arca-core's evaluator decides every match.

pub mod backup;
mod plan;
mod queue;
mod sql;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use arca_core::query::{Filter, Node, Sort, SortKey};
use arca_core::{CollectionName, DocId, Document, DocumentText, IndexDef, Scope};
use rusqlite::config::DbConfig;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::{NewDocument, PutOutcome, Query, Store, StoreError, StoredCollection, TextPage};
use writer::{WriteOp, map_err};

/// How the embedded engine is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file (its folder is created if missing).
    pub path: PathBuf,
    /// `synchronous = FULL` (true) or `NORMAL` (false).
    pub synchronous_full: bool,
    /// Number of read connections (one reader thread each).
    pub readers: usize,
    /// A read running longer is interrupted (`StoreError::Timeout`), so a
    /// request that already timed out does not keep a reader busy.
    pub read_timeout: std::time::Duration,
    /// Page cache of each read connection, in KiB (SQLite's default is
    /// 2,000). Pages missing from it are read with a system call each.
    pub reader_cache_kib: u32,
}

/// What `_arca_collections.def` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct CollectionRecord {
    schema: Value,
    indexes: Vec<IndexDef>,
    access: Value,
}

/// The two statements of an ordered equality page (see `ordered_sql`).
type OrderedSql = Arc<(String, String)>;

/// A read to run on a reader thread.
struct ReadJob {
    run: Box<dyn FnOnce(&Connection) + Send>,
    /// A point read (by primary key): cheap and bounded, so several of
    /// them may share one read transaction (see `reader_loop`).
    point: bool,
}

/// At most this many point reads share one read transaction.
const POINT_BATCH: usize = 32;

/// At most this many other reads (listings, counts) share one.
const LONG_BATCH: usize = 4;

/// A reader thread's loop: runs jobs until the store is dropped.
///
/// Reads of the same kind that are already queued when a reader picks one
/// up run together in one read transaction: SQLite's per-transaction work
/// (the file and WAL locks, the file-size check) was a fifth of a GET's
/// cost on the reader side, and batching listings cut their `fcntl` and
/// `fstat` calls by 70%. Each job was queued before that transaction
/// began, so each still sees every write acknowledged before it was asked.
/// Point reads never wait behind a listing: the kinds are not mixed, and a
/// batch of listings (at most `LONG_BATCH`) runs inside `long`, so point
/// reads queued meanwhile wake another reader.
fn reader_loop(conn: &Connection, jobs: &queue::Receiver<ReadJob>, mut run: impl FnMut(ReadJob)) {
    let mut batch: Vec<ReadJob> = Vec::with_capacity(POINT_BATCH);
    let mut next: Option<ReadJob> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Some(job) => job,
                // The store (the only sender) is gone.
                None => return,
            },
        };
        let point = job.point;
        let cap = if point { POINT_BATCH } else { LONG_BATCH };
        batch.push(job);
        while batch.len() < cap {
            match jobs.try_recv() {
                Some(job) if job.point == point => batch.push(job),
                Some(job) => {
                    next = Some(job);
                    break;
                }
                None => break,
            }
        }
        if point {
            run_batch(conn, &mut batch, &mut run);
        } else {
            jobs.long(|| run_batch(conn, &mut batch, &mut run));
        }
    }
}

/// Runs `batch` (emptying it), in one read transaction when it holds more
/// than one job.
fn run_batch(conn: &Connection, batch: &mut Vec<ReadJob>, run: &mut impl FnMut(ReadJob)) {
    if batch.len() == 1 {
        batch.drain(..).for_each(run);
        return;
    }
    // A deferred BEGIN: the snapshot is taken by the first read, after
    // every job of the batch was queued.
    let began = conn
        .prepare_cached("BEGIN")
        .and_then(|mut st| st.execute([]))
        .is_ok();
    batch.drain(..).for_each(run);
    if began && !conn.is_autocommit() {
        let ended = conn
            .prepare_cached("COMMIT")
            .and_then(|mut st| st.execute([]));
        if let Err(e) = ended {
            tracing::warn!(error = %e, "ending a batch of reads failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

/// The embedded SQLite engine.
pub struct SqliteStore {
    /// `None` only while dropping (closing it stops the writer).
    writes: Option<mpsc::Sender<WriteOp>>,
    /// The writer thread, joined on drop so its final checkpoint finishes
    /// before the process can exit.
    writer: Option<std::thread::JoinHandle<()>>,
    reads: queue::Sender<ReadJob>,
    path: PathBuf,
    id_seed: [u8; 5],
    id_counter: AtomicU32,
    /// The paths leading each collection's declared indexes (what the
    /// planner may narrow on), kept in step with the definitions.
    indexed: RwLock<HashMap<CollectionName, Arc<HashSet<String>>>>,
    /// `ordered_sql` per (collection, indexed path), made once: formatting
    /// the two statements was ~1.5% of a list request. Bounded by the
    /// indexed paths ever declared; the text depends on nothing else.
    ordered: RwLock<HashMap<(CollectionName, String), OrderedSql>>,
}

fn open_conn(
    path: &Path,
    read_only: bool,
    synchronous_full: bool,
    cache_kib: u32,
) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(map_err)?;
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    let mut pragmas = format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -{cache_kib};"
    );
    if !read_only {
        pragmas.insert_str(0, "PRAGMA journal_mode = WAL; ");
    }
    conn.execute_batch(&pragmas).map_err(map_err)?;
    // Plans never depend on bound values. Without this, SQLite (built with
    // STAT4) marks statements whose plan a parameter could change and
    // re-prepares them whenever the value differs: in the list profile
    // every cached statement was parsed and planned again on each call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    /// Blocking: call it before serving, or from a blocking context.
    pub fn open(opts: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer_conn = open_conn(&opts.path, false, opts.synchronous_full, 2000)?;
        writer_conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS _arca_collections (
                    name TEXT PRIMARY KEY,
                    def TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL
                )",
            )
            .map_err(map_err)?;
        let (reads, receivers) = queue::queue::<ReadJob>(opts.readers.max(1));
        let read_timeout = opts.read_timeout;
        for (n, jobs) in receivers.into_iter().enumerate() {
            let mut conn = open_conn(
                &opts.path,
                true,
                opts.synchronous_full,
                opts.reader_cache_kib.max(100),
            )?;
            // One progress handler per connection, checking the running
            // job's deadline every 1000 VM steps.
            let epoch = std::time::Instant::now();
            let deadline = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
            let watched = deadline.clone();
            conn.progress_handler(
                1000,
                Some(move || epoch.elapsed().as_millis() as u64 > watched.load(Ordering::Relaxed)),
            )
            .map_err(map_err)?;
            std::thread::Builder::new()
                .name(format!("arca-sqlite-reader-{n}"))
                .spawn(move || {
                    reader_loop(&conn, &jobs, |job| {
                        let limit = (epoch.elapsed() + read_timeout).as_millis() as u64;
                        deadline.store(limit, Ordering::Relaxed);
                        (job.run)(&conn);
                        deadline.store(u64::MAX, Ordering::Relaxed);
                    })
                })
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start a reader thread: {e}"))
                })?;
        }
        let (tx, rx) = mpsc::channel(4096);
        let writer = std::thread::Builder::new()
            .name("arca-sqlite-writer".into())
            .spawn(move || writer::run(writer_conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            writes: Some(tx),
            writer: Some(writer),
            reads,
            path: opts.path.clone(),
            id_seed: rand::random(),
            id_counter: AtomicU32::new(rand::random()),
            indexed: RwLock::new(HashMap::new()),
            ordered: RwLock::new(HashMap::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `EXPLAIN QUERY PLAN` of the queries `find` runs for `filter` in
    /// `_id` order (for tests and diagnostics), one line per plan step.
    pub async fn explain(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<Vec<String>, StoreError> {
        let tenant = Sql::Text(scope.tenant_key().to_owned());
        let queries: Vec<(String, Vec<Sql>)> =
            match plan::prefer_ordered(filter, &self.indexed_paths(coll)) {
                Some((path, value)) => {
                    let (a, b) = ordered_sql(coll, &path);
                    vec![
                        (a, vec![tenant.clone(), value, Sql::Text(String::new())]),
                        (b, vec![tenant, Sql::Text(String::new())]),
                    ]
                }
                None => vec![self.candidate_sql(coll, scope, filter, None)],
            };
        self.read(move |c| {
            let mut out = Vec::new();
            for (sql, params) in queries {
                let mut st = c
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(map_err)?;
                let rows = st
                    .query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3))
                    .map_err(map_err)?;
                for r in rows {
                    out.push(r.map_err(map_err)?);
                }
            }
            Ok(out)
        })
        .await
    }

    fn new_id(&self) -> DocId {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        DocId::generated(u32::try_from(secs).unwrap_or(u32::MAX), self.id_seed, n)
    }

    fn set_indexed(&self, name: &CollectionName, defs: Option<&[IndexDef]>) {
        let mut map = match self.indexed.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match defs {
            Some(d) => map.insert(name.clone(), Arc::new(sql::indexed_paths(d))),
            None => map.remove(name),
        };
    }

    fn indexed_paths(&self, name: &CollectionName) -> Arc<HashSet<String>> {
        let map = match self.indexed.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(name).cloned().unwrap_or_default()
    }

    /// The SQL that selects candidate rows for `filter` within the scope's
    /// tenant, in `_id` order, optionally after an `_id`.
    fn candidate_sql(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
        after_id: Option<&str>,
    ) -> (String, Vec<Sql>) {
        let table = sql::table(coll);
        let tenant = scope.tenant_key();
        let mut sql = format!("SELECT {} FROM {table} WHERE tenant = ?", sql::DOC_COLUMNS);
        let mut params = vec![Sql::Text(tenant.to_owned())];
        if let Some(p) = plan::prefilter(filter, &table, tenant, &self.indexed_paths(coll)) {
            if p.condition.starts_with("rowid IN") {
                // The index scans inside the subquery drive; `+` keeps SQLite
                // from scanning the tenant's rows instead (the tenant is
                // still checked here and inside the subquery).
                sql = format!("SELECT {} FROM {table} WHERE +tenant = ?", sql::DOC_COLUMNS);
            }
            sql.push_str(" AND ");
            sql.push_str(&p.condition);
            params.extend(p.params);
        }
        if let Some(id) = after_id {
            sql.push_str(" AND id > ?");
            params.push(Sql::Text(id.to_owned()));
        }
        sql.push_str(" ORDER BY id");
        (sql, params)
    }

    /// Runs `f` on a reader thread's connection and awaits its result.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.read_job(false, f).await
    }

    /// `read` for a point read by primary key (may share a transaction).
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.read_job(true, f).await
    }

    async fn read_job<T, F>(&self, point: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |conn: &Connection| {
            // A panic in `f` drops `tx`: the caller sees "unavailable",
            // and the reader thread survives it.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            if let Ok(out) = out {
                let _ = tx.send(out);
            }
        });
        self.reads
            .send(ReadJob { run, point })
            .map_err(|_| StoreError::Unavailable("readers stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the read failed".into()))?
    }

    /// Queues a write and waits for the commit that holds it.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let writes = self
            .writes
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("writer stopped".into()))?;
        writes
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

impl Drop for SqliteStore {
    /// Stops the writer after the writes already queued and waits for it:
    /// its last act folds the WAL into the database file, so after a clean
    /// stop `arca.db` alone holds every commit. (SQLite folds it when the
    /// last connection closes, but only a read-write one can, and a
    /// read-only reader often closed last, leaving the import's or the
    /// server's last commits in `arca.db-wal`.)
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }
}

/// The two `_id`-ordered scans of an equality on `path`: by the expression
/// index (`tenant`, value, `id` bound as ?1, ?2, ?3), and by the "array on
/// this path" index (`tenant`, `id` as ?1, ?2).
fn ordered_sql(coll: &CollectionName, path: &str) -> (String, String) {
    let t = sql::table(coll);
    (
        format!(
            "SELECT {} FROM {t} WHERE tenant = ?1 AND {} = ?2 AND id > ?3 ORDER BY id",
            sql::DOC_COLUMNS,
            sql::field_expr(path)
        ),
        format!(
            "SELECT {} FROM {t} WHERE tenant = ?1 AND {} AND id > ?2 ORDER BY id",
            sql::DOC_COLUMNS,
            sql::path_has_array(path)
        ),
    )
}

impl SqliteStore {
    /// `find`, decoding bodies as `body` says.
    async fn find_found<R: Send + 'static>(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        body: Body,
        finish: impl FnOnce(Vec<Found>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let filter = scope.filter().clone().and(query.filter.clone());
        if matches!(filter.root(), Node::Nothing) || query.limit == 0 {
            return finish(Vec::new());
        }
        let (sort, limit, after) = (query.sort.clone(), query.limit, query.after.clone());
        let by_id = sort.is_by_id();
        if by_id
            && let Some((path, value)) = plan::prefer_ordered(&filter, &self.indexed_paths(coll))
        {
            // Equality on an indexed path in `_id` order: two index scans
            // already in `_id` order, merged; a page costs its own size.
            let sql = self.ordered_sql_of(coll, path);
            let tenant = scope.tenant_key().to_owned();
            let after_id = after.map(|c| c.id).unwrap_or_default();
            return self
                .read(move |c| {
                    let pa = [
                        Sql::Text(tenant.clone()),
                        value,
                        Sql::Text(after_id.clone()),
                    ];
                    let pb = [Sql::Text(tenant), Sql::Text(after_id)];
                    let (a, b) = &*sql;
                    merged_scan(c, (a, &pa), (b, &pb), &filter, &body, limit).and_then(finish)
                })
                .await;
        }
        let (sql, params) = self.candidate_sql(
            coll,
            scope,
            &filter,
            if by_id {
                after.as_ref().map(|c| c.id.as_str())
            } else {
                None
            },
        );
        self.read(move |c| {
            if by_id {
                // Candidates arrive in `_id` order: stop at the page's end.
                let mut out = Vec::with_capacity(limit.min(64));
                scan(c, &sql, &params, &filter, &body, |doc| {
                    out.push(doc);
                    out.len() < limit
                })?;
                return finish(out);
            }
            // Another order: every match is keyed in Rust and only the best
            // `limit` are kept (a bounded heap: memory stays O(limit)
            // however large the collection).
            let mut best: std::collections::BinaryHeap<Ranked<'_>> =
                std::collections::BinaryHeap::new();
            let cursor = after
                .as_ref()
                .map(|c| (SortKey(c.key.clone()), c.id.clone()));
            scan(c, &sql, &params, &filter, &body, |doc| {
                let key = sort.key_document(&doc.doc);
                let past_cursor = cursor.as_ref().is_none_or(|(k, id)| {
                    sort.compare(&key, doc.doc.system.id.as_str(), k, id)
                        == std::cmp::Ordering::Greater
                });
                if past_cursor {
                    let entry = Ranked {
                        key,
                        doc,
                        sort: &sort,
                    };
                    if best.len() < limit {
                        best.push(entry);
                    } else if best.peek().is_some_and(|worst| entry < *worst) {
                        best.pop();
                        best.push(entry);
                    }
                }
                true
            })?;
            finish(best.into_sorted_vec().into_iter().map(|r| r.doc).collect())
        })
        .await
    }

    /// `ordered_sql` of `coll` and `path`, from the cache.
    fn ordered_sql_of(&self, coll: &CollectionName, path: String) -> OrderedSql {
        let key = (coll.clone(), path);
        if let Some(sql) = self.ordered.read().ok().and_then(|m| m.get(&key).cloned()) {
            return sql;
        }
        let sql = Arc::new(ordered_sql(&key.0, &key.1));
        if let Ok(mut m) = self.ordered.write() {
            m.insert(key, sql.clone());
        }
        sql
    }

    /// Reads the row of `id` in the scope's tenant and decodes it.
    async fn point_read<T: Send + 'static>(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        decode: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ?1 AND id = ?2",
            sql::DOC_COLUMNS,
            sql::table(coll)
        );
        let (tenant, id) = (scope.tenant_key().to_owned(), id.clone());
        self.read_point(move |c| {
            let row = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_row(params![tenant, id.as_str()], decode)
                        .optional()
                })
                .map_err(map_err)?;
            row.transpose()
        })
        .await
    }
}

/// `Body::Fields` of what `filters` and `sort` read: only those top-level
/// fields are parsed.
fn fields_read(filters: &[&Filter], sort: Option<&Sort>) -> Body {
    let mut keys = Vec::new();
    for f in filters {
        f.top_level_fields(&mut keys);
    }
    if let Some(sort) = sort {
        sort.top_level_fields(&mut keys);
    }
    Body::Fields(keys.into_iter().map(str::to_owned).collect())
}

/// What a text listing of `query` in `scope` parses.
fn text_body(scope: &Scope, query: &Query) -> Body {
    fields_read(&[scope.filter(), &query.filter], Some(&query.sort))
}

/// Found rows read with `Body::Fields` as documents with their texts.
fn texts(found: Vec<Found>) -> Result<Vec<DocumentText>, StoreError> {
    found
        .into_iter()
        .map(|f| sql::document_text(f.doc.system, f.text.unwrap_or_default()))
        .collect()
}

/// Merges two `_id`-ordered candidate streams (a document in both counts
/// once), keeps what the evaluator accepts, stops at `limit`.
fn merged_scan(
    c: &Connection,
    (a_sql, a_params): (&str, &[Sql]),
    (b_sql, b_params): (&str, &[Sql]),
    filter: &Filter,
    body: &Body,
    limit: usize,
) -> Result<Vec<Found>, StoreError> {
    let mut sa = c.prepare_cached(a_sql).map_err(map_err)?;
    let mut sb = c.prepare_cached(b_sql).map_err(map_err)?;
    let mut ra = sa
        .query(params_from_iter(a_params.iter()))
        .map_err(map_err)?;
    let mut rb = sb
        .query(params_from_iter(b_params.iter()))
        .map_err(map_err)?;
    let next = |rows: &mut rusqlite::Rows<'_>| -> Result<Option<Found>, StoreError> {
        match rows.next().map_err(map_err)? {
            Some(row) => Ok(Some(body.decode(row).map_err(map_err)??)),
            None => Ok(None),
        }
    };
    let (mut na, mut nb) = (next(&mut ra)?, next(&mut rb)?);
    let mut out = Vec::with_capacity(limit.min(64));
    loop {
        let doc = match (na.take(), nb.take()) {
            (None, None) => break,
            (Some(x), None) => {
                na = next(&mut ra)?;
                x
            }
            (None, Some(y)) => {
                nb = next(&mut rb)?;
                y
            }
            (Some(x), Some(y)) => match x.doc.system.id.cmp(&y.doc.system.id) {
                std::cmp::Ordering::Less => {
                    nb = Some(y);
                    na = next(&mut ra)?;
                    x
                }
                std::cmp::Ordering::Greater => {
                    na = Some(x);
                    nb = next(&mut rb)?;
                    y
                }
                std::cmp::Ordering::Equal => {
                    na = next(&mut ra)?;
                    nb = next(&mut rb)?;
                    x
                }
            },
        };
        if filter.matches_document(&doc.doc) {
            out.push(doc);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// A document ranked by a sort order (for the bounded top-`limit` heap:
/// the heap's greatest element is the worst of the kept ones).
struct Ranked<'a> {
    key: SortKey,
    doc: Found,
    sort: &'a arca_core::query::Sort,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort.compare(
            &self.key,
            self.doc.doc.system.id.as_str(),
            &other.key,
            other.doc.doc.system.id.as_str(),
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

/// Streams candidate rows and hands those the evaluator accepts to `keep`;
/// stops as soon as `keep` returns false.
fn scan(
    c: &Connection,
    sql: &str,
    params: &[Sql],
    filter: &Filter,
    body: &Body,
    mut keep: impl FnMut(Found) -> bool,
) -> Result<(), StoreError> {
    let mut st = c.prepare_cached(sql).map_err(map_err)?;
    let mut rows = st.query(params_from_iter(params.iter())).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let found = body.decode(row).map_err(map_err)??;
        if filter.matches_document(&found.doc) && !keep(found) {
            break;
        }
    }
    Ok(())
}

/// How a listing decodes the bodies of the rows it reads.
#[derive(Debug, Clone)]
enum Body {
    /// Parse the whole body.
    Full,
    /// Parse only these top-level fields (what the filter and the sort
    /// read) and keep the stored text for the response.
    Fields(Vec<String>),
}

/// A row a listing kept: the document (whole or partial, see `Body`) and,
/// with `Body::Fields`, its stored text.
struct Found {
    doc: Document,
    text: Option<String>,
}

impl Body {
    fn decode(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Found, StoreError>> {
        match self {
            Body::Full => Ok(sql::decode_document(row)?.map(|doc| Found { doc, text: None })),
            Body::Fields(keys) => {
                let text: String = row.get(5)?;
                let body = arca_core::parse_body_fields(&text, keys).unwrap_or_default();
                Ok(sql::decode_system(row)?.map(|system| Found {
                    doc: Document { system, body },
                    text: Some(text),
                }))
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError> {
        let all = self
            .read(|c| {
                let mut st = c
                    .prepare("SELECT name, def, created_at, updated_at FROM _arca_collections ORDER BY name")
                    .map_err(map_err)?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .map_err(map_err)?;
                let mut out = Vec::new();
                for row in rows {
                    let (name, def, created_at, updated_at) = row.map_err(map_err)?;
                    let (Ok(name), Ok(rec)) =
                        (CollectionName::parse(&name), serde_json::from_str::<CollectionRecord>(&def))
                    else {
                        tracing::error!(collection = %name, "unreadable collection definition skipped");
                        continue;
                    };
                    out.push(StoredCollection {
                        name,
                        schema: rec.schema,
                        indexes: rec.indexes,
                        access: rec.access,
                        created_at,
                        updated_at,
                    });
                }
                Ok(out)
            })
            .await?;
        for c in &all {
            self.set_indexed(&c.name, Some(&c.indexes));
        }
        Ok(all)
    }

    async fn put_collection(
        &self,
        name: &CollectionName,
        schema: &Value,
        indexes: &[IndexDef],
        access: &Value,
    ) -> Result<PutOutcome, StoreError> {
        let record = serde_json::to_string(&CollectionRecord {
            schema: schema.clone(),
            indexes: indexes.to_vec(),
            access: access.clone(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (owned, defs) = (name.clone(), indexes.to_vec());
        let out = self
            .write(|reply| WriteOp::PutCollection {
                name: owned,
                record,
                indexes: defs,
                reply,
            })
            .await?;
        self.set_indexed(name, Some(indexes));
        Ok(out)
    }

    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError> {
        let owned = name.clone();
        let out = self
            .write(|reply| WriteOp::DeleteCollection { name: owned, reply })
            .await?;
        self.set_indexed(name, None);
        Ok(out)
    }

    async fn insert(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: NewDocument,
    ) -> Result<Document, StoreError> {
        let id = doc.id.unwrap_or_else(|| self.new_id());
        let (coll, tenant, body) = (
            coll.clone(),
            scope.tenant_key().to_owned(),
            arca_core::body_text(&doc.body),
        );
        let owner = doc.owner;
        self.write(|reply| WriteOp::Insert {
            coll,
            tenant,
            id,
            owner,
            body,
            reply,
        })
        .await
    }

    async fn get(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<Document>, StoreError> {
        let doc = self
            .point_read(coll, scope, id, sql::decode_document)
            .await?;
        // Outside the row filter is the same as absent: no existence leaks.
        Ok(doc.filter(|d| scope.filter().matches_document(d)))
    }

    async fn get_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<DocumentText>, StoreError> {
        if !scope.filter().is_all() {
            // The row filter needs the parsed document.
            return Ok(self
                .get(coll, scope, id)
                .await?
                .as_ref()
                .map(DocumentText::of));
        }
        self.point_read(coll, scope, id, sql::decode_document_text)
            .await
    }

    async fn replace(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: u64,
        body: Map<String, Value>,
    ) -> Result<Document, StoreError> {
        let (coll, tenant, id, body) = (
            coll.clone(),
            scope.tenant_key().to_owned(),
            id.clone(),
            arca_core::body_text(&body),
        );
        self.write(|reply| WriteOp::Replace {
            coll,
            tenant,
            id,
            expected_rev,
            body,
            reply,
        })
        .await
    }

    async fn delete(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: Option<u64>,
    ) -> Result<(), StoreError> {
        let (coll, tenant, id) = (coll.clone(), scope.tenant_key().to_owned(), id.clone());
        self.write(|reply| WriteOp::Delete {
            coll,
            tenant,
            id,
            expected_rev,
            reply,
        })
        .await
    }

    async fn find(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError> {
        self.find_found(coll, scope, query, Body::Full, |found| {
            Ok(found.into_iter().map(|f| f.doc).collect())
        })
        .await
    }

    async fn find_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<DocumentText>, StoreError> {
        self.find_found(coll, scope, query, text_body(scope, query), texts)
            .await
    }

    async fn find_page(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        page: usize,
    ) -> Result<TextPage, StoreError> {
        // Written on the reader thread: the documents' strings are freed
        // by the thread that allocated them (a cross-thread free costs
        // the allocator several times more), and one buffer crosses over.
        self.find_found(coll, scope, query, text_body(scope, query), move |found| {
            Ok(TextPage::of(texts(found)?, page))
        })
        .await
    }

    async fn count(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        let filter = scope.filter().clone().and(filter.clone());
        if matches!(filter.root(), Node::Nothing) {
            return Ok(0);
        }
        if filter.is_all() {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE tenant = ?1",
                sql::table(coll)
            );
            let tenant = scope.tenant_key().to_owned();
            return self
                .read(move |c| {
                    let n: i64 = c
                        .prepare_cached(&sql)
                        .and_then(|mut st| st.query_row(params![tenant], |r| r.get(0)))
                        .map_err(map_err)?;
                    Ok(u64::try_from(n).unwrap_or(0))
                })
                .await;
        }
        let (sql, params) = self.candidate_sql(coll, scope, &filter, None);
        // Counting parses only the fields the filter reads.
        let body = fields_read(&[&filter], None);
        self.read(move |c| {
            let mut n = 0u64;
            scan(c, &sql, &params, &filter, &body, |_| {
                n += 1;
                true
            })?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// Each read connection gets the configured page cache.
    #[tokio::test]
    async fn readers_use_the_configured_page_cache() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&SqliteOptions {
            path: dir.path().join("arca.db"),
            synchronous_full: true,
            readers: 2,
            read_timeout: std::time::Duration::from_secs(30),
            reader_cache_kib: 3000,
        })
        .expect("open");
        for _ in 0..4 {
            let kib: i64 = store
                .read(|c| {
                    c.query_row("PRAGMA cache_size", [], |r| r.get(0))
                        .map_err(map_err)
                })
                .await
                .expect("pragma");
            assert_eq!(kib, -3000);
        }
    }

    /// The cached statements of a list page must run as prepared: a plan
    /// that depended on the bound values was re-prepared (parsed and
    /// planned again) on every call with a new value.
    #[tokio::test]
    async fn cached_statements_are_not_re_prepared_for_new_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let opts = SqliteOptions {
            path: dir.path().join("arca.db"),
            synchronous_full: true,
            readers: 1,
            read_timeout: std::time::Duration::from_secs(30),
            reader_cache_kib: 3000,
        };
        let store = SqliteStore::open(&opts).expect("open");
        let coll = CollectionName::parse("things").expect("name");
        let index = IndexDef {
            fields: vec![("category".into(), 1)],
            unique: false,
            sparse: false,
        };
        store
            .put_collection(
                &coll,
                &serde_json::json!({"type": "object"}),
                &[index],
                &serde_json::json!({}),
            )
            .await
            .expect("define");
        let scope = Scope::tenant(arca_core::Tenant::None);
        for i in 0..100 {
            let body = serde_json::json!({"category": format!("c{}", i % 5)});
            let doc = NewDocument {
                id: None,
                owner: "u".into(),
                body: body.as_object().cloned().unwrap_or_default(),
            };
            store.insert(&coll, &scope, doc).await.expect("insert");
        }
        let conn = open_conn(&opts.path, true, true, 2000).expect("reader");
        let (a, b) = ordered_sql(&coll, "category");
        let no_tenant = || Sql::Text(String::new());
        for value in ["c1", "c2", "c3", "c4"] {
            let filter = Filter::parse(&serde_json::json!({ "category": value })).expect("filter");
            let pa = [no_tenant(), Sql::Text(value.into()), no_tenant()];
            let pb = [no_tenant(), no_tenant()];
            let page =
                merged_scan(&conn, (&a, &pa), (&b, &pb), &filter, &Body::Full, 5).expect("scan");
            assert_eq!(page.len(), 5, "{value}");
        }
        for sql in [a, b] {
            let st = conn.prepare_cached(&sql).expect("cached");
            assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }
}
