//! Files on the embedded engine: the bytes live in the `files` folder
//! beside the database, the metadata and the cached thumbnails in its
//! tables (`_arca_files`, `_arca_thumbnails`, written by the writer thread
//! like every other write).
//!
//! An upload is written to `files/tmp/<random>` as it arrives, then at the
//! commit flushed to disk (`fsync`), renamed to its place
//! (`files/<first two hex digits of the id>/<id>_<tenant tag>`), the folder
//! flushed too, and only then its metadata row committed: a crash (or a
//! `kill -9`) before the row leaves no file anyone can see, and never a row
//! whose bytes are half written. What a crash can leave behind (a
//! temporary file, or renamed bytes without a row) is removed by `sweep`
//! when the store next opens, once old enough that no live upload of
//! another process on the same folder can own it.
//!
//! All file I/O runs on tokio's blocking pool (`tokio::fs`) or on a thread
//! of its own, never on an async worker.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arca_core::FileId;
use bytes::{Bytes, BytesMut};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::writer::{TypedJob, WriteOp, map_err};
use crate::StoreError;
use crate::files::{ByteStream, FileMeta, FileWriter};

/// Bytes read from disk per chunk of a download.
const READ_CHUNK: usize = 64 << 10;

/// A temporary upload file older than this belongs to no live upload
/// (`files.upload_timeout` is at most a day).
const STALE_TMP: Duration = Duration::from_secs(26 * 3600);

/// Renamed bytes without a metadata row older than this were left by a
/// crash between the rename and the row's commit (a window of
/// milliseconds).
const STALE_ORPHAN: Duration = Duration::from_secs(3600);

/// The `files` folder beside the database `db`.
pub fn files_dir(db: &Path) -> PathBuf {
    db.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("files")
}

/// Where the bytes of file `id` of the tenant `tenant` (its storage key)
/// live, relative to the `files` folder. The tenant is part of the name
/// so two tenants never share a path, whatever ids they hold.
pub fn relative_path(tenant: &str, id: &str) -> PathBuf {
    // FNV-1a: a short stable tag, not a secret (the id is the secret).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let shard = id.get(..2).unwrap_or("00");
    PathBuf::from(shard).join(format!("{id}_{h:016x}"))
}

fn io_err(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// Flushes a folder, so a rename into it survives power loss. Blocking.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// An upload on the embedded engine (see the module comment).
pub struct SqliteFileWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    root: PathBuf,
    tenant: String,
    id: FileId,
    /// The writer thread's queue, held weakly: an upload left hanging
    /// must not keep the store's writer alive when the store closes.
    writes: mpsc::WeakSender<WriteOp>,
    /// Committed or aborted: nothing left to remove on drop.
    finished: bool,
}

impl SqliteFileWriter {
    /// Creates the temporary file of an upload under `root`.
    pub async fn begin(
        root: &Path,
        tenant: &str,
        id: &FileId,
        writes: mpsc::WeakSender<WriteOp>,
    ) -> Result<Self, StoreError> {
        let tmp_dir = root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| io_err("cannot create the files folder", e))?;
        let tmp = tmp_dir.join(format!("{}.{:016x}", id.as_str(), rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| io_err("cannot create an upload file", e))?;
        Ok(Self {
            file: Some(file),
            tmp,
            root: root.to_path_buf(),
            tenant: tenant.to_owned(),
            id: id.clone(),
            writes,
            finished: false,
        })
    }

    /// The bytes made durable under their final name; the path.
    async fn place(&mut self) -> Result<PathBuf, StoreError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StoreError::Unavailable("the upload was already finished".into()))?;
        file.flush()
            .await
            .map_err(|e| io_err("writing an upload", e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("flushing an upload", e))?;
        drop(file);
        let dest = self
            .root
            .join(relative_path(&self.tenant, self.id.as_str()));
        let (tmp, dest_in) = (self.tmp.clone(), dest.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = dest_in.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            if dest_in.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file with this id exists",
                ));
            }
            std::fs::rename(&tmp, &dest_in)?;
            sync_dir(dir)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("placing an upload: {e}")))?
        .map_err(|e| io_err("placing an upload", e))?;
        Ok(dest)
    }
}

#[async_trait::async_trait]
impl FileWriter for SqliteFileWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the upload was already finished".into()))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| io_err("writing an upload", e))
    }

    async fn written(&mut self) -> Result<ByteStream, StoreError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the upload was already finished".into()))?;
        file.flush()
            .await
            .map_err(|e| io_err("writing an upload", e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_err("reading an upload back", e))?
            .len();
        read_range(self.tmp.clone(), 0..len).await
    }

    async fn commit(mut self: Box<Self>, meta: FileMeta) -> Result<(), StoreError> {
        let dest = self.place().await?;
        // Renamed: the temporary name is gone, nothing to remove on drop
        // but the placed bytes if the row cannot be written.
        self.finished = true;
        let text = serde_json::to_string(&meta)
            .map_err(|e| StoreError::Unavailable(format!("file metadata: {e}")))?;
        let (tenant, id) = (self.tenant.clone(), self.id.as_str().to_owned());
        let (reply, answer) = oneshot::channel();
        let job = TypedJob {
            f: move |conn: &Connection| -> Result<(), StoreError> {
                conn.prepare_cached(
                    "INSERT INTO _arca_files (tenant, id, meta) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut st| st.execute(params![tenant, id, text]))
                .map_err(map_err)?;
                Ok(())
            },
            reply,
        };
        let sent = match self.writes.upgrade() {
            Some(tx) => tx.send(WriteOp::Job(Box::new(job))).await.is_ok(),
            None => false,
        };
        let result = match sent {
            true => answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("writer stopped".into()))),
            false => Err(StoreError::Unavailable("writer stopped".into())),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&dest).await;
        }
        result
    }

    async fn abort(mut self: Box<Self>) {
        self.file = None;
        self.finished = true;
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for SqliteFileWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped mid-upload (the client went away, the request timed
        // out): the temporary file goes, off the async worker when there
        // is a runtime.
        let tmp = self.tmp.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_file(tmp));
            }
            Err(_) => {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// The bytes `range` of the file at `path`, in chunks of `READ_CHUNK`.
pub async fn read_range(path: PathBuf, range: Range<u64>) -> Result<ByteStream, StoreError> {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        // Deleted since its row was read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
        Err(e) => return Err(io_err("opening a stored file", e)),
    };
    if range.start > 0 {
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| io_err("reading a stored file", e))?;
    }
    let left = range.end.saturating_sub(range.start);
    let stream = futures_util::stream::unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK);
        let mut buf = BytesMut::zeroed(want);
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(StoreError::Unavailable(
                    "a stored file is shorter than its metadata says".into(),
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.freeze()), (file, left - n as u64)))
            }
            Err(e) => Some((Err(io_err("reading a stored file", e)), (file, 0))),
        }
    });
    Ok(Box::pin(stream))
}

/// The metadata row of a file (a reader thread's query).
pub fn meta_of(conn: &Connection, tenant: &str, id: &str) -> Result<Option<FileMeta>, StoreError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT meta FROM _arca_files WHERE tenant = ?1 AND id = ?2")
        .and_then(|mut st| st.query_row(params![tenant, id], |r| r.get(0)).optional())
        .map_err(map_err)?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Unavailable(format!("stored file metadata: {e}")))
    })
    .transpose()
}

/// The files listing's statements, by (one owner's?, after a position?):
/// four fixed texts rather than one with `?n IS NULL OR ...` arms, which
/// with stable plans (QPSG) would keep the owner and the position out of
/// the index range, so every later page would walk the tenant's files
/// from the newest. Parameters: the tenant, the limit, then the owner
/// (when one), then the position's `created_at` and id (when one).
const LIST: [[&str; 2]; 2] = [
    [
        "SELECT meta FROM _arca_files WHERE tenant = ?1 \
         ORDER BY json_extract(meta, '$.created_at') DESC, id DESC LIMIT ?2",
        "SELECT meta FROM _arca_files WHERE tenant = ?1 \
         AND json_extract(meta, '$.created_at') <= ?3 \
         AND (json_extract(meta, '$.created_at') < ?3 OR id < ?4) \
         ORDER BY json_extract(meta, '$.created_at') DESC, id DESC LIMIT ?2",
    ],
    [
        "SELECT meta FROM _arca_files WHERE tenant = ?1 AND json_extract(meta, '$.owner') = ?3 \
         ORDER BY json_extract(meta, '$.created_at') DESC, id DESC LIMIT ?2",
        "SELECT meta FROM _arca_files WHERE tenant = ?1 AND json_extract(meta, '$.owner') = ?3 \
         AND json_extract(meta, '$.created_at') <= ?4 \
         AND (json_extract(meta, '$.created_at') < ?4 OR id < ?5) \
         ORDER BY json_extract(meta, '$.created_at') DESC, id DESC LIMIT ?2",
    ],
];

/// Up to `limit` files' metadata of the tenant (of `owner` only, when
/// given), newest first (`created_at` descending, then id descending),
/// strictly after `after` (a `created_at` and an id) in that order.
pub fn list(
    conn: &Connection,
    tenant: &str,
    owner: Option<&str>,
    after: Option<&(String, String)>,
    limit: i64,
) -> Result<Vec<FileMeta>, StoreError> {
    let sql = LIST[usize::from(owner.is_some())][usize::from(after.is_some())];
    let mut st = conn.prepare_cached(sql).map_err(map_err)?;
    let mut rows = match (owner, after) {
        (None, None) => st.query(params![tenant, limit]),
        (None, Some((at, id))) => st.query(params![tenant, limit, at, id]),
        (Some(owner), None) => st.query(params![tenant, limit, owner]),
        (Some(owner), Some((at, id))) => st.query(params![tenant, limit, owner, at, id]),
    }
    .map_err(map_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        let text: String = row.get(0).map_err(map_err)?;
        out.push(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Unavailable(format!("stored file metadata: {e}")))?,
        );
    }
    Ok(out)
}

/// Removes what crashes left in `root` (see the module comment): temporary
/// files older than a day, and placed bytes without a metadata row in the
/// database `db`, older than an hour. Blocking: run on a thread of its own.
pub fn sweep(root: &Path, db: &Path) {
    let now = SystemTime::now();
    let old = |p: &Path, age: Duration| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|a| a > age)
    };
    if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
        for e in entries.flatten() {
            if old(&e.path(), STALE_TMP) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let Ok(conn) = super::setup::open_conn(db, true, false, 500) else {
        return;
    };
    let Ok(shards) = std::fs::read_dir(root) else {
        return;
    };
    for shard in shards.flatten() {
        if shard.file_name() == "tmp" || !shard.path().is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((id, _tag)) = name.split_once('_') else {
                continue;
            };
            if !old(&e.path(), STALE_ORPHAN) {
                continue;
            }
            let mut st = match conn.prepare_cached("SELECT tenant FROM _arca_files WHERE id = ?1") {
                Ok(st) => st,
                Err(_) => return,
            };
            let tenants: Vec<String> = match st
                .query_map(params![id], |r| r.get(0))
                .and_then(|rows| rows.collect())
            {
                Ok(t) => t,
                Err(_) => continue,
            };
            let owned = tenants
                .iter()
                .any(|t| relative_path(t, id).file_name() == Some(e.file_name().as_os_str()));
            if !owned {
                tracing::info!(file = %name, "removing bytes left without metadata by a crash");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_tenants_apart_and_shard_by_id() {
        let id = "ab".repeat(16);
        let a = relative_path("t1", &id);
        let b = relative_path("t2", &id);
        assert_ne!(a, b);
        assert!(a.starts_with("ab"));
        assert_eq!(relative_path("", &id), relative_path("", &id));
    }
}
