//! The embedded engine: one SQLite file in WAL mode. Writes go to a single
//! writer thread (group commit, see `writer`); reads run on tokio's blocking
//! pool over a small set of read connections, so no SQLite call ever runs
//! on an async worker thread.
//!
//! Layout: `_arca_collections` holds definitions; each collection is a table
//! `c_<name>(tenant, id, rev, created_at, updated_at, owner, doc JSONB)` with
//! primary key `(tenant, id)`; declared indexes are expression indexes
//! leading with `tenant`.

mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arca_core::{CollectionName, DocId, Document, IndexDef, Scope};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{NewDocument, Page, PutOutcome, Store, StoreError, StoredCollection};
use writer::{WriteOp, map_err};

/// How the embedded engine is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file (its folder is created if missing).
    pub path: PathBuf,
    /// `synchronous = FULL` (true) or `NORMAL` (false).
    pub synchronous_full: bool,
    /// Number of read connections.
    pub readers: usize,
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
    writes: mpsc::Sender<WriteOp>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_slots: Arc<Semaphore>,
    path: PathBuf,
    id_seed: [u8; 5],
    id_counter: AtomicU32,
}

fn open_conn(
    path: &Path,
    read_only: bool,
    synchronous_full: bool,
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
    let mut pragmas = format!("PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF;");
    if !read_only {
        pragmas.insert_str(0, "PRAGMA journal_mode = WAL; ");
    }
    conn.execute_batch(&pragmas).map_err(map_err)?;
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
        let writer_conn = open_conn(&opts.path, false, opts.synchronous_full)?;
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
        let mut readers = Vec::with_capacity(opts.readers);
        for _ in 0..opts.readers.max(1) {
            readers.push(open_conn(&opts.path, true, opts.synchronous_full)?);
        }
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("arca-sqlite-writer".into())
            .spawn(move || writer::run(writer_conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            writes: tx,
            read_slots: Arc::new(Semaphore::new(readers.len())),
            readers: Arc::new(Mutex::new(readers)),
            path: opts.path.clone(),
            id_seed: rand::random(),
            id_counter: AtomicU32::new(rand::random()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new_id(&self) -> DocId {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        DocId::generated(u32::try_from(secs).unwrap_or(u32::MAX), self.id_seed, n)
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool
                .lock()
                .map_err(|_| StoreError::Unavailable("reader pool poisoned".into()))?
                .pop()
                .ok_or_else(|| StoreError::Unavailable("no read connection".into()))?;
            let out = f(&conn);
            if let Ok(mut p) = pool.lock() {
                p.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Queues a write and waits for the commit that holds it.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

fn body_text(body: &Map<String, Value>) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| "{}".into())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT name, def, created_at, updated_at FROM _arca_collections ORDER BY name",
                )
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
                let (Ok(name), Ok(rec)) = (
                    CollectionName::parse(&name),
                    serde_json::from_str::<CollectionRecord>(&def),
                ) else {
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
        .await
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
        let (name, indexes) = (name.clone(), indexes.to_vec());
        self.write(|reply| WriteOp::PutCollection {
            name,
            record,
            indexes,
            reply,
        })
        .await
    }

    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(|reply| WriteOp::DeleteCollection { name, reply })
            .await
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
            body_text(&doc.body),
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
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ?1 AND id = ?2",
            sql::DOC_COLUMNS,
            sql::table(coll)
        );
        let (tenant, id) = (scope.tenant_key().to_owned(), id.clone());
        self.read(move |c| {
            let row = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_row(params![tenant, id.as_str()], sql::decode_document)
                        .optional()
                })
                .map_err(map_err)?;
            row.transpose()
        })
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
            body_text(&body),
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

    async fn list(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        page: Page,
    ) -> Result<Vec<Document>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            sql::DOC_COLUMNS,
            sql::table(coll)
        );
        let tenant = scope.tenant_key().to_owned();
        let after = page
            .after
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let limit = i64::try_from(page.limit).unwrap_or(1000);
        self.read(move |c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = st
                .query_map(params![tenant, after, limit], sql::decode_document)
                .map_err(map_err)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(map_err)??);
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self, coll: &CollectionName, scope: &Scope) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE tenant = ?1",
            sql::table(coll)
        );
        let tenant = scope.tenant_key().to_owned();
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(&sql)
                .and_then(|mut st| st.query_row(params![tenant], |r| r.get(0)))
                .map_err(map_err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}
