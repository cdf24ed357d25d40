//! Shared application state: configuration, the data gateway (the store
//! and its catalogue), the authenticator, the event log's readers, values
//! derived from the catalogue (made once per version of it), the served
//! front-end folder, readiness and the shutdown signal.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arca_auth::Authenticator;
use arca_store::{Store, StoreError};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::events::hub::Hub;
use crate::gateway::Gateway;
use crate::web::Site;

/// State shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// A value derived from the catalogue, with the catalogue version it was
/// made for.
type Derived = (u64, Arc<dyn Any + Send + Sync>);

struct Inner {
    config: Config,
    gateway: Gateway,
    auth: Arc<Authenticator>,
    /// Values derived from the catalogue, one per type (the rendered
    /// OpenAPI document), each with the version it was made for.
    derived: Mutex<HashMap<TypeId, Derived>>,
    shutting_down: AtomicBool,
    /// Turns true when shutdown begins: event streams end at once.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The readers of the event log in this process.
    events: Hub,
    metrics: PrometheusHandle,
    started: Instant,
    /// The folder served at `/` (`web.root`), set once before serving.
    site: OnceLock<Arc<Site>>,
}

impl AppState {
    /// Builds the state and loads the catalogue from the store.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        auth: Arc<Authenticator>,
    ) -> Result<Self, StoreError> {
        let limits = crate::gateway::limits::Limits {
            max_errors: config.validation.max_errors,
            heavy_per_caller: config.query.max_concurrent_per_caller,
            max_page_bytes: config.query.max_page_bytes,
            max_time: config.query.max_time.0,
            aggregate: arca_store::AggregateLimits {
                max_time: config.aggregate.max_time.0,
                max_memory: config.aggregate.max_memory,
                max_results: config.aggregate.max_results,
            },
        };
        let gateway = Gateway::open(store, config.auth.clone(), limits).await?;
        let (shutdown, down) = tokio::sync::watch::channel(false);
        let events = Hub::new(gateway.event_log(), gateway.wakeups(), &config.events, down);
        Ok(Self(Arc::new(Inner {
            config,
            gateway,
            auth,
            derived: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            shutdown,
            events,
            metrics: crate::metrics::install(),
            started: Instant::now(),
            site: OnceLock::new(),
        })))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The gateway to the data and the catalogue.
    pub fn gateway(&self) -> &Gateway {
        &self.0.gateway
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

    /// Marks the server as shutting down (`/readyz` -> 503 from now on)
    /// and ends the event streams, so they do not hold the shutdown.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown.send_replace(true);
    }

    /// Turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    /// The readers of the event log in this process.
    pub fn events(&self) -> &Hub {
        &self.0.events
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// Serves `site` at `/` (`web.root`, opened by `web::Site::open`);
    /// call it before serving. `false` when a site was set already.
    pub fn serve_site(&self, site: Site) -> bool {
        self.0.site.set(Arc::new(site)).is_ok()
    }

    /// The folder served at `/`, if any.
    pub fn site(&self) -> Option<&Arc<Site>> {
        self.0.site.get()
    }

    /// The value of type `T` derived from the current catalogue: made by
    /// `make` once per catalogue version (the version is read before it is
    /// made, so a value is never labelled newer than it is), then shared.
    pub fn derived<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let version = self.gateway().catalog_version();
        let key = TypeId::of::<T>();
        let cached = {
            let map = self.0.derived.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key)
                .filter(|(v, _)| *v == version)
                .map(|(_, value)| value.clone())
        };
        if let Some(value) = cached.and_then(|v| v.downcast::<T>().ok()) {
            return value;
        }
        let made = Arc::new(make());
        let mut map = self.0.derived.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, (version, made.clone()));
        made
    }
}
