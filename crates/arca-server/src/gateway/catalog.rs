//! The catalogue: every collection definition compiled once (schema
//! validator, access rules, indexes), shared by all requests, and kept in
//! step with the store. Definitions changed through this process are
//! reloaded at once; changes made through another process on the same
//! store are noticed by polling the store's catalogue generation (a cheap
//! read) every `store.catalog_refresh`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use arca_core::{CollectionDef, CollectionName, FieldError};
use arca_store::{Store, StoreError, StoredCollection};
use serde_json::{Map, Value};

use crate::error::{ApiError, ProblemKind};

/// A collection as the server uses it: the compiled definition plus its
/// stored form.
pub struct Collection {
    /// The name.
    pub name: CollectionName,
    /// The compiled definition.
    pub def: CollectionDef,
    /// The stored form (schema and access as given, timestamps).
    pub stored: StoredCollection,
}

impl Collection {
    /// Validates `body`: the limits every engine shares (field names,
    /// nesting, integers), then the schema; `earlier` are failures already
    /// found on reserved fields, reported together with these (422, at
    /// most `max_errors` of them, the problem saying when there were more).
    pub fn validate(
        &self,
        body: Map<String, Value>,
        earlier: &[FieldError],
        max_errors: usize,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut errors = earlier.to_vec();
        errors.extend(arca_core::document::portable_errors(&body));
        // The validator takes a `Value`: the map goes in and comes back.
        let doc = Value::Object(body);
        let room = max_errors.saturating_sub(errors.len());
        let found = self.def.schema.validate_at_most(&doc, room);
        errors.extend(found.errors);
        let truncated = found.truncated || errors.len() > max_errors;
        errors.truncate(max_errors);
        match (errors.is_empty(), doc) {
            (true, Value::Object(body)) => Ok(body),
            (true, _) => Err(ApiError::internal(
                "a document body stopped being an object",
            )),
            (false, _) if truncated => Err(ApiError::invalid_document_truncated(errors)),
            (false, _) => Err(ApiError::invalid_document(errors)),
        }
    }
}

/// The compiled collections at one point.
#[derive(Default)]
struct Snapshot {
    by_name: HashMap<CollectionName, Arc<Collection>>,
    /// The store's catalogue generation read before these definitions.
    store_generation: u64,
    /// Grows with every reload: anything derived from the collections
    /// (the OpenAPI document) is made again when it moves.
    version: u64,
    /// Whether the definitions were read at all (the store may be out of
    /// reach when the process starts).
    loaded: bool,
}

/// The catalogue of one process.
#[derive(Default)]
pub struct Catalog {
    current: RwLock<Snapshot>,
    /// One reload at a time, so an older snapshot never replaces a newer.
    reloading: tokio::sync::Mutex<()>,
}

impl Catalog {
    fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every definition from the store.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        self.reload_locked(store).await
    }

    /// Reloads if the store's generation moved since the last load (a
    /// change through another process); whether it did.
    pub async fn refresh(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let _one = self.reloading.lock().await;
        let generation = store.catalog_generation().await?;
        let current = {
            let snapshot = self.read();
            (snapshot.loaded, snapshot.store_generation)
        };
        if current == (true, generation) {
            return Ok(false);
        }
        self.reload_locked(store).await?;
        Ok(true)
    }

    async fn reload_locked(&self, store: &dyn Store) -> Result<(), StoreError> {
        // Read before the definitions: a change between the two reads is
        // seen again by the next refresh (never missed).
        let store_generation = store.catalog_generation().await?;
        let stored = store.collections().await?;
        let mut by_name = HashMap::with_capacity(stored.len());
        for s in stored {
            let body = serde_json::json!({
                "schema": s.schema,
                "indexes": s.indexes.iter().map(arca_core::IndexDef::to_json).collect::<Vec<_>>(),
                "access": s.access,
            });
            match CollectionDef::parse(&body) {
                Ok(def) => {
                    by_name.insert(
                        s.name.clone(),
                        Arc::new(Collection {
                            name: s.name.clone(),
                            def,
                            stored: s,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(collection = %s.name, error = %e, "stored definition no longer compiles; collection unavailable")
                }
            }
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.version += 1;
        current.by_name = by_name;
        current.store_generation = store_generation;
        current.loaded = true;
        Ok(())
    }

    /// The catalogue's version: it grows with every reload.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Whether the definitions have been read from the store.
    pub fn is_loaded(&self) -> bool {
        self.read().loaded
    }

    /// A collection by name, or 404 (503 while the definitions could not
    /// be read yet: a name is not known to be missing then).
    pub fn get(&self, name: &CollectionName) -> Result<Arc<Collection>, ApiError> {
        let snapshot = self.read();
        if !snapshot.loaded {
            return Err(ApiError::new(
                ProblemKind::StoreUnavailable,
                "the collection definitions could not be read from the store yet",
            ));
        }
        snapshot.by_name.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ProblemKind::CollectionNotFound,
                format!("no collection named {name}"),
            )
        })
    }

    /// Every collection, by name.
    pub fn all(&self) -> Vec<Arc<Collection>> {
        let mut all: Vec<_> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
