//! The embedded engine: one SQLite file in WAL mode. Writes go to a single
//! writer thread (group commit, see `writer`); reads go to a few dedicated
//! reader threads, each owning one read connection (`readers`), so no
//! SQLite call ever runs on an async worker thread.
//!
//! Layout: `_arca_collections` holds definitions, `_arca_meta` the
//! catalogue generation, `_arca_idempotency` callers' idempotency
//! records; each collection is a table `c_<name>(tenant, id, rev,
//! created_at, updated_at, owner, doc JSONB)` with primary key
//! `(tenant, id)`; declared indexes are expression indexes leading with
//! `tenant`. The event log is `_arca_events(coll, seq, ...)`, written by
//! the writer in the savepoint of each change (see `writer`), with
//! `_arca_event_floors` and `_arca_tickets` beside it. Queries: `plan` narrows candidates with SQL through an index
//! where it can (`scan`), and arca-core's evaluator decides every match.
//!
//! Files: `setup` (opening connections, the engine's tables), `readers`
//! (the reader pool), `scan` (listings and point reads), `writer` (the
//! writer thread), `sql` (SQL text), `plan` (candidate narrowing), `queue`
//! (the reader queue's wake-up policy), `backup` (online copies), `files`
//! (file bytes in the `files` folder beside the database); this file is
//! the `Store` implementation over them.

mod aggregate;
pub mod backup;
pub mod files;
mod plan;
mod queue;
mod readers;
mod scan;
mod setup;
mod sql;
mod unique;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arca_core::query::{Filter, Node};
use arca_core::{CollectionName, DocId, Document, DocumentText, FileId, IndexDef, Scope, Tenant};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{
    AggregateLimits, ByteStream, ChangeKind, CollectionSpec, EventPage, ExportPosition, FileMeta,
    FileWriter, IdempotencyBegin, IdempotencyClaim, IdempotencyKey, LookupScopes, PageWriter,
    PutOutcome, Query, Store, StoreError, StoredCollection, StoredEvent, StoredResponse, ThumbKey,
    TicketRecord,
};
use readers::Readers;
use scan::{Body, OrderedSql, fields_read, scan, text_body, texts};
use writer::{OwnedClaim, TypedJob, WriteOp, map_err};

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

/// The embedded SQLite engine.
pub struct SqliteStore {
    /// `None` only while dropping (closing it stops the writer).
    writes: Option<mpsc::Sender<WriteOp>>,
    /// The writer thread, joined on drop so its final checkpoint finishes
    /// before the process can exit.
    writer: Option<std::thread::JoinHandle<()>>,
    readers: Readers,
    path: PathBuf,
    /// The `files` folder beside the database (file bytes).
    files_root: PathBuf,
    /// The paths leading each collection's declared indexes (what the
    /// planner may narrow on), kept in step with the definitions.
    indexed: RwLock<HashMap<CollectionName, Arc<HashSet<String>>>>,
    /// `ordered_sql` per (collection, indexed path), made once: formatting
    /// the two statements was ~1.5% of a list request. Bounded by the
    /// indexed paths ever declared; the text depends on nothing else.
    ordered: RwLock<HashMap<(CollectionName, String), OrderedSql>>,
    /// Whether document writes append to the event log (on unless
    /// `with_event_log(false)`).
    event_log: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer and
    /// reader threads. Blocking: call it before serving, or from a
    /// blocking context.
    pub fn open(opts: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer_conn = setup::open_conn(&opts.path, false, opts.synchronous_full, 2000)?;
        setup::create_engine_tables(&writer_conn)?;
        let readers = Readers::start(
            &opts.path,
            opts.readers,
            opts.synchronous_full,
            opts.reader_cache_kib,
            opts.read_timeout,
        )?;
        let (tx, rx) = mpsc::channel(4096);
        let writer = std::thread::Builder::new()
            .name("arca-sqlite-writer".into())
            .spawn(move || writer::run(writer_conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        let files_root = files::files_dir(&opts.path);
        let (root, db) = (files_root.clone(), opts.path.clone());
        // What crashes left in the files folder goes, off the start's path.
        let _ = std::thread::Builder::new()
            .name("arca-files-sweep".into())
            .spawn(move || files::sweep(&root, &db));
        Ok(Self {
            writes: Some(tx),
            writer: Some(writer),
            readers,
            path: opts.path.clone(),
            files_root,
            indexed: RwLock::new(HashMap::new()),
            ordered: RwLock::new(HashMap::new()),
            event_log: true,
        })
    }

    /// Turns the event log on (the default) or off: off, document writes
    /// append nothing to it (streams then see no changes). Every process
    /// on one file should agree.
    pub fn with_event_log(mut self, on: bool) -> Self {
        self.event_log = on;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Runs `f` on a reader thread's connection and awaits its result.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.run(false, f).await
    }

    /// `read` for a point read by primary key (may share a transaction).
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.run(true, f).await
    }

    /// Runs `f` on the writer thread (in its own savepoint of a group
    /// commit) and waits for the commit that holds it.
    async fn write_job<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(|reply| WriteOp::Job(Box::new(TypedJob { f, reply })))
            .await
    }

    /// The writer thread's queue, held weakly (for uploads in progress).
    fn weak_writes(&self) -> Result<mpsc::WeakSender<WriteOp>, StoreError> {
        self.writes
            .as_ref()
            .map(mpsc::Sender::downgrade)
            .ok_or_else(|| StoreError::Unavailable("writer stopped".into()))
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn catalog_generation(&self) -> Result<u64, StoreError> {
        self.read_point(|c| {
            let n: Option<i64> = c
                .prepare_cached("SELECT value FROM _arca_meta WHERE key = 'catalog_generation'")
                .and_then(|mut st| {
                    rusqlite::OptionalExtension::optional(st.query_row([], |r| r.get(0)))
                })
                .map_err(map_err)?;
            Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        })
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
        // Definitions changed through another process reach the planner
        // here too (the server reloads when the generation moves).
        let mut map = match self.indexed.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.clear();
        for c in &all {
            map.insert(c.name.clone(), Arc::new(sql::indexed_paths(&c.indexes)));
        }
        Ok(all)
    }

    async fn put_collection(&self, spec: CollectionSpec<'_>) -> Result<PutOutcome, StoreError> {
        let record = serde_json::to_string(&CollectionRecord {
            schema: spec.schema.clone(),
            indexes: spec.indexes.to_vec(),
            access: spec.access.clone(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (name, indexes, at) = (spec.name.clone(), spec.indexes.to_vec(), spec.at.to_owned());
        let created_at = spec.created_at.unwrap_or(spec.at).to_owned();
        let out = self
            .write(|reply| WriteOp::PutCollection {
                name,
                record,
                indexes,
                at,
                created_at,
                reply,
            })
            .await?;
        self.set_indexed(spec.name, Some(spec.indexes));
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
        doc: &Document,
    ) -> Result<(), StoreError> {
        let (coll, tenant, system, body) = (
            coll.clone(),
            scope.tenant_key().to_owned(),
            doc.system.clone(),
            arca_core::body_text(&doc.body),
        );
        // The event's text is made here, not on the writer thread (the
        // one every write waits for).
        let event = self
            .event_log
            .then(|| crate::document_json(&system, body.clone()))
            .flatten();
        self.write(|reply| WriteOp::Insert {
            coll,
            tenant,
            system,
            body,
            event,
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
        doc: &Document,
        expected_rev: u64,
    ) -> Result<(), StoreError> {
        let (coll, tenant, system, body) = (
            coll.clone(),
            scope.tenant_key().to_owned(),
            doc.system.clone(),
            arca_core::body_text(&doc.body),
        );
        let event = self
            .event_log
            .then(|| crate::document_json(&system, body.clone()))
            .flatten();
        self.write(|reply| WriteOp::Replace {
            coll,
            tenant,
            system,
            expected_rev,
            body,
            event,
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
    ) -> Result<Document, StoreError> {
        let (coll, tenant, id) = (coll.clone(), scope.tenant_key().to_owned(), id.clone());
        let log = self.event_log;
        self.write(|reply| WriteOp::Delete {
            coll,
            tenant,
            id,
            expected_rev,
            log,
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

    async fn find_written(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        write: PageWriter,
    ) -> Result<Vec<u8>, StoreError> {
        // Written on the reader thread: the documents' strings are freed
        // by the thread that allocated them, and one buffer crosses over.
        self.find_found(coll, scope, query, text_body(scope, query), move |found| {
            write(texts(found)?)
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

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let (name, candidate) = (name.to_owned(), rand::random::<[u8; 32]>());
        self.write(|reply| WriteOp::Secret {
            name,
            candidate,
            reply,
        })
        .await
    }

    async fn rotate_secret(&self, name: &str) -> Result<(), StoreError> {
        let (name, candidate) = (name.to_owned(), rand::random::<[u8; 32]>());
        self.write_job(move |c| {
            let current = writer::secret(c, &name, &rand::random::<[u8; 32]>())?;
            c.prepare_cached("INSERT OR REPLACE INTO _arca_secrets (name, value) VALUES (?1, ?2)")
                .and_then(|mut st| {
                    st.execute(params![format!("{name}.previous"), current.as_slice()])?;
                    st.execute(params![name, candidate.as_slice()])
                })
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
        let writer = files::SqliteFileWriter::begin(
            &self.files_root,
            scope.tenant_key(),
            id,
            self.weak_writes()?,
        )
        .await?;
        Ok(Box::new(writer))
    }

    async fn file_meta(&self, scope: &Scope, id: &FileId) -> Result<Option<FileMeta>, StoreError> {
        let (tenant, id) = (scope.tenant_key().to_owned(), id.as_str().to_owned());
        self.read_point(move |c| files::meta_of(c, &tenant, &id))
            .await
    }

    async fn read_file(
        &self,
        scope: &Scope,
        id: &FileId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        if self.file_meta(scope, id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let path = self
            .files_root
            .join(files::relative_path(scope.tenant_key(), id.as_str()));
        files::read_range(path, range).await
    }

    async fn delete_file(
        &self,
        scope: &Scope,
        id: &FileId,
    ) -> Result<Option<FileMeta>, StoreError> {
        let (tenant, key) = (scope.tenant_key().to_owned(), id.as_str().to_owned());
        let removed = self
            .write_job(move |c| {
                let meta = files::meta_of(c, &tenant, &key)?;
                if meta.is_some() {
                    c.prepare_cached("DELETE FROM _arca_files WHERE tenant = ?1 AND id = ?2")
                        .and_then(|mut st| st.execute(params![tenant, key]))
                        .map_err(map_err)?;
                    c.prepare_cached(
                        "DELETE FROM _arca_thumbnails WHERE tenant = ?1 AND file_id = ?2",
                    )
                    .and_then(|mut st| st.execute(params![tenant, key]))
                    .map_err(map_err)?;
                }
                Ok(meta)
            })
            .await?;
        if removed.is_some() {
            // The row is gone: nobody can reach the bytes any more. A crash
            // before this removal leaves them to the next start's sweep.
            let path = self
                .files_root
                .join(files::relative_path(scope.tenant_key(), id.as_str()));
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, "removing a deleted file's bytes failed"),
            }
        }
        Ok(removed)
    }

    async fn list_files(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, StoreError> {
        let tenant = scope.tenant_key().to_owned();
        let owner = owner.map(str::to_owned);
        let after = after.map(|(at, id)| (at.to_owned(), id.as_str().to_owned()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| files::list(c, &tenant, owner.as_deref(), after.as_ref(), limit))
            .await
    }

    async fn export_files(
        &self,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FileMeta)>, StoreError> {
        let (tenant, id) = match after {
            Some((t, i)) => (Some(t.to_owned()), Some(i.as_str().to_owned())),
            None => (None, None),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT tenant, meta FROM _arca_files WHERE ?1 IS NULL OR (tenant, id) > (?1, ?2) ORDER BY tenant, id LIMIT ?3",
                )
                .map_err(map_err)?;
            let mut rows = st.query(params![tenant, id, limit]).map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let key: String = row.get(0).map_err(map_err)?;
                let meta: String = row.get(1).map_err(map_err)?;
                let meta = serde_json::from_str(&meta)
                    .map_err(|e| StoreError::Unavailable(format!("stored file metadata: {e}")))?;
                out.push((crate::tenant_of_key(&key)?, meta));
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
        let (tenant, id) = (scope.tenant_key().to_owned(), id.as_str().to_owned());
        self.read_point(move |c| {
            c.prepare_cached(
                "SELECT bytes FROM _arca_thumbnails WHERE tenant = ?1 AND file_id = ?2 AND size = ?3 AND format = ?4",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![tenant, id, key.size, key.format.as_str()],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(map_err)
        })
        .await
    }

    async fn put_thumbnail(
        &self,
        scope: &Scope,
        id: &FileId,
        key: ThumbKey,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (tenant, id) = (scope.tenant_key().to_owned(), id.as_str().to_owned());
        self.write_job(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM _arca_files WHERE tenant = ?1 AND id = ?2")
                .and_then(|mut st| st.exists(params![tenant, id]))
                .map_err(map_err)?;
            if !exists {
                return Err(StoreError::NotFound);
            }
            c.prepare_cached(
                "INSERT OR IGNORE INTO _arca_thumbnails (tenant, file_id, size, format, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![tenant, id, key.size, key.format.as_str(), bytes]))
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn export(
        &self,
        coll: &CollectionName,
        after: Option<&ExportPosition>,
        limit: usize,
    ) -> Result<Vec<(Tenant, Document)>, StoreError> {
        let table = sql::table(coll);
        let sql = match after {
            Some(_) => format!(
                "SELECT {}, tenant FROM {table} WHERE (tenant, id) > (?1, ?2) ORDER BY tenant, id LIMIT ?3",
                sql::DOC_COLUMNS
            ),
            None => format!(
                "SELECT {}, tenant FROM {table} WHERE ?1 IS NULL AND ?2 IS NULL ORDER BY tenant, id LIMIT ?3",
                sql::DOC_COLUMNS
            ),
        };
        let (tenant, id) = match after {
            Some(p) => (Some(p.tenant.clone()), Some(p.id.as_str().to_owned())),
            None => (None, None),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let mut rows = st.query(params![tenant, id, limit]).map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let doc = sql::decode_document(row).map_err(map_err)??;
                let key: String = row.get(6).map_err(map_err)?;
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
        lookups: &LookupScopes,
        limits: &AggregateLimits,
    ) -> Result<Vec<Value>, StoreError> {
        self.aggregate_docs(coll, scope, pipeline, lookups, limits)
            .await
    }

    async fn event_head(&self, coll: &CollectionName) -> Result<u64, StoreError> {
        let coll = coll.as_str().to_owned();
        self.read_point(move |c| {
            let newest: Option<i64> = c
                .prepare_cached("SELECT max(seq) FROM _arca_events WHERE coll = ?1")
                .and_then(|mut st| st.query_row(params![coll], |r| r.get(0)))
                .map_err(map_err)?;
            Ok(newest.unwrap_or(0).max(floor_of(c, &coll)?))
        })
        .await
        .map(|n| u64::try_from(n).unwrap_or(0))
    }

    async fn events(
        &self,
        coll: &CollectionName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let coll = coll.as_str().to_owned();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT seq, kind, tenant, id, before, after FROM _arca_events
                     WHERE coll = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(map_err)?;
            let mut rows = st.query(params![coll, after, limit]).map_err(map_err)?;
            let mut events = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let seq: i64 = row.get(0).map_err(map_err)?;
                let id: Option<String> = row.get(3).map_err(map_err)?;
                let id = match id {
                    Some(raw) => Some(DocId::parse(&raw).map_err(|_| {
                        StoreError::Unavailable(format!("an event log entry names the id {raw:?}"))
                    })?),
                    None => None,
                };
                events.push(StoredEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    kind: ChangeKind::of_code(row.get(1).map_err(map_err)?)?,
                    tenant: row.get(2).map_err(map_err)?,
                    id,
                    before: row.get(4).map_err(map_err)?,
                    after: row.get(5).map_err(map_err)?,
                });
            }
            // Read after the rows: a prune between the two reads shows as
            // a floor above `after` (a reset), never as a silent gap.
            let floor = u64::try_from(floor_of(c, &coll)?).unwrap_or(0);
            Ok(EventPage { events, floor })
        })
        .await
    }

    async fn prune_events(&self, older_than_ms: u64, max: usize) -> Result<u64, StoreError> {
        self.write(|reply| WriteOp::PruneEvents {
            older_than_ms,
            max,
            reply,
        })
        .await
    }

    async fn put_ticket(&self, ticket: &TicketRecord) -> Result<(), StoreError> {
        let ticket = ticket.clone();
        self.write(|reply| WriteOp::PutTicket { ticket, reply })
            .await
    }

    async fn take_ticket(
        &self,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let hash = *hash;
        self.write(|reply| WriteOp::TakeTicket {
            hash,
            now_ms,
            reply,
        })
        .await
    }

    async fn prune_tickets(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(|reply| WriteOp::PruneTickets { now_ms, reply })
            .await
    }

    // ---- Idempotency keys (issue 22) ----

    async fn idempotency_begin(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        let claim = OwnedClaim {
            key: claim.key.clone(),
            fingerprint: claim.fingerprint.to_owned(),
            run: claim.run.to_owned(),
            now: claim.now,
            lease_until: claim.lease_until,
            expires_at: claim.expires_at,
        };
        self.write(|reply| WriteOp::IdempotencyBegin { claim, reply })
            .await
    }

    async fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let (key, run, response) = (key.clone(), run.to_owned(), response.clone());
        self.write(|reply| WriteOp::IdempotencyFinish {
            key,
            run,
            response,
            reply,
        })
        .await
    }

    async fn idempotency_renew(
        &self,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let (key, run) = (key.clone(), run.to_owned());
        self.write(|reply| WriteOp::IdempotencyRenew {
            key,
            run,
            lease_until,
            reply,
        })
        .await
    }

    async fn idempotency_release(&self, key: &IdempotencyKey, run: &str) -> Result<(), StoreError> {
        let (key, run) = (key.clone(), run.to_owned());
        self.write(|reply| WriteOp::IdempotencyRelease { key, run, reply })
            .await
    }

    async fn idempotency_purge(&self, now: i64, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(|reply| WriteOp::IdempotencyPurge { now, limit, reply })
            .await
    }
}

/// The collection's event log floor (0 when it has none).
fn floor_of(c: &Connection, coll: &str) -> Result<i64, StoreError> {
    let floor: Option<i64> = c
        .prepare_cached("SELECT seq FROM _arca_event_floors WHERE coll = ?1")
        .and_then(|mut st| {
            rusqlite::OptionalExtension::optional(st.query_row(params![coll], |r| r.get(0)))
        })
        .map_err(map_err)?;
    Ok(floor.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_core::SystemFields;
    use rusqlite::StatementStatus;
    use rusqlite::types::Value as Sql;
    use scan::{merged_scan, ordered_sql};

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
    #[allow(clippy::disallowed_methods)] // an engine test acts as an operator
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
            .put_collection(CollectionSpec {
                name: &coll,
                schema: &serde_json::json!({"type": "object"}),
                indexes: &[index],
                access: &serde_json::json!({}),
                at: "2026-12-06T00:00:00.000Z",
                created_at: None,
            })
            .await
            .expect("define");
        let scope = Scope::operator(arca_core::Tenant::None);
        for i in 0..100 {
            let body = serde_json::json!({"category": format!("c{}", i % 5)});
            let doc = Document {
                system: SystemFields {
                    id: DocId::parse(&format!("d{i:03}")).expect("id"),
                    rev: 1,
                    created_at: "2026-12-06T00:00:00.000Z".into(),
                    updated_at: "2026-12-06T00:00:00.000Z".into(),
                    owner: "u".into(),
                },
                body: body.as_object().cloned().unwrap_or_default(),
            };
            store.insert(&coll, &scope, &doc).await.expect("insert");
        }
        let conn = setup::open_conn(&opts.path, true, true, 2000).expect("reader");
        let (a, b) = ordered_sql(&coll, "category");
        let no_tenant = || Sql::Text(String::new());
        for value in ["c1", "c2", "c3", "c4"] {
            let filter = Filter::parse(&serde_json::json!({ "category": value })).expect("filter");
            let pa = [no_tenant(), Sql::Text(value.into()), no_tenant()];
            let pb = [no_tenant(), no_tenant()];
            let page = merged_scan(&conn, (&a, &pa), (&b, &pb), &filter, &Body::Full, (5, None))
                .expect("scan");
            assert_eq!(page.len(), 5, "{value}");
        }
        for sql in [a, b] {
            let st = conn.prepare_cached(&sql).expect("cached");
            assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }
}
