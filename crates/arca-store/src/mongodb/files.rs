//! Files on the MongoDB engine: GridFS, bucket `files` (`files.files`,
//! `files.chunks`), and cached thumbnails in `files.thumbnails`.
//!
//! The layout is GridFS's own, so any GridFS tool reads the bytes: chunks
//! `{files_id, n, data}` of `CHUNK` bytes, and a files document `{_id,
//! length, chunkSize, uploadDate, filename, metadata}`. The `_id` is
//! `{t: tenant key, i: file id}` (as documents' ids are), so a file is
//! reached only within its tenant and two tenants never share a key; the
//! metadata holds `{tenant, owner, filename, content_type, sha256,
//! created_at, image}`, and the indexes lead with `metadata.tenant`.
//!
//! An upload writes its chunks as they come and the files document last:
//! GridFS shows a file only once that document exists, so the commit is
//! that one insert. The chunks are written here rather than through the
//! driver's upload stream because the stream fixes the metadata when it
//! is opened, and the digest, the size and the image facts are known only
//! at the end. Downloads read the chunks of a range by `n` (the driver's
//! download stream cannot seek). Chunks an upload cut by a crash left are
//! unreachable; `sweep` removes them once they are a day old, and the
//! cached thumbnails of files that are gone (a crash in the middle of a
//! delete, which removes the files document first).

use std::ops::Range;

use arca_core::{FileId, Tenant};
use bytes::Bytes;
use futures_util::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document as BsonDoc, doc};
use mongodb::{Collection, Database, IndexModel};

use crate::StoreError;
use crate::files::{ByteStream, FileMeta, FileWriter, ImageFacts, ThumbKey};

/// GridFS's default chunk size (255 KiB): under the 16 MiB document limit
/// with room, and what other GridFS tools expect.
pub const CHUNK: usize = 255 * 1024;

/// The bucket's collections.
pub struct Bucket {
    pub files: Collection<BsonDoc>,
    pub chunks: Collection<BsonDoc>,
    pub thumbnails: Collection<BsonDoc>,
}

impl Bucket {
    /// The bucket `files` of `db`.
    pub fn of(db: &Database) -> Self {
        Self {
            files: db.collection("files.files"),
            chunks: db.collection("files.chunks"),
            thumbnails: db.collection("files.thumbnails"),
        }
    }

    /// The indexes GridFS readers expect (`{files_id, n}` unique) and the
    /// tenant-first ones (by id for `arca copy`, newest first for the
    /// listings of a tenant's or an owner's files). Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), mongodb::error::Error> {
        self.chunks
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"files_id": 1, "n": 1})
                    .options(
                        mongodb::options::IndexOptions::builder()
                            .unique(true)
                            .build(),
                    )
                    .build(),
            )
            .await?;
        self.files
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"metadata.tenant": 1, "_id.i": 1})
                    .build(),
            )
            .await?;
        self.files
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"metadata.tenant": 1, "metadata.created_at": -1, "_id.i": -1})
                    .build(),
            )
            .await?;
        self.files
            .create_index(
                IndexModel::builder()
                    .keys(doc! {
                        "metadata.tenant": 1,
                        "metadata.owner": 1,
                        "metadata.created_at": -1,
                        "_id.i": -1,
                    })
                    .build(),
            )
            .await?;
        Ok(())
    }
}

/// Chunks of an upload older than this with no files document belong to no
/// live upload (`files.upload_timeout` is at most a day).
const STALE_CHUNKS: std::time::Duration = std::time::Duration::from_secs(26 * 3600);

/// Removes what crashes left, unreachable but taking space: the chunks of
/// an upload cut before its files document was written, or of a delete
/// cut after it (first chunks older than `STALE_CHUNKS`, by their
/// ObjectId's time, whose file has no document), then the thumbnails of
/// files that have no document. Best effort, run once per process in the
/// background; how many files' chunks and thumbnails went.
pub async fn sweep(bucket: Bucket) -> (u64, u64) {
    let chunks = sweep_chunks(&bucket).await;
    let thumbnails = sweep_thumbnails(&bucket).await;
    (chunks, thumbnails)
}

async fn sweep_chunks(bucket: &Bucket) -> u64 {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(STALE_CHUNKS)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let oldest = mongodb::bson::oid::ObjectId::from_parts(cutoff, [0; 5], [0; 3]);
    let found = bucket
        .chunks
        .find(doc! {"n": 0, "_id": {"$lt": oldest}})
        .projection(doc! {"files_id": 1})
        .await;
    let Ok(mut cursor) = found else { return 0 };
    let mut removed = 0u64;
    while let Ok(Some(chunk)) = cursor.try_next().await {
        let Some(key) = chunk.get("files_id").cloned() else {
            continue;
        };
        match bucket.files.find_one(doc! {"_id": key.clone()}).await {
            Ok(None) => {
                if bucket
                    .chunks
                    .delete_many(doc! {"files_id": key})
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
            Ok(Some(_)) => {}
            Err(_) => return removed,
        }
    }
    if removed > 0 {
        tracing::info!(
            files = removed,
            "removed the chunks of uploads or deletes cut by a crash"
        );
    }
    removed
}

/// The thumbnails whose file has no document, file by file (in key order,
/// so each file is looked up once).
async fn sweep_thumbnails(bucket: &Bucket) -> u64 {
    let found = bucket
        .thumbnails
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .sort(doc! {"_id.t": 1, "_id.f": 1})
        .await;
    let Ok(mut cursor) = found else { return 0 };
    let mut removed = 0u64;
    let mut last: Option<(String, String)> = None;
    while let Ok(Some(thumb)) = cursor.try_next().await {
        let Ok(key) = thumb.get_document("_id") else {
            continue;
        };
        let (Ok(t), Ok(f)) = (key.get_str("t"), key.get_str("f")) else {
            continue;
        };
        if last.as_ref().is_some_and(|(lt, lf)| lt == t && lf == f) {
            continue;
        }
        last = Some((t.to_owned(), f.to_owned()));
        match bucket.files.find_one(doc! {"_id": {"t": t, "i": f}}).await {
            Ok(None) => {
                if bucket
                    .thumbnails
                    .delete_many(doc! {"_id.t": t, "_id.f": f})
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
            Ok(Some(_)) => {}
            Err(_) => return removed,
        }
    }
    if removed > 0 {
        tracing::info!(
            files = removed,
            "removed the thumbnails of files deleted by a delete cut by a crash"
        );
    }
    removed
}

/// The key of a file in its tenant: `{t, i}`.
pub fn file_key(tenant: &Tenant, id: &FileId) -> BsonDoc {
    doc! {"t": tenant.key(), "i": id.as_str()}
}

/// The key of a cached thumbnail.
pub fn thumb_key(tenant: &Tenant, id: &FileId, key: ThumbKey) -> BsonDoc {
    doc! {"t": tenant.key(), "f": id.as_str(), "s": i64::from(key.size), "e": key.format.as_str()}
}

fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!("a stored file document is unreadable: {what}"))
}

/// The files document of `meta`, stored in `tenant`.
pub fn files_document(tenant: &Tenant, meta: &FileMeta) -> BsonDoc {
    let image = match &meta.image {
        Some(i) => Bson::Document(doc! {
            "width": i64::from(i.width), "height": i64::from(i.height), "format": &i.format,
        }),
        None => Bson::Null,
    };
    let created = humantime::parse_rfc3339(&meta.created_at)
        .map(DateTime::from_system_time)
        .unwrap_or_else(|_| DateTime::now());
    doc! {
        "_id": file_key(tenant, &meta.id),
        "length": i64::try_from(meta.size).unwrap_or(i64::MAX),
        "chunkSize": CHUNK as i32,
        "uploadDate": created,
        "filename": &meta.filename,
        "metadata": {
            "tenant": tenant.key(),
            "owner": &meta.owner,
            "filename": &meta.filename,
            "content_type": &meta.content_type,
            "sha256": &meta.sha256,
            "created_at": &meta.created_at,
            "image": image,
        },
    }
}

/// A files document read back.
pub fn meta_of(stored: &BsonDoc) -> Result<FileMeta, StoreError> {
    let id = stored
        .get_document("_id")
        .ok()
        .and_then(|k| k.get_str("i").ok())
        .and_then(|i| FileId::parse(i).ok())
        .ok_or_else(|| bad("_id"))?;
    let m = stored
        .get_document("metadata")
        .map_err(|_| bad("metadata"))?;
    let text = |k: &str| m.get_str(k).map(str::to_owned).map_err(|_| bad(k));
    let number = |d: &BsonDoc, k: &str| match d.get(k) {
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Double(n)) if *n >= 0.0 => Some(*n as u64),
        _ => None,
    };
    let image = match m.get("image") {
        Some(Bson::Document(i)) => Some(ImageFacts {
            width: number(i, "width")
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("width"))?,
            height: number(i, "height")
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("height"))?,
            format: i.get_str("format").map_err(|_| bad("format"))?.to_owned(),
        }),
        _ => None,
    };
    Ok(FileMeta {
        id,
        owner: text("owner")?,
        filename: text("filename")?,
        content_type: text("content_type")?,
        size: number(stored, "length").ok_or_else(|| bad("length"))?,
        sha256: text("sha256")?,
        created_at: text("created_at")?,
        image,
    })
}

/// The chunk size a files document names (GridFS's default if absent).
pub fn chunk_size_of(stored: &BsonDoc) -> u64 {
    match stored.get("chunkSize") {
        Some(Bson::Int32(n)) if *n > 0 => *n as u64,
        Some(Bson::Int64(n)) if *n > 0 => *n as u64,
        _ => CHUNK as u64,
    }
}

/// An upload into the bucket (see the module comment).
pub struct GridFsWriter {
    pub(super) bucket: Bucket,
    pub(super) tenant: Tenant,
    pub(super) key: BsonDoc,
    pub(super) buffer: Vec<u8>,
    pub(super) n: i32,
    /// Bytes written so far.
    pub(super) written: u64,
    /// Committed or aborted: no chunks to remove on drop.
    pub(super) finished: bool,
}

impl GridFsWriter {
    /// Writes the buffer's first `CHUNK` bytes (or all of it, at the end)
    /// as chunk `n`.
    async fn flush_chunk(&mut self, last: bool) -> Result<(), StoreError> {
        while self.buffer.len() >= CHUNK || (last && !self.buffer.is_empty()) {
            let take = self.buffer.len().min(CHUNK);
            let data: Vec<u8> = self.buffer.drain(..take).collect();
            self.bucket
                .chunks
                .insert_one(doc! {
                    "files_id": self.key.clone(),
                    "n": self.n,
                    "data": Binary { subtype: BinarySubtype::Generic, bytes: data },
                })
                .await
                .map_err(super::engine::map_err)?;
            self.n += 1;
        }
        Ok(())
    }

    async fn remove_chunks(&self) {
        let _ = self
            .bucket
            .chunks
            .delete_many(doc! {"files_id": self.key.clone()})
            .await;
    }
}

#[async_trait::async_trait]
impl FileWriter for GridFsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        self.flush_chunk(false).await
    }

    async fn written(&mut self) -> Result<ByteStream, StoreError> {
        // The last, short chunk goes out now: only the commit follows.
        self.flush_chunk(true).await?;
        read_range(
            &self.bucket.chunks,
            self.key.clone(),
            CHUNK as u64,
            0..self.written,
        )
        .await
    }

    async fn commit(mut self: Box<Self>, meta: FileMeta) -> Result<(), StoreError> {
        let done = async {
            self.flush_chunk(true).await?;
            self.bucket
                .files
                .insert_one(files_document(&self.tenant, &meta))
                .await
                .map_err(super::engine::map_err)?;
            Ok(())
        }
        .await;
        if done.is_err() {
            self.remove_chunks().await;
        }
        self.finished = true;
        done
    }

    async fn abort(mut self: Box<Self>) {
        self.finished = true;
        self.remove_chunks().await;
    }
}

impl Drop for GridFsWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped mid-upload: its chunks go (the driver's stream does the
        // same). Without a files document nobody could see them anyway.
        let (chunks, key) = (self.bucket.chunks.clone(), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = chunks.delete_many(doc! {"files_id": key}).await;
            });
        }
    }
}

/// The bytes `range` of the file keyed `key` (chunks of `chunk` bytes).
pub async fn read_range(
    chunks: &Collection<BsonDoc>,
    key: BsonDoc,
    chunk: u64,
    range: Range<u64>,
) -> Result<ByteStream, StoreError> {
    if range.start >= range.end {
        return Ok(Box::pin(futures_util::stream::empty()));
    }
    let first = range.start / chunk;
    let last = (range.end - 1) / chunk;
    let cursor = chunks
        .find(doc! {
            "files_id": key,
            "n": {"$gte": i64::try_from(first).unwrap_or(i64::MAX), "$lte": i64::try_from(last).unwrap_or(i64::MAX)},
        })
        .sort(doc! {"n": 1})
        // A few chunks per batch: ~1 MiB in flight per download.
        .batch_size(4)
        .await
        .map_err(super::engine::map_err)?;
    let state = (cursor, first, range);
    let stream = futures_util::stream::unfold(Some(state), move |state| async move {
        let (mut cursor, expected, range) = state?;
        let item = match cursor.try_next().await {
            Ok(Some(stored)) => stored,
            // The range must end where it was asked to: a missing chunk
            // is an error, never a short body passed off as whole.
            Ok(None) if expected > last => return None,
            Ok(None) => {
                let e = StoreError::Unavailable(format!("a stored file misses chunk {expected}"));
                return Some((Err(e), None));
            }
            Err(e) => return Some((Err(super::engine::map_err(e)), None)),
        };
        let n = match item.get("n") {
            Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
            Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let data = match item.get("data") {
            Some(Bson::Binary(b)) if n == Some(expected) => &b.bytes,
            _ => {
                let e = StoreError::Unavailable(format!("a stored file misses chunk {expected}"));
                return Some((Err(e), None));
            }
        };
        let at = expected * chunk;
        let from = range.start.saturating_sub(at).min(data.len() as u64) as usize;
        let to = (range.end - at).min(data.len() as u64) as usize;
        let out = Bytes::copy_from_slice(data.get(from..to).unwrap_or_default());
        Some((Ok(out), Some((cursor, expected + 1, range))))
    });
    Ok(Box::pin(stream))
}
