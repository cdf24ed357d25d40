//! Connection set-up of the embedded engine: how each connection is opened
//! (WAL, `synchronous`, page cache, statement cache, stable plans) and the
//! engine's own tables, created when the database is opened.

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::writer::map_err;
use crate::StoreError;

/// The engine's own tables: the catalogue of collection definitions,
/// small shared values (the catalogue generation, which every process on
/// the file polls to learn that definitions changed), the secrets every
/// process must share (signing keys), the metadata of stored files (their
/// bytes live in the `files` folder beside the database; listed newest
/// first, all or one owner's, through indexes on their `created_at`) and
/// their cached
/// thumbnails, the change events: the log (one row per change, keyed by
/// collection and position; the documents as clients see them, JSON
/// text), each collection's floor (positions at or below it are no longer
/// kept), and stream tickets (by hash), and the idempotency records of
/// callers' retried requests (with the kept response of each).
const ENGINE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS _arca_collections (
        name TEXT PRIMARY KEY,
        def TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS _arca_meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS _arca_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS _arca_files (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        meta TEXT NOT NULL,
        PRIMARY KEY (tenant, id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS _arca_files_by_time
        ON _arca_files (tenant, json_extract(meta, '$.created_at'), id);
    CREATE INDEX IF NOT EXISTS _arca_files_by_owner
        ON _arca_files (tenant, json_extract(meta, '$.owner'), json_extract(meta, '$.created_at'), id);
    CREATE TABLE IF NOT EXISTS _arca_thumbnails (
        tenant TEXT NOT NULL,
        file_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        format TEXT NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (tenant, file_id, size, format)
    );
    CREATE TABLE IF NOT EXISTS _arca_events (
        coll TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        id TEXT,
        before TEXT,
        after TEXT,
        at INTEGER NOT NULL,
        PRIMARY KEY (coll, seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS _arca_event_floors (
        coll TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS _arca_tickets (
        hash BLOB PRIMARY KEY,
        coll TEXT NOT NULL,
        holder TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );    CREATE TABLE IF NOT EXISTS _arca_idempotency (
        tenant TEXT NOT NULL,
        subject TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        run TEXT NOT NULL,
        lease_until INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        status INTEGER,
        headers TEXT,
        body BLOB,
        PRIMARY KEY (tenant, subject, key)
    );
    CREATE INDEX IF NOT EXISTS _arca_idempotency_expiry ON _arca_idempotency (expires_at);";

/// Opens a connection to `path` with the engine's settings. The writer's
/// (`read_only = false`) creates the file and switches it to WAL.
pub fn open_conn(
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

/// Creates the engine's own tables if missing (on the writer connection).
pub fn create_engine_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(ENGINE_TABLES).map_err(map_err)
}
