//! Configuration: `arca.toml` (path from `--config` or `ARCA_CONFIG`) with
//! `ARCA_<SECTION>__<KEY>` environment overrides, parsed into typed structs
//! once at start. A bad key or value is an error that names the key and the
//! expected form; nothing is silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_auth::AuthSettings;
use arca_core::HumanDuration;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[log]`
    pub log: LogConfig,
    /// `[docs]`
    pub docs: DocsConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[console]`
    pub console: ConsoleConfig,
    /// `[query]`
    pub query: QueryConfig,
    /// `[validation]`
    pub validation: ValidationConfig,
    /// `[events]`
    pub events: EventsConfig,
    /// `[idempotency]`
    pub idempotency: IdempotencyConfig,
    /// `[web]`
    pub web: WebConfig,
    /// `[aggregate]`
    pub aggregate: AggregateConfig,
    /// `[files]`
    pub files: FilesConfig,
}

/// `[events]`: change events (`GET /v1/collections/{name}/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Document writes append to the event log and streams are served.
    /// Off: writes skip the log (MongoDB: no transaction, so a standalone
    /// server will do) and the event routes answer 404. Every replica on
    /// one store should agree.
    pub enabled: bool,
    /// Events are kept at least this long for resuming with
    /// `Last-Event-ID` (then pruned; an older id gets a `reset`).
    pub retention: HumanDuration,
    /// A comment line is sent this often on an idle stream, so proxies
    /// keep it open.
    pub keepalive: HumanDuration,
    /// The reconnection delay the stream asks of clients (`retry:`).
    pub retry: HumanDuration,
    /// Open streams per process; more get 503.
    pub max_subscribers: usize,
    /// Events kept in memory per collection for its subscribers: one that
    /// falls further behind gets `reset` and is closed.
    pub buffer: usize,
    /// How often each process reads the log of the collections it has
    /// subscribers for (writes through this process are read at once;
    /// this bounds the delay of writes through other replicas).
    pub poll: HumanDuration,
    /// How long a stream ticket is valid (`expires_in`).
    pub ticket_ttl: HumanDuration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: HumanDuration(Duration::from_secs(300)),
            keepalive: HumanDuration(Duration::from_secs(15)),
            retry: HumanDuration(Duration::from_secs(3)),
            max_subscribers: 10_000,
            buffer: 1024,
            poll: HumanDuration(Duration::from_millis(100)),
            ticket_ttl: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// `[web]`: a front-end served at `/` from a folder (served by `web.rs`,
/// which reads these settings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// The folder (a built web app) served at `/`; unset: nothing is.
    /// The API, docs, console and operations routes always win.
    pub root: Option<PathBuf>,
    /// The `Content-Security-Policy` of everything served from `root`;
    /// unset: the default of `web.rs` (this origin only, plus the OIDC
    /// issuer for connections); `""`: none.
    pub csp: Option<String>,
    /// Folders under `root` whose files the build names by content (Vite:
    /// `["assets"]`): served `immutable`, like files whose names carry a
    /// hash.
    pub immutable: Vec<String>,
}

/// `[idempotency]`: how long the result of a request sent with an
/// `Idempotency-Key` is kept for its retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// A key's first result (status and body) is replayed to retries for
    /// this long after the first request; then the key is free again.
    pub retention: HumanDuration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

/// `[aggregate]`: what one aggregation may cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// An aggregation running longer is stopped: 503 `timeout`.
    pub max_time: HumanDuration,
    /// Most memory (bytes, estimated) one stage may hold (`$group`,
    /// `$sort`, a `$lookup`'s joined collection, the results): 400 beyond.
    /// MongoDB's own per-stage limit is the default, 100 MiB.
    pub max_memory: u64,
    /// Most results: 400 beyond (add a `$limit`).
    pub max_results: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            max_time: HumanDuration(Duration::from_secs(10)),
            max_memory: 100 << 20,
            max_results: 10_000,
        }
    }
}

/// `[files]`: uploads, images and signed links.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Largest upload, in bytes (413 above, before reading when the
    /// request says its length).
    pub max_bytes: u64,
    /// Time an upload may take, from its start to its response (instead
    /// of `server.request_timeout`: a large photo over a slow mobile link
    /// takes minutes).
    pub upload_timeout: HumanDuration,
    /// Images claiming more pixels than this in their header are refused
    /// (422) before any decoding.
    pub max_image_pixels: u64,
    /// Lifetime of a signed link (`POST /v1/files/{id}/links`).
    pub link_ttl: HumanDuration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_bytes: 25 << 20,
            upload_timeout: HumanDuration(Duration::from_secs(600)),
            max_image_pixels: 40_000_000,
            link_ttl: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// `[query]`: what one read may cost, so one caller cannot starve others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// A read (get, listing, count) running longer is stopped: 503
    /// `timeout` with `Retry-After`.
    pub max_time: HumanDuration,
    /// Listings and counts of one caller (tenant and subject; the client
    /// address without a token) in flight at once; more are 429 with
    /// `Retry-After`. Each holds a reader thread (embedded engine).
    pub max_concurrent_per_caller: usize,
    /// A listing's page ends early (with a `next` cursor) once its
    /// documents reach this many bytes of JSON.
    pub max_page_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_time: HumanDuration(Duration::from_secs(5)),
            max_concurrent_per_caller: 2,
            max_page_bytes: 4 << 20,
        }
    }
}

/// `[validation]`: what checking one document against its schema may cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// At most this many failures are collected and reported per document
    /// (the 422 says when there were more).
    pub max_errors: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self { max_errors: 100 }
    }
}

/// `[console]`: the web console at `/console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console (its pages and `/console/config.json`).
    pub enabled: bool,
    /// The console's OAuth client at `auth.issuer`: a public client
    /// (no secret) allowed the authorization code flow with PKCE and the
    /// redirect URI `https://HOST/console/`. Unset: the console offers
    /// only pasting a token (and the dev link in `--dev` mode).
    pub client_id: Option<String>,
    /// The scopes the console asks for. `openid` is required (the console
    /// checks the ID token's nonce); add what makes the IdP issue an
    /// access token for Arca (Entra ID: `api://arca/access`).
    pub scope: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_id: None,
            scope: "openid".into(),
        }
    }
}

/// `[metrics]`: where `/metrics` is served.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A separate address for `/metrics` (e.g. `0.0.0.0:9090`), which then
    /// leaves the API listener; unset: `/metrics` is on the API listener.
    pub listen: Option<SocketAddr>,
}

/// `[docs]`: the API documentation routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocsConfig {
    /// Serve `/openapi.json` and `/docs` without a token.
    pub public: bool,
}

impl Default for DocsConfig {
    fn default() -> Self {
        Self { public: true }
    }
}

/// `[server]`: the HTTP listener and request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest JSON request body, in bytes (larger -> 413).
    pub max_body_bytes: usize,
    /// Time a request may take to produce its response head.
    pub request_timeout: HumanDuration,
    /// A connection that has not sent a complete request head for this
    /// long is closed: one that sends nothing, headers that trickle in, or
    /// a keep-alive connection idle between requests; and one whose client
    /// reads nothing of its response for this long. An HTTP/2 connection
    /// with no request running or begun for this long gets GOAWAY; HTTP/2 peers are
    /// also pinged at this interval and cut when a ping goes unanswered.
    pub idle_timeout: HumanDuration,
    /// Once the first byte of a request head has arrived, the whole head
    /// must arrive within this (HTTP/1; a trickling head is cut sooner than
    /// an idle keep-alive connection, which `idle_timeout` bounds).
    pub header_timeout: HumanDuration,
    /// Connections open at once; at the limit, new ones wait in the
    /// kernel's accept backlog until one closes.
    pub max_connections: usize,
    /// Connections open at once from one client address; more are closed
    /// as they are accepted. Addresses in `trusted_proxies` are exempt
    /// (they carry many clients).
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDR blocks, e.g. `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client: behind them, the client address
    /// (which callers without a token are counted by) is the last one in
    /// that header that is not itself a trusted proxy. Empty: the peer's
    /// address is the client's.
    pub trusted_proxies: Vec<String>,
    /// After SIGTERM, how long to keep accepting connections (load balancers).
    pub shutdown_delay: HumanDuration,
    /// After the listener closes, how long in-flight requests may run.
    pub shutdown_timeout: HumanDuration,
    /// Origins allowed by CORS (`["*"]` for any); none by default.
    pub cors_origins: Vec<String>,
    /// Async worker threads serving HTTP (default: the usable CPUs).
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            request_timeout: HumanDuration(Duration::from_secs(30)),
            // Above the upstream keep-alive of common proxies (ingress-nginx:
            // 60 s), so a proxy never reuses a connection Arca is closing.
            idle_timeout: HumanDuration(Duration::from_secs(75)),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            // An idle keep-alive connection holds ~30 KiB (measured: 5,000
            // of them added 150 MiB of RSS): 4,096 bounds that near 120 MiB.
            max_connections: 4096,
            shutdown_delay: HumanDuration(Duration::ZERO),
            shutdown_timeout: HumanDuration(Duration::from_secs(25)),
            cors_origins: Vec::new(),
            workers: default_workers(),
        }
    }
}

/// `[store]`: where data lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (the embedded engine) or a `mongodb://` /
    /// `mongodb+srv://` URI (the MongoDB engine; the database is the URI's
    /// path, `arca` when it has none). `ARCA_STORE__URL_FILE` reads it
    /// from a file (a mounted Secret).
    pub url: String,
    /// Bound on every store operation (MongoDB: server selection
    /// included); past it the request gets 503.
    pub timeout: HumanDuration,
    /// How often each process checks whether collection definitions were
    /// changed through another process using the same store (one small
    /// read of the catalogue generation).
    pub catalog_refresh: HumanDuration,
    /// `[store.sqlite]`
    pub sqlite: SqliteConfig,
    /// `[store.mongodb]`
    pub mongodb: MongodbConfig,
}

/// `[store.mongodb]`: settings of the MongoDB engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongodbConfig {
    /// Check every document the server returns with Arca's own matcher,
    /// even for filters MongoDB evaluates exactly: for MongoDB-compatible
    /// services whose query semantics differ from MongoDB's. Results are
    /// then the same as on the embedded engine whatever the server;
    /// listings and counts cost more.
    pub verify_matches: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://./arca-data/arca.db".into(),
            timeout: HumanDuration(Duration::from_secs(5)),
            catalog_refresh: HumanDuration(Duration::from_secs(1)),
            sqlite: SqliteConfig::default(),
            mongodb: MongodbConfig::default(),
        }
    }
}

/// Which engine `store.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// The embedded engine on this SQLite file.
    Sqlite(PathBuf),
    /// The MongoDB engine at this URI.
    Mongodb(String),
}

impl StoreConfig {
    /// The engine `url` names (`None` when it names none).
    pub fn engine(&self) -> Option<Engine> {
        if let Some(path) = self.sqlite_path() {
            return Some(Engine::Sqlite(path));
        }
        let mongo = self.url.starts_with("mongodb://") || self.url.starts_with("mongodb+srv://");
        mongo.then(|| Engine::Mongodb(self.url.clone()))
    }

    /// The URI with its password replaced by `***` (for logs).
    pub fn redacted_url(&self) -> String {
        redact_url_password(&self.url)
    }

    /// The SQLite file path, when the store is the embedded engine.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    /// The data directory: the folder of the SQLite file.
    pub fn data_dir(&self) -> PathBuf {
        match self.sqlite_path() {
            Some(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            None => PathBuf::from("./arca-data"),
        }
    }
}

/// `[store.sqlite]`: durability and read concurrency of the embedded engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// `FULL` (an acknowledged write survives power loss) or `NORMAL`.
    pub synchronous: Synchronous,
    /// Read connections, one reader thread each. Listings and counts may
    /// use all but one (kept for reads by id). Default: the CPUs this
    /// process may use (cgroup limits included), from 2 to 16, plus one.
    pub readers: usize,
    /// Page cache of all read connections together, in MiB (split evenly
    /// among them). Pages it misses cost a system call and a copy each.
    pub read_cache_mib: u32,
}

impl SqliteConfig {
    /// Each read connection's share of `read_cache_mib`, in KiB.
    pub fn reader_cache_kib(&self) -> u32 {
        let readers = u32::try_from(self.readers.max(1)).unwrap_or(64);
        self.read_cache_mib.saturating_mul(1024) / readers
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            readers: default_readers(),
            read_cache_mib: 16,
        }
    }
}

/// One reader per usable CPU, at least 2 (a slow listing never stalls
/// every read) and at most 16. On the 2-core benchmark machine 2 readers
/// beat 4 on GET by ~10% per CPU-second: fewer threads to wake, and
/// larger batches of point reads sharing a read transaction.
/// The usable CPUs (the cgroup quota counts, so a pod limited to one CPU
/// gets one worker).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_readers() -> usize {
    // One more than the listings that may run at once: the engine keeps
    // one reader free for reads by id.
    std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 16) + 1)
        .unwrap_or(5)
}

/// SQLite's `synchronous` pragma as offered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Synchronous {
    /// fsync at every commit: acknowledged writes survive power loss.
    Full,
    /// WAL with fsync at checkpoints: survives a process crash, may lose
    /// the last commits on power loss.
    Normal,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `arca=debug,info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
    /// `auto` (JSON unless stdout is a terminal), `json` or `pretty`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// A configuration error, naming the key and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Loads the configuration from an optional file and the `ARCA_*`
/// variables in `env` (pass `std::env::vars()`).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    // Environment overrides: ARCA_SERVER__LISTEN -> server.listen.
    let mut from_env: Vec<(Vec<String>, String, String)> = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("ARCA_") else {
            continue;
        };
        // `ARCA_X__Y_FILE=/path` reads the value of x.y from a file, so
        // secrets can be mounted as files rather than set in the environment.
        let (rest, raw) = match rest.strip_suffix("_FILE").filter(|r| r.contains("__")) {
            Some(key) => {
                let text = std::fs::read_to_string(&raw).map_err(|e| {
                    ConfigError(format!(
                        "environment variable {name}: cannot read {raw}: {e}"
                    ))
                })?;
                (key, text.trim_end_matches(['\n', '\r']).to_owned())
            }
            None => (rest, raw),
        };
        if !rest.contains("__") {
            continue; // ARCA_CONFIG and other non-key variables
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError(format!(
                "environment variable {name}: empty key segment"
            )));
        }
        set_path(&mut table, &path, typed_env_value(&raw), &name)?;
        from_env.push((path, raw, name));
    }
    // A value from the environment is tried with its TOML type first
    // (numbers, booleans, arrays), then as a plain string for keys that
    // want a string (a numeric tenant claim name, say).
    let mut attempts = 0;
    loop {
        let de = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(cfg) => return validate(cfg),
            Err(e) => {
                let key = e.path().to_string();
                let retry = from_env.iter().find(|(p, raw, _)| {
                    p.join(".") == key
                        && !matches!(get_path(&table, p), Some(toml::Value::String(s)) if s == raw)
                });
                if let (Some((p, raw, var)), true) = (retry, attempts < 64) {
                    attempts += 1;
                    let (p, raw, var) = (p.clone(), raw.clone(), var.clone());
                    set_path(&mut table, &p, toml::Value::String(raw), &var)?;
                    continue;
                }
                let origin = from_env
                    .iter()
                    .find(|(p, _, _)| p.join(".") == key)
                    .map(|(_, _, var)| format!(" (from {var})"))
                    .unwrap_or_default();
                return Err(ConfigError(format!(
                    "configuration key `{key}`{origin}: {}",
                    e.inner()
                )));
            }
        }
    }
}

fn typed_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn get_path<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(last)
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    var: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut t = table;
    for p in parents {
        let slot = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = slot.as_table_mut().ok_or_else(|| {
            ConfigError(format!(
                "environment variable {var}: `{p}` is not a section"
            ))
        })?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

fn validate(cfg: Config) -> Result<Config, ConfigError> {
    let bad = |key: &str, msg: &str| Err(ConfigError(format!("configuration key `{key}`: {msg}")));
    if cfg.server.max_body_bytes == 0 {
        return bad(
            "server.max_body_bytes",
            "expected a positive number of bytes",
        );
    }
    // Bounds on every duration: out of range, a timer or an expiry check
    // overflows (`auth.leeway` past the epoch made every token check
    // panic), a JWKS refresh of 0 fetches in a loop, and a delay of years
    // keeps a pod from stopping.
    let (ms, second, hour, day) = (
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
    );
    for (key, value, min, max) in [
        (
            "server.request_timeout",
            cfg.server.request_timeout,
            ms,
            day,
        ),
        ("server.idle_timeout", cfg.server.idle_timeout, ms, day),
        ("server.header_timeout", cfg.server.header_timeout, ms, day),
        (
            "server.shutdown_delay",
            cfg.server.shutdown_delay,
            Duration::ZERO,
            hour,
        ),
        (
            "server.shutdown_timeout",
            cfg.server.shutdown_timeout,
            Duration::ZERO,
            hour,
        ),
        ("auth.jwks_refresh", cfg.auth.jwks_refresh, 10 * second, day),
        (
            "auth.jwks_min_refetch",
            cfg.auth.jwks_min_refetch,
            Duration::ZERO,
            hour,
        ),
        ("auth.leeway", cfg.auth.leeway, Duration::ZERO, hour),
        ("store.timeout", cfg.store.timeout, 100 * ms, hour),
        ("query.max_time", cfg.query.max_time, 10 * ms, hour),
        ("aggregate.max_time", cfg.aggregate.max_time, 10 * ms, hour),
        (
            "store.catalog_refresh",
            cfg.store.catalog_refresh,
            10 * ms,
            hour,
        ),
        (
            "files.upload_timeout",
            cfg.files.upload_timeout,
            second,
            day,
        ),
        ("files.link_ttl", cfg.files.link_ttl, second, 7 * day),
        ("events.retention", cfg.events.retention, second, 7 * day),
        ("events.keepalive", cfg.events.keepalive, 100 * ms, hour),
        ("events.retry", cfg.events.retry, Duration::ZERO, hour),
        ("events.poll", cfg.events.poll, 10 * ms, 60 * second),
        ("events.ticket_ttl", cfg.events.ticket_ttl, second, hour),
        (
            "idempotency.retention",
            cfg.idempotency.retention,
            second,
            30 * day,
        ),
    ] {
        if value.0 < min || value.0 > max {
            return bad(
                key,
                &format!(
                    "expected {} to {}, got {value}",
                    HumanDuration(min),
                    HumanDuration(max)
                ),
            );
        }
    }
    if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&cfg.server.max_connections) {
        return bad(
            "server.max_connections",
            "expected a positive number of connections",
        );
    }
    match cfg.store.engine() {
        None => {
            return bad(
                "store.url",
                "expected sqlite://PATH, mongodb://HOST[:PORT][,HOST...]/[DATABASE][?OPTIONS] or mongodb+srv://HOST/[DATABASE][?OPTIONS]",
            );
        }
        // MongoDB's document limit is 16 MiB: a larger body could be
        // accepted by the API and refused by the database.
        Some(Engine::Mongodb(_)) if cfg.server.max_body_bytes > 16 << 20 => {
            return bad(
                "server.max_body_bytes",
                "may not exceed 16777216 (16 MiB, MongoDB's document limit) with a mongodb:// store",
            );
        }
        _ => {}
    }
    if cfg
        .store
        .sqlite_path()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return bad("store.url", "expected sqlite://PATH with a non-empty path");
    }
    if cfg.server.max_connections_per_ip == 0 {
        return bad(
            "server.max_connections_per_ip",
            "expected a positive number of connections",
        );
    }
    if let Some(bad_proxy) = cfg
        .server
        .trusted_proxies
        .iter()
        .find(|p| parse_proxy(p).is_none())
    {
        return bad(
            "server.trusted_proxies",
            &format!("{bad_proxy:?} is not an address or a CIDR block (e.g. \"10.0.0.0/8\")"),
        );
    }
    if !(1..=1024).contains(&cfg.query.max_concurrent_per_caller) {
        return bad("query.max_concurrent_per_caller", "expected 1 to 1024");
    }
    if !(1024..=1 << 30).contains(&cfg.query.max_page_bytes) {
        return bad(
            "query.max_page_bytes",
            "expected 1024 to 1073741824 (1 GiB)",
        );
    }
    if !(1..=1_000_000).contains(&cfg.events.max_subscribers) {
        return bad("events.max_subscribers", "expected 1 to 1000000");
    }
    if !(16..=1_000_000).contains(&cfg.events.buffer) {
        return bad("events.buffer", "expected 16 to 1000000 (events)");
    }
    if !((1 << 20)..=(64 << 30)).contains(&cfg.aggregate.max_memory) {
        return bad(
            "aggregate.max_memory",
            "expected 1048576 (1 MiB) to 68719476736 (64 GiB)",
        );
    }
    if !(1..=10_000_000).contains(&cfg.aggregate.max_results) {
        return bad("aggregate.max_results", "expected 1 to 10000000");
    }
    if !(1..=1 << 40).contains(&cfg.files.max_bytes) {
        return bad("files.max_bytes", "expected 1 to 1099511627776 (1 TiB)");
    }
    if !(1..=1_000_000_000).contains(&cfg.files.max_image_pixels) {
        return bad("files.max_image_pixels", "expected 1 to 1000000000");
    }
    if !(1..=10_000).contains(&cfg.validation.max_errors) {
        return bad("validation.max_errors", "expected 1 to 10000");
    }
    if !(1..=1024).contains(&cfg.server.workers) {
        return bad("server.workers", "expected 1 to 1024");
    }
    if !(1..=64).contains(&cfg.store.sqlite.readers) {
        return bad("store.sqlite.readers", "expected 1 to 64");
    }
    if !(1..=65_536).contains(&cfg.store.sqlite.read_cache_mib) {
        return bad("store.sqlite.read_cache_mib", "expected 1 to 65536 (MiB)");
    }
    if let Some(issuer) = &cfg.auth.issuer
        && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
    {
        return bad("auth.issuer", "expected an http(s) URL");
    }
    if let Some(url) = &cfg.auth.jwks_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return bad("auth.jwks_url", "expected an http(s) URL");
    }
    if cfg.auth.roles_claim.is_empty() || cfg.auth.tenant_claim.is_empty() {
        return bad(
            "auth.roles_claim / auth.tenant_claim",
            "expected a non-empty claim name",
        );
    }
    validate_console(&cfg)?;
    validate_web(&cfg)?;
    for o in &cfg.server.cors_origins {
        if o != "*" && o.parse::<http::HeaderValue>().is_err() {
            return bad(
                "server.cors_origins",
                "expected origins such as \"https://app.example.com\" or \"*\"",
            );
        }
    }
    Ok(cfg)
}

/// `[console]`: a client id needs an issuer to sign in against, whose
/// origin goes into the console's `Content-Security-Policy` (so it must be
/// a plain origin, nothing that could end a CSP directive); the scope is
/// RFC 6749 scope tokens, `openid` among them.
fn validate_console(cfg: &Config) -> Result<(), ConfigError> {
    let bad = |key: &str, msg: &str| Err(ConfigError(format!("configuration key `{key}`: {msg}")));
    let c = &cfg.console;
    if let Some(id) = &c.client_id {
        if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(
                "console.client_id",
                "expected 1 to 256 visible ASCII characters (the client id at the IdP)",
            );
        }
        match &cfg.auth.issuer {
            None => {
                return bad(
                    "console.client_id",
                    "needs auth.issuer: the OIDC issuer the console signs in with",
                );
            }
            Some(issuer) if origin_of(issuer).is_none() => {
                return bad(
                    "auth.issuer",
                    "expected http(s)://HOST[:PORT][/PATH] (the console's sign-in needs its origin)",
                );
            }
            Some(_) => {}
        }
    }
    let scope_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    };
    let tokens: Vec<&str> = c.scope.split(' ').collect();
    if !tokens.iter().all(|t| scope_token(t)) {
        return bad(
            "console.scope",
            "expected scope names separated by single spaces, e.g. \"openid api://arca/access\"",
        );
    }
    if !tokens.contains(&"openid") {
        return bad(
            "console.scope",
            "must include openid (the console checks the ID token's nonce)",
        );
    }
    Ok(())
}

/// `[web]`: a non-empty root; a policy that fits in one header line; the
/// immutable folders relative to the root, never leaving it.
fn validate_web(cfg: &Config) -> Result<(), ConfigError> {
    let bad = |key: &str, msg: &str| Err(ConfigError(format!("configuration key `{key}`: {msg}")));
    let w = &cfg.web;
    if w.root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
        return bad("web.root", "expected the path of a folder");
    }
    if let Some(csp) = &w.csp
        && (csp.len() > 4096
            || csp.bytes().any(|b| b.is_ascii_control())
            || http::HeaderValue::from_str(csp).is_err())
    {
        return bad(
            "web.csp",
            "expected a Content-Security-Policy of at most 4096 characters on one line (\"\" for none)",
        );
    }
    for p in &w.immutable {
        let trimmed = p.trim_matches('/');
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || trimmed.contains('\\')
        {
            return bad(
                "web.immutable",
                &format!("{p:?}: expected folders under web.root such as \"assets\""),
            );
        }
    }
    Ok(())
}

/// The origin (`scheme://host[:port]`, lowercase scheme) of an http(s)
/// URL, or `None` when it is not one or its authority holds anything but
/// a host name or address and a port (user info, spaces, `;`, ...): the
/// result is written into a `Content-Security-Policy` header as is.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    host_ok.then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// A trusted proxy entry as a network: an address is a one-address block.
pub fn parse_proxy(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

impl ServerConfig {
    /// `trusted_proxies` parsed (entries were checked at load).
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_proxy(p))
            .collect()
    }
}

impl Config {
    /// The configuration as TOML with secrets redacted (`arca config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.store.url = redact_url_password(&c.store.url);
        toml::to_string_pretty(&c)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The credentials are in the authority, before the path or options
    // (an `@` there must be percent-encoded, one in an option need not).
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some((cred, hosts)) = authority.rsplit_once('@')
        && let Some((user, _)) = cred.split_once(':')
    {
        return format!("{scheme}://{user}:***@{hosts}{tail}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(None, env(&[])).expect("defaults");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.store.url, "sqlite://./arca-data/arca.db");
        assert_eq!(c.auth.roles_claim, "roles");
        assert_eq!(c.auth.tenant_claim, "tid");
        assert_eq!(c.auth.schema_admin(), "admin");
        assert_eq!(c.server.shutdown_timeout.0, Duration::from_secs(25));
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        assert_eq!(c.store.sqlite.readers, cpus.clamp(2, 16) + 1);
        assert_eq!(c.server.workers, cpus);
        assert_eq!(c.server.header_timeout.0, Duration::from_secs(10));
        assert_eq!(c.server.max_connections_per_ip, 256);
        assert_eq!(c.query.max_time.0, Duration::from_secs(5));
        assert_eq!(c.aggregate.max_time.0, Duration::from_secs(10));
        assert_eq!(c.aggregate.max_memory, 100 << 20);
        assert_eq!(c.aggregate.max_results, 10_000);
        assert_eq!(c.query.max_concurrent_per_caller, 2);
        assert_eq!(c.query.max_page_bytes, 4 << 20);
        assert_eq!(c.validation.max_errors, 100);
        assert_eq!(c.idempotency.retention.0, Duration::from_secs(86_400));
        assert_eq!(c.store.sqlite.read_cache_mib, 16);
        assert_eq!(c.files.max_bytes, 26_214_400);
        assert_eq!(c.files.upload_timeout.0, Duration::from_secs(600));
        assert_eq!(c.files.max_image_pixels, 40_000_000);
        assert_eq!(c.files.link_ttl.0, Duration::from_secs(300));
        assert_eq!(
            c.store.sqlite.reader_cache_kib(),
            16 * 1024 / u32::try_from(c.store.sqlite.readers).expect("small")
        );
    }

    #[test]
    fn environment_overrides_typed_values() {
        let c = load(
            None,
            env(&[
                ("ARCA_SERVER__MAX_BODY_BYTES", "2048"),
                ("ARCA_AUTH__REQUIRE_TENANT", "true"),
                ("ARCA_AUTH__TENANT_CLAIM", "123"),
                ("ARCA_AUTH__AUDIENCE", "[\"a\", \"b\"]"),
                ("ARCA_STORE__SQLITE__SYNCHRONOUS", "NORMAL"),
                ("ARCA_CONFIG", "ignored.toml"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.max_body_bytes, 2048);
        assert!(c.auth.require_tenant);
        assert_eq!(c.auth.tenant_claim, "123");
        assert_eq!(
            c.auth.audience.map(|a| a.values()),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(c.store.sqlite.synchronous, Synchronous::Normal);
    }

    #[test]
    fn file_variables_read_values_from_files() {
        let path = std::env::temp_dir().join(format!("arca-cfg-file-{}", std::process::id()));
        std::fs::write(&path, "sqlite:///secret/place.db\n").expect("write");
        let c = load(
            None,
            env(&[("ARCA_STORE__URL_FILE", path.to_str().expect("utf8"))]),
        )
        .expect("valid");
        assert_eq!(c.store.url, "sqlite:///secret/place.db");
        let _ = std::fs::remove_file(&path);
        let e = load(None, env(&[("ARCA_STORE__URL_FILE", "/nonexistent/x")]))
            .expect_err("missing file");
        assert!(e.0.contains("ARCA_STORE__URL_FILE"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(None, env(&[("ARCA_SERVER__LISTEN", "nope")])).expect_err("bad");
        assert!(
            e.0.contains("server.listen") && e.0.contains("ARCA_SERVER__LISTEN"),
            "{e}"
        );
        let e = load(None, env(&[("ARCA_SERVER__LISTN", "1")])).expect_err("unknown");
        assert!(e.0.contains("listn"), "{e}");
        let e = load(None, env(&[("ARCA_SERVER__REQUEST_TIMEOUT", "10")])).expect_err("unit");
        assert!(
            e.0.contains("server.request_timeout") && e.0.contains("unit"),
            "{e}"
        );

        let e = load(None, env(&[("ARCA_SERVER__MAX_CONNECTIONS", "0")])).expect_err("zero");
        assert!(e.0.contains("server.max_connections"), "{e}");
        let e = load(None, env(&[("ARCA_SERVER__IDLE_TIMEOUT", "0s")])).expect_err("zero");
        assert!(e.0.contains("server.idle_timeout"), "{e}");
        let c = load(None, env(&[("ARCA_SERVER__IDLE_TIMEOUT", "2m")])).expect("idle");
        assert_eq!(c.server.idle_timeout.0, Duration::from_secs(120));
        // Every duration has bounds: past them a timer or an expiry check
        // would overflow, or a refresh loop would spin.
        for (var, value, message) in [
            (
                "ARCA_AUTH__LEEWAY",
                "213503982334601d",
                "`auth.leeway`: expected 0s to 1h",
            ),
            (
                "ARCA_AUTH__JWKS_REFRESH",
                "0s",
                "`auth.jwks_refresh`: expected 10s to 1d, got 0s",
            ),
            (
                "ARCA_SERVER__REQUEST_TIMEOUT",
                "2d",
                "`server.request_timeout`: expected 1ms to 1d, got 2d",
            ),
            ("ARCA_SERVER__IDLE_TIMEOUT", "25h", "`server.idle_timeout`"),
            (
                "ARCA_SERVER__SHUTDOWN_DELAY",
                "61m",
                "`server.shutdown_delay`: expected 0s to 1h",
            ),
            (
                "ARCA_SERVER__SHUTDOWN_TIMEOUT",
                "2h",
                "`server.shutdown_timeout`",
            ),
            (
                "ARCA_AUTH__JWKS_MIN_REFETCH",
                "1d",
                "`auth.jwks_min_refetch`",
            ),
            (
                "ARCA_IDEMPOTENCY__RETENTION",
                "500ms",
                "`idempotency.retention`: expected 1s to 30d, got 500ms",
            ),
            (
                "ARCA_IDEMPOTENCY__RETENTION",
                "31d",
                "`idempotency.retention`",
            ),
        ] {
            let e = load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.0.contains(message), "{var}={value}: {e}");
        }
        for (var, value) in [
            ("ARCA_AUTH__LEEWAY", "1h"),
            ("ARCA_SERVER__SHUTDOWN_DELAY", "0s"),
        ] {
            load(None, env(&[(var, value)])).expect("at a bound");
        }

        let e = load(None, env(&[("ARCA_STORE__SQLITE__READ_CACHE_MIB", "0")])).expect_err("zero");
        assert!(e.0.contains("store.sqlite.read_cache_mib"), "{e}");
        let c = load(
            None,
            env(&[
                ("ARCA_STORE__SQLITE__READ_CACHE_MIB", "8"),
                ("ARCA_STORE__SQLITE__READERS", "4"),
            ]),
        )
        .expect("cache");
        assert_eq!(c.store.sqlite.reader_cache_kib(), 2048);

        for bad in ["0", "1025"] {
            let e = load(None, env(&[("ARCA_SERVER__WORKERS", bad)])).expect_err("workers");
            assert!(e.0.contains("server.workers"), "{bad}: {e}");
        }
        for (var, value, key) in [
            ("ARCA_FILES__MAX_BYTES", "0", "`files.max_bytes`"),
            (
                "ARCA_FILES__MAX_IMAGE_PIXELS",
                "0",
                "`files.max_image_pixels`",
            ),
            (
                "ARCA_FILES__UPLOAD_TIMEOUT",
                "10ms",
                "`files.upload_timeout`",
            ),
            ("ARCA_FILES__LINK_TTL", "30d", "`files.link_ttl`"),
            ("ARCA_FILES__LINK_TTL", "5", "`files.link_ttl`"),
        ] {
            let e = load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.0.contains(key), "{var}={value}: {e}");
        }
        let c = load(None, env(&[("ARCA_SERVER__WORKERS", "1")])).expect("one worker");
        assert_eq!(c.server.workers, 1);
    }

    #[test]
    fn events_settings_have_defaults_and_bounds() {
        let c = load(None, env(&[])).expect("defaults");
        assert!(c.events.enabled);
        assert_eq!(c.events.retention.0, Duration::from_secs(300));
        assert_eq!(c.events.keepalive.0, Duration::from_secs(15));
        assert_eq!(c.events.max_subscribers, 10_000);
        assert_eq!(c.events.ticket_ttl.0, Duration::from_secs(60));
        let c = load(
            None,
            env(&[
                ("ARCA_EVENTS__RETENTION", "1h"),
                ("ARCA_EVENTS__KEEPALIVE", "500ms"),
                ("ARCA_EVENTS__MAX_SUBSCRIBERS", "3"),
                ("ARCA_EVENTS__ENABLED", "false"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.events.retention.0, Duration::from_secs(3600));
        assert_eq!(c.events.keepalive.0, Duration::from_millis(500));
        assert_eq!(c.events.max_subscribers, 3);
        assert!(!c.events.enabled);
        for (var, value, message) in [
            (
                "ARCA_EVENTS__RETENTION",
                "0s",
                "`events.retention`: expected 1s to 7d",
            ),
            ("ARCA_EVENTS__KEEPALIVE", "2h", "`events.keepalive`"),
            ("ARCA_EVENTS__POLL", "1ms", "`events.poll`"),
            ("ARCA_EVENTS__TICKET_TTL", "0s", "`events.ticket_ttl`"),
            (
                "ARCA_EVENTS__MAX_SUBSCRIBERS",
                "0",
                "`events.max_subscribers`",
            ),
            ("ARCA_EVENTS__BUFFER", "1", "`events.buffer`"),
            ("ARCA_EVENTS__BUFFR", "1", "buffr"),
        ] {
            let e = load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.0.contains(message), "{var}={value}: {e}");
        }
    }

    #[test]
    fn console_settings_are_checked() {
        let c = load(None, env(&[])).expect("defaults");
        assert!(c.console.enabled);
        assert_eq!(c.console.client_id, None);
        assert_eq!(c.console.scope, "openid");
        let c = load(
            None,
            env(&[
                ("ARCA_CONSOLE__ENABLED", "false"),
                ("ARCA_AUTH__ISSUER", "https://login.example.com/t/v2.0"),
                ("ARCA_CONSOLE__CLIENT_ID", "arca-console"),
                ("ARCA_CONSOLE__SCOPE", "openid api://arca/access"),
            ]),
        )
        .expect("valid");
        assert!(!c.console.enabled);
        assert_eq!(c.console.client_id.as_deref(), Some("arca-console"));
        for (vars, message) in [
            (
                vec![("ARCA_CONSOLE__CLIENT_ID", "arca-console")],
                "`console.client_id`: needs auth.issuer",
            ),
            (
                vec![
                    ("ARCA_AUTH__ISSUER", "https://a.example.com"),
                    ("ARCA_CONSOLE__CLIENT_ID", "has space"),
                ],
                "`console.client_id`: expected 1 to 256",
            ),
            (
                vec![
                    ("ARCA_AUTH__ISSUER", "https://a.example.com;script-src *"),
                    ("ARCA_CONSOLE__CLIENT_ID", "c"),
                ],
                "`auth.issuer`: expected http(s)://HOST",
            ),
            (
                vec![("ARCA_CONSOLE__SCOPE", "profile")],
                "`console.scope`: must include openid",
            ),
            (
                vec![("ARCA_CONSOLE__SCOPE", "openid  x")],
                "`console.scope`: expected scope names",
            ),
            (vec![("ARCA_CONSOLE__ENABLD", "true")], "enabld"),
        ] {
            let e = load(None, env(&vars)).expect_err(message);
            assert!(e.0.contains(message), "{vars:?}: {e}");
        }
    }

    #[test]
    fn web_settings_are_checked() {
        let c = load(None, env(&[])).expect("defaults");
        assert_eq!(c.web.root, None);
        assert_eq!(c.web.csp, None);
        let c = load(
            None,
            env(&[
                ("ARCA_WEB__ROOT", "/srv/app"),
                ("ARCA_WEB__CSP", "default-src 'self'"),
                ("ARCA_WEB__IMMUTABLE", "[\"assets\", \"/static/\"]"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.web.root.as_deref(), Some(Path::new("/srv/app")));
        assert_eq!(c.web.immutable, ["assets", "/static/"]);
        load(None, env(&[("ARCA_WEB__CSP", "")])).expect("no policy");
        for (var, value, message) in [
            ("ARCA_WEB__ROOT", "", "`web.root`"),
            ("ARCA_WEB__CSP", "a\nb", "`web.csp`"),
            ("ARCA_WEB__IMMUTABLE", "[\"../x\"]", "`web.immutable`"),
            ("ARCA_WEB__IMMUTABLE", "[\"/\"]", "`web.immutable`"),
            ("ARCA_WEB__ROOTS", "/x", "roots"),
        ] {
            let e = load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.0.contains(message), "{var}={value:?}: {e}");
        }
    }

    #[test]
    fn origins_are_plain_scheme_host_port() {
        assert_eq!(
            origin_of("https://Login.Example.com/tenant/v2.0").as_deref(),
            Some("https://login.example.com")
        );
        assert_eq!(
            origin_of("HTTP://127.0.0.1:4000").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            origin_of("http://[::1]:8080?x").as_deref(),
            Some("http://[::1]:8080")
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://user@host",
            "https://a b",
            "https://a;b",
            "host",
        ] {
            assert_eq!(origin_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn redaction_hides_url_passwords() {
        assert_eq!(
            redact_url_password("mongodb://arca:s3cret@db:27017/x"),
            "mongodb://arca:***@db:27017/x"
        );
        assert_eq!(redact_url_password("sqlite://./a.db"), "sqlite://./a.db");
        assert_eq!(
            redact_url_password(
                "mongodb://arca:p%40ss@m0:27017,m1/arca?replicaSet=rs0&tlsCAFile=/a@b/ca.pem"
            ),
            "mongodb://arca:***@m0:27017,m1/arca?replicaSet=rs0&tlsCAFile=/a@b/ca.pem"
        );
        assert_eq!(
            redact_url_password("mongodb+srv://user@cluster.example.net/db"),
            "mongodb+srv://user@cluster.example.net/db",
            "no password, nothing to hide"
        );
    }
}
