//! What the `Store`'s file methods speak: a stored file's facts
//! (`FileMeta`), the key of a cached thumbnail (`ThumbKey`), the writer an
//! upload is streamed into (`FileWriter`) and the stream a download is read
//! from (`ByteStream`).
//!
//! Streams, never whole files: an upload is handed to the engine chunk by
//! chunk and made visible only by `FileWriter::commit`, so a file of any
//! size costs the server one chunk of memory, and a failed or abandoned
//! upload leaves nothing behind; a download is a stream of chunks for one
//! byte range. The engine stores what it is given: the id, the digest,
//! the sniffed type and the image facts are decided by the server.

use std::pin::Pin;

use arca_core::FileId;
use bytes::Bytes;
use futures_util::Stream;

use crate::StoreError;

/// The facts of an image file, read from its header by the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageFacts {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// `png`, `jpeg`, `gif` or `webp`.
    pub format: String,
}

/// A stored file's metadata, as the server decided it (the tenant is the
/// scope's, kept beside it by the engine).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// The file's id.
    pub id: FileId,
    /// The uploader's `sub` (empty for a caller without one).
    pub owner: String,
    /// The file name as the client gave it (sanitised by the server).
    pub filename: String,
    /// The content type (sniffed, else declared, else
    /// `application/octet-stream`).
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// For images: dimensions and format.
    pub image: Option<ImageFacts>,
}

/// The encoding of a cached thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThumbFormat {
    /// `image/jpeg`.
    Jpeg,
    /// `image/webp`.
    Webp,
}

impl ThumbFormat {
    /// The name stored with the thumbnail (`jpeg`, `webp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }
}

/// A cached thumbnail's key within its file: the longer side's bound and
/// the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThumbKey {
    /// The bound on the longer side, in pixels.
    pub size: u32,
    /// The encoding.
    pub format: ThumbFormat,
}

/// A download: the bytes of one range, in chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// An upload in progress: chunks are appended in order, then `commit`
/// makes the file visible under its metadata in one step. Until then
/// nothing of it can be read, listed or found after a crash; `abort` (or
/// dropping the writer) throws the bytes away.
#[async_trait::async_trait]
pub trait FileWriter: Send {
    /// Appends `chunk`.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError>;

    /// The bytes written so far, read back before the commit (for checks
    /// the server runs on what arrived, such as decoding an image, without
    /// having held it in memory while it arrived). After this only
    /// `commit` or `abort` may follow.
    async fn written(&mut self) -> Result<ByteStream, StoreError>;

    /// Makes the file durable and visible with `meta` (whose id is the
    /// writer's). On an error nothing is visible.
    async fn commit(self: Box<Self>, meta: FileMeta) -> Result<(), StoreError>;

    /// Throws the upload away now (dropping the writer does the same, later).
    async fn abort(self: Box<Self>);
}
