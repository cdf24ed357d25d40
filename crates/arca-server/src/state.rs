//! Shared application state: configuration, the store, the authenticator,
//! the collection catalogue (with the OpenAPI document rendered from it) and
//! readiness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arca_auth::Authenticator;
use arca_core::{CollectionDef, CollectionName};
use arca_store::{Store, StoreError, StoredCollection};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::error::{ApiError, ProblemKind};
use crate::openapi::Rendered;

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

/// The compiled collections, and how many times they were loaded.
#[derive(Default)]
struct Catalog {
    by_name: HashMap<CollectionName, Arc<Collection>>,
    generation: u64,
}

/// State shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    catalog: RwLock<Catalog>,
    /// `/openapi.json` as last rendered, with the catalogue generation it
    /// was rendered for.
    openapi: Mutex<Option<(u64, Arc<Rendered>)>>,
    shutting_down: AtomicBool,
    metrics: PrometheusHandle,
    started: Instant,
}

impl AppState {
    /// Builds the state and loads the catalogue from the store.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        auth: Arc<Authenticator>,
    ) -> Result<Self, StoreError> {
        let state = Self(Arc::new(Inner {
            config,
            store,
            auth,
            catalog: RwLock::new(Catalog::default()),
            openapi: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            metrics: crate::metrics::install(),
            started: Instant::now(),
        }));
        state.reload_catalog().await?;
        Ok(state)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }

    /// The authenticator.
    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.0.started.elapsed()
    }

    /// Marks the server as shutting down (`/readyz` -> 503 from now on).
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// Re-reads every collection definition from the store.
    pub async fn reload_catalog(&self) -> Result<(), StoreError> {
        let stored = self.store().collections().await?;
        let mut map = HashMap::with_capacity(stored.len());
        for s in stored {
            let body = serde_json::json!({
                "schema": s.schema,
                "indexes": s.indexes.iter().map(arca_core::IndexDef::to_json).collect::<Vec<_>>(),
                "access": s.access,
            });
            match CollectionDef::parse(&body) {
                Ok(def) => {
                    map.insert(
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
        let mut catalog = self.0.catalog.write().unwrap_or_else(|p| p.into_inner());
        catalog.by_name = map;
        catalog.generation += 1;
        Ok(())
    }

    /// The catalogue's generation: it grows with every reload, so anything
    /// derived from the collections can tell when to be made again.
    pub fn catalog_generation(&self) -> u64 {
        self.read_catalog().generation
    }

    /// The rendered `/openapi.json` if it was made for `generation`.
    pub(crate) fn cached_openapi(&self, generation: u64) -> Option<Arc<Rendered>> {
        let cached = self.0.openapi.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, body)| body.clone())
    }

    /// Keeps `/openapi.json` as rendered for `generation` (read before the
    /// rendering began, so a copy is never labelled newer than it is).
    pub(crate) fn cache_openapi(&self, generation: u64, body: Arc<Rendered>) {
        *self.0.openapi.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, body));
    }

    fn read_catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.0.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A collection by name, or 404.
    pub fn collection(&self, name: &CollectionName) -> Result<Arc<Collection>, ApiError> {
        let found = self.read_catalog().by_name.get(name).cloned();
        found.ok_or_else(|| {
            ApiError::new(
                ProblemKind::CollectionNotFound,
                format!("no collection named {name}"),
            )
        })
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Vec<Arc<Collection>> {
        let mut all: Vec<_> = self.read_catalog().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
