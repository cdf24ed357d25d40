//! Shared application state: configuration, the store, the authenticator,
//! the collection catalogue and readiness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arca_auth::Authenticator;
use arca_core::{CollectionDef, CollectionName};
use arca_store::{Store, StoreError, StoredCollection};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
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

/// State shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    catalog: RwLock<HashMap<CollectionName, Arc<Collection>>>,
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
            catalog: RwLock::new(HashMap::new()),
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
        match self.0.catalog.write() {
            Ok(mut c) => *c = map,
            Err(p) => *p.into_inner() = map,
        }
        Ok(())
    }

    /// A collection by name, or 404.
    pub fn collection(&self, name: &CollectionName) -> Result<Arc<Collection>, ApiError> {
        let found = match self.0.catalog.read() {
            Ok(c) => c.get(name).cloned(),
            Err(p) => p.into_inner().get(name).cloned(),
        };
        found.ok_or_else(|| {
            ApiError::new(
                ProblemKind::CollectionNotFound,
                format!("no collection named {name}"),
            )
        })
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Vec<Arc<Collection>> {
        let mut all: Vec<_> = match self.0.catalog.read() {
            Ok(c) => c.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
