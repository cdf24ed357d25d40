//! Files through the gateway: `Gateway::files` (a caller with a token) and
//! `Gateway::files_by_link` (a signed link) make a `FilesGrant`, which owns
//! the tenant every call is confined to and runs the checks itself: any
//! caller of the tenant reads, only the owner or an admin deletes, a link
//! reaches its one file and nothing else. Another tenant's file is simply
//! not found.
//!
//! Image work (checking an upload, making a thumbnail) runs on a bounded
//! blocking pool, one job per CPU at once, with the bytes read back from
//! the store inside the job's permit: uploads never hold a file in memory
//! while it arrives, and at most one file per CPU is in memory for
//! decoding at any time. A thumbnail is made once per (file, size,
//! format) whatever the number of concurrent requests (single flight),
//! then served from the store's cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_auth::{AuthSettings, Identity};
use arca_core::{FileId, Scope, Tenant};
use arca_store::{ByteStream, FileMeta, FileWriter, ImageFacts, Store, StoreError, ThumbKey};
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::Semaphore;

use super::links::{self, LinkParams};
use super::{Caller, stamp};
use crate::error::{ApiError, ProblemKind};

/// A thumbnail being made: (tenant key, file, key).
type Flight = (String, FileId, ThumbKey);

/// What every files grant shares: the image pool, the thumbnails being
/// made, and the link keys as last read.
pub(crate) struct FilesShared {
    /// One permit per CPU: image jobs running at once.
    images: Arc<Semaphore>,
    /// Thumbnails being made, by (tenant key, file, key): later requests
    /// for the same one wait for it instead of making it again.
    flights: Mutex<HashMap<Flight, Arc<tokio::sync::Mutex<()>>>>,
    /// The link keys (current, previous) and when they were read.
    keys: tokio::sync::Mutex<Option<(Instant, Vec<[u8; 32]>)>>,
}

impl Default for FilesShared {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            images: Arc::new(Semaphore::new(cpus)),
            flights: Mutex::default(),
            keys: tokio::sync::Mutex::new(None),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(ProblemKind::FileNotFound, "no such file")
}

fn bad_link() -> ApiError {
    ApiError::new(
        ProblemKind::Unauthorized,
        "the link is invalid, has expired, or is for another file",
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FilesShared {
    /// The link keys (current first), read again when older than
    /// `links::KEYS_TTL`, or when `stale_after` says a verification
    /// failed with keys that old (a rotation on another replica).
    async fn link_keys(
        &self,
        store: &dyn Store,
        stale_after: Duration,
    ) -> Result<Vec<[u8; 32]>, ApiError> {
        let mut cached = self.keys.lock().await;
        if let Some((at, keys)) = cached.as_ref()
            && at.elapsed() < stale_after.min(links::KEYS_TTL)
        {
            return Ok(keys.clone());
        }
        let current = store.secret("links").await?;
        let previous = store.secret("links.previous").await?;
        let keys = vec![current, previous];
        *cached = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }
}

/// A caller's handle on the files of its tenant (or, for a signed link,
/// on one file).
pub struct FilesGrant {
    pub(super) store: Arc<dyn Store>,
    pub(super) scope: Scope,
    /// The token's identity; `None` for a link.
    pub(super) caller: Option<Arc<Identity>>,
    /// The caller holds the admin role (deletes any file of its tenant).
    pub(super) admin: bool,
    /// A link's file: the only one this grant reaches.
    pub(super) only: Option<FileId>,
    pub(super) shared: Arc<FilesShared>,
}

/// Makes the grant of a caller with a token (401 without one; 403 without
/// a tenant claim when `auth.require_tenant` is set).
pub(super) fn grant_for(
    store: &Arc<dyn Store>,
    settings: &AuthSettings,
    shared: &Arc<FilesShared>,
    caller: &Caller,
) -> Result<FilesGrant, ApiError> {
    let identity = caller
        .identity
        .clone()
        .ok_or_else(ApiError::missing_token)?;
    if settings.require_tenant && identity.tenant == Tenant::None {
        return Err(ApiError::new(
            ProblemKind::Forbidden,
            format!(
                "auth.require_tenant is set and the token has no {} claim",
                settings.tenant_claim
            ),
        ));
    }
    // Files have no row rule: the tenant is the whole scope.
    #[allow(clippy::disallowed_methods)]
    let scope = Scope::authorized(identity.tenant.clone(), arca_core::query::Filter::all());
    Ok(FilesGrant {
        store: store.clone(),
        scope,
        admin: identity.has_role(&settings.admin_role),
        caller: Some(identity),
        only: None,
        shared: shared.clone(),
    })
}

/// Makes the grant of a signed link to `id` (401 unless it verifies).
pub(super) async fn grant_for_link(
    store: &Arc<dyn Store>,
    shared: &Arc<FilesShared>,
    id: &FileId,
    link: &LinkParams,
) -> Result<FilesGrant, ApiError> {
    let now = unix_now();
    let keys = shared.link_keys(store.as_ref(), links::KEYS_TTL).await?;
    let mut valid = links::verify(&keys, id, link, now);
    if !valid && link.exp > now {
        // Perhaps signed with a key rotated in since these were read.
        let keys = shared
            .link_keys(store.as_ref(), Duration::from_secs(1))
            .await?;
        valid = links::verify(&keys, id, link, now);
    }
    if !valid {
        return Err(bad_link());
    }
    let tenant = match link.tenant.as_str() {
        "" => Tenant::None,
        t => Tenant::parse(t).map_err(|_| bad_link())?,
    };
    // The signature names the tenant: the link's own scope.
    #[allow(clippy::disallowed_methods)]
    let scope = Scope::authorized(tenant, arca_core::query::Filter::all());
    Ok(FilesGrant {
        store: store.clone(),
        scope,
        caller: None,
        admin: false,
        only: Some(id.clone()),
        shared: shared.clone(),
    })
}

impl FilesGrant {
    /// A link reaches its own file only.
    fn reaches(&self, id: &FileId) -> Result<(), ApiError> {
        match &self.only {
            Some(only) if only != id => Err(bad_link()),
            _ => Ok(()),
        }
    }

    /// The caller's identity (uploads, deletes and links need a token).
    fn identity(&self) -> Result<&Arc<Identity>, ApiError> {
        self.caller.as_ref().ok_or_else(ApiError::missing_token)
    }

    /// The file's metadata, or 404.
    pub async fn meta(&self, id: &FileId) -> Result<FileMeta, ApiError> {
        self.reaches(id)?;
        self.store
            .file_meta(&self.scope, id)
            .await?
            .ok_or_else(not_found)
    }

    /// Up to `limit` of the files the caller uploaded (`all`: of every
    /// file of the tenant, for an admin only), newest first, after `after`
    /// (the `created_at` and id of the last file of the previous page).
    ///
    /// Only one's own files by default: the contract lets any caller of
    /// the tenant read a file it knows the id of, and applications keep a
    /// file's id in a document whose access rules decide who learns it; a
    /// list of every file of the tenant for every caller would hand out
    /// what those rules withhold. A caller with a token only (a link
    /// reaches one file, never a list), and with a `sub` (files of callers
    /// without one cannot be told apart).
    pub async fn list(
        &self,
        all: bool,
        after: Option<(&str, &FileId)>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, ApiError> {
        let who = self.identity()?;
        if self.only.is_some() {
            return Err(bad_link());
        }
        let owner = if all {
            if !self.admin {
                return Err(ApiError::new(
                    ProblemKind::Forbidden,
                    "only an admin may list every file of the tenant (all=true)",
                ));
            }
            None
        } else {
            if who.sub.is_empty() {
                return Err(ApiError::new(
                    ProblemKind::Forbidden,
                    "listing one's files needs a token with a `sub` claim",
                ));
            }
            Some(who.sub.as_str())
        };
        Ok(self
            .store
            .list_files(&self.scope, owner, after, limit)
            .await?)
    }

    /// The bytes `range` of the file, as a stream (404 if it went).
    pub async fn read(
        &self,
        id: &FileId,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, ApiError> {
        self.reaches(id)?;
        match self.store.read_file(&self.scope, id, range).await {
            Err(StoreError::NotFound) => Err(not_found()),
            other => Ok(other?),
        }
    }

    /// Deletes the file (its owner or an admin; 403 for others, 404 when
    /// there is none), with its thumbnails.
    pub async fn delete(&self, id: &FileId) -> Result<(), ApiError> {
        let who = self.identity()?;
        let meta = self.meta(id).await?;
        if !self.admin && meta.owner != who.sub {
            return Err(ApiError::new(
                ProblemKind::Forbidden,
                "only the file's owner or an admin may delete it",
            ));
        }
        self.store
            .delete_file(&self.scope, id)
            .await?
            .ok_or_else(not_found)?;
        Ok(())
    }

    /// The query string of a signed link to the file (after checking it
    /// exists), and its lifetime in seconds.
    pub async fn link(&self, id: &FileId, ttl: Duration) -> Result<String, ApiError> {
        self.identity()?;
        self.meta(id).await?;
        let keys = self
            .shared
            .link_keys(self.store.as_ref(), links::KEYS_TTL)
            .await?;
        let exp = unix_now() + ttl.as_secs().max(1);
        Ok(links::query(&keys[0], id, self.scope.tenant_key(), exp))
    }

    /// Starts an upload under a fresh id (a caller with a token only).
    pub async fn upload(&self) -> Result<Upload, ApiError> {
        let owner = self.identity()?.sub.clone();
        let id = stamp::new_file_id();
        let writer = self.store.begin_file(&self.scope, &id).await?;
        Ok(Upload {
            writer,
            id,
            owner,
            images: self.shared.images.clone(),
        })
    }

    /// The thumbnail `key` of the image `meta`: from the cache, or made by
    /// `make` (given the file's bytes, on the image pool) once, whatever
    /// the number of requests asking at the same time, then cached.
    pub async fn thumbnail<F>(
        &self,
        meta: &FileMeta,
        key: ThumbKey,
        make: F,
    ) -> Result<Vec<u8>, ApiError>
    where
        F: FnOnce(&[u8]) -> Result<Vec<u8>, ApiError> + Send + 'static,
    {
        let id = &meta.id;
        self.reaches(id)?;
        if let Some(hit) = self.store.thumbnail(&self.scope, id, key).await? {
            return Ok(hit);
        }
        let flight_key = (self.scope.tenant_key().to_owned(), id.clone(), key);
        let flight = {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            flights.entry(flight_key.clone()).or_default().clone()
        };
        // Leaves the map when this request is done with it, whether it made
        // the thumbnail, failed, or was cancelled (the client went away).
        let _leave = LeaveFlight {
            shared: &self.shared,
            key: flight_key,
            flight: flight.clone(),
        };
        let _turn = flight.lock().await;
        async {
            // Made by the request ahead of this one meanwhile?
            if let Some(hit) = self.store.thumbnail(&self.scope, id, key).await? {
                return Ok(hit);
            }
            let bytes = self.read(id, 0..meta.size).await?;
            let thumb = on_image_pool(&self.shared.images, bytes, make).await??;
            match self
                .store
                .put_thumbnail(&self.scope, id, key, thumb.clone())
                .await
            {
                Err(StoreError::NotFound) => return Err(not_found()),
                other => other?,
            }
            metrics::counter!("arca_thumbnails_made_total").increment(1);
            Ok(thumb)
        }
        .await
    }
}

/// Removes a thumbnail's flight from the map when dropped, unless a newer
/// flight took its place.
struct LeaveFlight<'a> {
    shared: &'a FilesShared,
    key: Flight,
    flight: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// Reads `bytes` whole and runs `work` on them on the blocking pool,
/// within a permit of `pool` (so at most one file per CPU is in memory).
async fn on_image_pool<T, F>(
    pool: &Arc<Semaphore>,
    bytes: ByteStream,
    work: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> T + Send + 'static,
{
    let _permit = pool
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the image pool is closed"))?;
    let parts: Vec<Bytes> = bytes.try_collect().await.map_err(ApiError::from)?;
    tokio::task::spawn_blocking(move || work(&parts.concat()))
        .await
        .map_err(|e| ApiError::internal(format!("an image task failed: {e}")))
}

/// An upload in progress, under the id and owner the gateway stamped.
pub struct Upload {
    writer: Box<dyn FileWriter>,
    id: FileId,
    owner: String,
    images: Arc<Semaphore>,
}

/// What the server decided about an upload's bytes.
pub struct Received {
    /// The kept file name.
    pub filename: String,
    /// The content type.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// For images.
    pub image: Option<ImageFacts>,
}

impl Upload {
    /// The file's id.
    pub fn id(&self) -> &FileId {
        &self.id
    }

    /// Appends a chunk.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        Ok(self.writer.write(chunk).await?)
    }

    /// Runs `check` on the bytes received so far, read back from the
    /// store on the image pool (after this, only `commit` or `abort`).
    pub async fn check<T, F>(&mut self, check: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&[u8]) -> T + Send + 'static,
    {
        let images = self.images.clone();
        let bytes = self.writer.written().await?;
        on_image_pool(&images, bytes, check).await
    }

    /// Makes the file visible; its metadata as stored.
    pub async fn commit(self, received: Received) -> Result<FileMeta, ApiError> {
        let meta = FileMeta {
            id: self.id,
            owner: self.owner,
            filename: received.filename,
            content_type: received.content_type,
            size: received.size,
            sha256: received.sha256,
            created_at: stamp::now(),
            image: received.image,
        };
        self.writer.commit(meta.clone()).await?;
        Ok(meta)
    }

    /// Throws the upload away.
    pub async fn abort(self) {
        self.writer.abort().await;
    }
}
