//! The `arca` binary: command line, configuration loading, logging, and
//! wiring the store, the authenticator and the HTTP server together.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arca_auth::{Authenticator, DevKeys, MintRequest};
use arca_core::HumanDuration;
use arca_server::config::{self, Config, Engine, LogFormat, Synchronous};
use arca_store::mongodb::{MongoOptions, MongoStore};
use arca_store::{SqliteOptions, SqliteStore, Store};
use clap::{Parser, Subcommand};

mod copy;
mod import;

// mimalloc: the profile of GET under load showed glibc malloc/free at ~20%
// of CPU; mimalloc's per-thread heaps cut that (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "arca",
    version,
    about = "Self-hosted document API: JSON Schema collections, MongoDB-style queries, OIDC auth"
)]
struct Cli {
    /// Configuration file (TOML); ARCA_<SECTION>__<KEY> variables override it.
    #[arg(long, global = true, env = "ARCA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Development mode: trust only a local key kept in the data
        /// directory and print a ready admin token.
        #[arg(long)]
        dev: bool,
        /// Allow --dev on a non-loopback listen address.
        #[arg(long, requires = "dev")]
        dev_allow_remote: bool,
    },
    /// Mint a development token (signed with the --dev key).
    Token {
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// A role (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// The tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. 1h, 30m (1s to 366 days).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: HumanDuration,
        /// A further claim as NAME=VALUE (VALUE is JSON, or else a string);
        /// repeat for several.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, serde_json::Value)>,
    },
    /// Print the effective configuration (secrets redacted).
    Config,
    /// Print the OpenAPI document for the configured store (its
    /// collections included), for client generation in pipelines.
    Openapi,
    /// Print TypeScript declarations for the collections of the configured
    /// store (what `GET /v1/types.ts` serves), for front-end builds.
    Types,
    /// Bulk-load documents from NDJSON (one JSON object per line) into an
    /// existing collection of the configured store: every line is checked
    /// like a POST (size, schema, reserved fields, numbers, unique values);
    /// the import stops at the first line that fails, naming it and saying
    /// exactly which lines were imported. It may run while the server serves.
    Import {
        /// The collection.
        #[arg(long)]
        collection: String,
        /// The tenant the documents belong to (default: untenanted).
        #[arg(long)]
        tenant: Option<String>,
        /// The `_owner` of the documents.
        #[arg(long, default_value = "import")]
        owner: String,
        /// NDJSON file (`-` for standard input).
        file: PathBuf,
    },
    /// Copy a whole store into another, across engines (SQLite to MongoDB
    /// or back): every collection definition, then every document of
    /// every tenant with its id, revision, timestamps and owner. The
    /// target must be empty unless --resume finishes an interrupted copy.
    Copy {
        /// The source store (`sqlite://PATH` or a `mongodb://` URI).
        #[arg(long)]
        from: String,
        /// The target store.
        #[arg(long)]
        to: String,
        /// Continue an interrupted copy: definitions must match, documents
        /// already in the target are skipped.
        #[arg(long)]
        resume: bool,
    },
    /// Write a consistent backup of the embedded store while the server
    /// keeps running: a tar archive of `arca.db` (a copy made with SQLite's
    /// `VACUUM INTO`, checked) and `files/` (the bytes of every stored file
    /// the copy knows), flushed to disk before it takes its name. Restore
    /// by extracting it into an empty data directory. DEST must not exist;
    /// `-` writes the archive to standard output
    /// (`kubectl exec deploy/arca -- /arca backup - > arca-backup.tar`).
    Backup {
        /// The file to create, or `-` for standard output.
        dest: PathBuf,
    },
    /// Rotate a signing key kept in the store: `links` (signed file
    /// links). The current key becomes the previous one, which still
    /// verifies, so links already handed out keep working until they
    /// expire; a second rotation retires it. Every server picks the new
    /// key up within 30 s.
    RotateKey {
        /// The key: `links`.
        name: String,
    },
    /// Exit 0 when the server at `server.listen` answers `/healthz` with
    /// 200 (for container health checks in images without a shell).
    Healthcheck,
}

/// The tokio runtime for a command: `workers` threads for the server and
/// imports, or the current thread alone; `None` after printing why it
/// could not start.
fn runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("arca: cannot start the runtime: {e}");
            None
        }
    }
}

fn parse_duration(s: &str) -> Result<HumanDuration, String> {
    HumanDuration::parse(s)
}

fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (name, value) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if name.is_empty() {
        return Err("expected NAME=VALUE with a non-empty NAME".into());
    }
    let v =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((name.to_owned(), v))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("arca: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => {
            print!("{}", cfg.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Import {
            collection,
            tenant,
            owner,
            file,
        } => {
            let Some(rt) = runtime(Some(cfg.server.workers)) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(import::run(
                cfg,
                &collection,
                tenant.as_deref(),
                owner,
                &file,
            )) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arca: import: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Copy { from, to, resume } => {
            let Some(rt) = runtime(Some(cfg.server.workers)) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(copy::run(&cfg, &from, &to, resume)) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arca: copy: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Backup { dest } => match backup(&cfg, &dest) {
            Ok(summary) if dest == Path::new("-") => {
                eprintln!("{summary}");
                ExitCode::SUCCESS
            }
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("arca: backup: {e}");
                ExitCode::from(2)
            }
        },
        Command::RotateKey { name } => {
            if name != "links" {
                eprintln!(
                    "arca: rotate-key: only `links` can be rotated (cursor keys have no previous key: rotating one would break every cursor handed out)"
                );
                return ExitCode::from(2);
            }
            let Some(rt) = runtime(None) else {
                return ExitCode::FAILURE;
            };
            let rotated = rt.block_on(async {
                let store = open_store(&cfg).await?;
                store
                    .rotate_secret(&name)
                    .await
                    .map_err(|e| format!("cannot rotate {name}: {e}"))
            });
            match rotated {
                Ok(()) => {
                    println!(
                        "rotated the {name} key; the previous one verifies until the next rotation"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arca: rotate-key: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Healthcheck => match healthcheck(cfg.server.listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("arca: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Openapi => {
            let Some(rt) = runtime(None) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(openapi(cfg)) {
                Ok(doc) => {
                    println!("{doc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arca: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Types => {
            let Some(rt) = runtime(None) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(types(cfg)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arca: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token {
            sub,
            roles,
            tenant,
            ttl,
            claims,
        } => match mint(&cfg, &sub, &roles, tenant.as_deref(), ttl, claims) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("arca: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            dev,
            dev_allow_remote,
        } => {
            init_logging(&cfg);
            let Some(rt) = runtime(Some(cfg.server.workers)) else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(serve(cfg, dev, dev_allow_remote)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "arca stopped");
                    eprintln!("arca: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn mint(
    cfg: &Config,
    sub: &str,
    roles: &[String],
    tenant: Option<&str>,
    ttl: HumanDuration,
    claims: Vec<(String, serde_json::Value)>,
) -> Result<String, String> {
    let keys = DevKeys::load_or_create(&cfg.store.data_dir())?;
    let extra: serde_json::Map<String, serde_json::Value> = claims.into_iter().collect();
    keys.mint(&MintRequest {
        extra: &extra,
        sub,
        roles,
        tenant,
        ttl: ttl.0,
        roles_claim: &cfg.auth.roles_claim,
        tenant_claim: &cfg.auth.tenant_claim,
    })
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

/// `arca backup`: the backup archive (`arca_store::sqlite::backup::archive`)
/// to `dest` (written as `<dest>.partial`, flushed, then renamed), or to
/// standard output. The database copy it starts from is made beside the
/// database: the same volume, and the one place a container with a
/// read-only root file system can write.
fn backup(cfg: &Config, dest: &Path) -> Result<String, String> {
    use arca_store::sqlite::backup::{archive, partial_path};
    let src = cfg.store.sqlite_path().ok_or(
        "arca backup copies the embedded store; with a mongodb:// store use MongoDB's own tools: \
         mongodump --uri=\"$URI\" --oplog --gzip --archive=arca.archive on a replica set (a consistent \
         dump, GridFS files included; restore with mongorestore --oplogReplay --gzip --archive=arca.archive), or your \
         platform's snapshots (Atlas backups, volume snapshots); see docs/deploy.md",
    )?;
    let started = std::time::Instant::now();
    let mut name = src.file_name().unwrap_or_default().to_owned();
    name.push(format!(".backup-{}", std::process::id()));
    let scratch = src.with_file_name(name);
    if dest == Path::new("-") {
        if std::io::stdout().is_terminal() {
            return Err("standard output is a terminal; redirect it to a file".into());
        }
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let (bytes, files) = archive(&src, &scratch, out)?;
        return Ok(format!(
            "backup of {} ({files} stored files) written to standard output ({bytes} bytes in {:.1} s)",
            src.display(),
            started.elapsed().as_secs_f64()
        ));
    }
    if dest.exists() {
        return Err(format!(
            "{} already exists; choose a new name",
            dest.display()
        ));
    }
    let partial = partial_path(dest);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} is left from an interrupted backup; remove it first",
                partial.display()
            ),
            _ => format!("{}: {e}", partial.display()),
        })?;
    let cleanup = RemoveOnDrop(partial.clone());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let (bytes, files) = archive(&src, &scratch, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    file.sync_all()
        .map_err(|e| format!("flushing {}: {e}", partial.display()))?;
    std::fs::rename(&partial, dest).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            dest.display()
        )
    })?;
    std::mem::forget(cleanup);
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot flush {}: {e}", dir.display()))?;
    }
    Ok(format!(
        "backup of {} ({files} stored files) written to {} ({bytes} bytes in {:.1} s)",
        src.display(),
        dest.display(),
        started.elapsed().as_secs_f64()
    ))
}

/// A file removed when this goes out of scope (on errors too).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// GET /healthz on the listen address (a wildcard address means this host).
fn healthcheck(listen: SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(3);
    let mut conn =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(format!(
            "/healthz answered {}",
            String::from_utf8_lossy(&head[9..12])
        ))
    }
}

/// Opens the configured store: the embedded engine on its file, or the
/// MongoDB engine at its URI (errors never show the URI's password); its
/// event log on or off as `events.enabled` says (so `arca import` writes
/// events a running server's streams deliver).
pub(crate) async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, String> {
    match cfg.store.engine() {
        Some(Engine::Sqlite(path)) => {
            let opts = SqliteOptions {
                path,
                synchronous_full: cfg.store.sqlite.synchronous == Synchronous::Full,
                readers: cfg.store.sqlite.readers,
                read_timeout: cfg.query.max_time.0,
                reader_cache_kib: cfg.store.sqlite.reader_cache_kib(),
            };
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&opts))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot open the store: {e}"))?
                .with_event_log(cfg.events.enabled);
            Ok(Arc::new(store))
        }
        Some(Engine::Mongodb(uri)) => {
            let opts = MongoOptions {
                uri,
                timeout: cfg.store.timeout.0,
                read_timeout: cfg.query.max_time.0,
                verify: cfg.store.mongodb.verify_matches,
            };
            let store = MongoStore::connect(&opts)
                .await
                .map_err(|e| format!("cannot open the store at {}: {e}", cfg.store.redacted_url()))?
                .with_event_log(cfg.events.enabled);
            Ok(Arc::new(store))
        }
        None => Err("store.url: expected sqlite://PATH or a mongodb:// URI".into()),
    }
}

/// The server state for a command that only reads the catalogue.
async fn offline_state(cfg: Config) -> Result<arca_server::AppState, String> {
    let store = open_store(&cfg).await?;
    let auth = Authenticator::inert(cfg.auth.clone());
    arca_server::AppState::new(cfg, store, auth)
        .await
        .map_err(|e| format!("cannot load collections: {e}"))
}

/// The OpenAPI document of the configured store, pretty-printed.
async fn openapi(cfg: Config) -> Result<String, String> {
    let state = offline_state(cfg).await?;
    serde_json::to_string_pretty(&arca_server::openapi::document(&state)).map_err(|e| e.to_string())
}

/// The TypeScript declarations of the configured store's collections.
async fn types(cfg: Config) -> Result<String, String> {
    let state = offline_state(cfg).await?;
    Ok(arca_server::types::declarations(&state))
}

async fn serve(cfg: Config, dev: bool, dev_allow_remote: bool) -> Result<(), String> {
    let started = std::time::Instant::now();
    let listen: SocketAddr = cfg.server.listen;
    let mut dev_keys = None;
    let auth = if dev {
        if !listen.ip().is_loopback() && !dev_allow_remote {
            return Err(format!(
                "--dev trusts a local key and prints an admin token; it refuses the non-loopback address {listen} unless --dev-allow-remote is given"
            ));
        }
        let keys = DevKeys::load_or_create(&cfg.store.data_dir())?;
        let auth = Authenticator::dev(cfg.auth.clone(), &keys)?;
        dev_keys = Some(keys);
        auth
    } else {
        if cfg.auth.issuer.is_none() && cfg.auth.jwks_url.is_none() {
            return Err(
                "no identity provider configured: set auth.issuer (ARCA_AUTH__ISSUER) to your OIDC issuer URL, or run `arca serve --dev` to try Arca with a local key".into(),
            );
        }
        Authenticator::remote(cfg.auth.clone())?
    };
    // A front-end folder that cannot be served stops the start, naming
    // web.root, before anything else is opened.
    let site = arca_server::web::Site::open(&cfg)?;
    let store = open_store(&cfg).await?;
    let db_path = match cfg.store.engine() {
        Some(Engine::Sqlite(path)) => path.display().to_string(),
        _ => cfg.store.redacted_url(),
    };
    let state = arca_server::AppState::new(cfg.clone(), store, auth.clone())
        .await
        .map_err(|e| format!("cannot load collections: {e}"))?;
    if let Some(site) = site {
        state.serve_site(site);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (metrics.listen): {e}"))?;
            let bound = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(listen = %bound, "metrics listening");
            Some(l)
        }
        None => None,
    };
    tokio::spawn(auth.run_refresh());
    if cfg.auth.require_tenant && cfg.auth.schema_admin() == cfg.auth.admin_role {
        tracing::warn!(
            role = %cfg.auth.admin_role,
            "auth.require_tenant is on and auth.schema_admin_role is the admin role: \
             a tenant's admin can redefine or delete every tenant's collections; \
             give auth.schema_admin_role a role only platform operators hold (docs/access.md)"
        );
    }
    tracing::info!(
        listen = %local,
        store = %db_path,
        dev,
        ready_ms = started.elapsed().as_secs_f64() * 1000.0,
        "arca listening"
    );
    if let Some(keys) = dev_keys {
        let token = keys.mint(&MintRequest {
            sub: "dev-admin",
            extra: &serde_json::Map::new(),
            roles: std::slice::from_ref(&cfg.auth.admin_role),
            tenant: None,
            ttl: std::time::Duration::from_secs(12 * 3600),
            roles_claim: &cfg.auth.roles_claim,
            tenant_claim: &cfg.auth.tenant_claim,
        })?;
        println!("arca dev mode: listening on http://{local} (data in {db_path})");
        println!("API docs: http://{local}/docs/  (OpenAPI: http://{local}/openapi.json)");
        println!("admin token (12 h; more with `arca token --sub NAME --role ROLE`):");
        println!("ARCA_TOKEN={token}");
        if cfg.console.enabled {
            // The token rides in the fragment, which browsers never send
            // to a server; the console moves it to session storage and
            // takes it out of the address bar at once.
            println!("console (signs in as dev-admin): http://{local}/console/#token={token}");
        }
    }
    arca_server::serve(state, listener, metrics_listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("arca stopped cleanly");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
