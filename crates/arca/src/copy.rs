//! `arca copy --from URL --to URL`: moves a whole store between engines
//! (SQLite to MongoDB when a team outgrows one machine, or back): every
//! collection definition, then every document of every tenant with its id,
//! revision, timestamps and owner unchanged (engines store what they are
//! given, so a copy is exact). A target that already holds collections is
//! refused unless `--resume` (an interrupted copy run again: definitions
//! must then match, and documents already there are skipped). Progress
//! goes to standard error every few seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_core::FileId;
use arca_core::Scope;
use arca_server::config::Config;
use arca_store::{CollectionSpec, ExportPosition, Store, StoreError};
use futures_util::TryStreamExt;
use tokio::task::JoinSet;

/// Documents read per export page.
const PAGE: usize = 1000;

/// Inserts in flight at once (enough for either engine's write path).
const IN_FLIGHT: usize = 64;

/// What a copy did, for its summary line.
#[derive(Default)]
struct Totals {
    collections: usize,
    copied: u64,
    already: u64,
    files: u64,
    files_already: u64,
}

/// Opens the store at `url` with the rest of `cfg`, without an event log:
/// a copy is not a change anyone follows (and on MongoDB each logged write
/// would be a transaction of its own).
async fn open(cfg: &Config, url: &str) -> Result<Arc<dyn Store>, String> {
    let mut cfg = cfg.clone();
    cfg.store.url = url.to_owned();
    cfg.events.enabled = false;
    if cfg.store.engine().is_none() {
        return Err(format!(
            "{}: expected sqlite://PATH or a mongodb:// URI",
            arca_server::config::redact_url_password(url)
        ));
    }
    crate::open_store(&cfg).await
}

/// Copies the store at `from` into the one at `to`; a one-line summary.
pub async fn run(cfg: &Config, from: &str, to: &str, resume: bool) -> Result<String, String> {
    let started = Instant::now();
    let shown = |u: &str| arca_server::config::redact_url_password(u);
    if from == to {
        return Err("--from and --to name the same store".into());
    }
    let source = open(cfg, from).await?;
    let target = open(cfg, to).await?;
    let defs = source
        .collections()
        .await
        .map_err(|e| format!("reading {}: {e}", shown(from)))?;
    let existing = target
        .collections()
        .await
        .map_err(|e| format!("reading {}: {e}", shown(to)))?;
    let has_files = !target
        .export_files(None, 1)
        .await
        .map_err(|e| format!("reading {}: {e}", shown(to)))?
        .is_empty();
    if has_files && existing.is_empty() && !resume {
        return Err(format!(
            "{} already holds files; copy into an empty store, or pass --resume to finish an interrupted copy",
            shown(to)
        ));
    }
    if !existing.is_empty() && !resume {
        return Err(format!(
            "{} already holds {} collection(s) ({}); copy into an empty store, or pass --resume to finish an interrupted copy",
            shown(to),
            existing.len(),
            existing
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut totals = Totals::default();
    for def in &defs {
        match existing.iter().find(|e| e.name == def.name) {
            Some(e)
                if e.schema == def.schema && e.indexes == def.indexes && e.access == def.access => {
            }
            Some(_) => {
                return Err(format!(
                    "{}: the target's definition differs from the source's; resuming would mix them",
                    def.name
                ));
            }
            None => {
                target
                    .put_collection(CollectionSpec {
                        name: &def.name,
                        schema: &def.schema,
                        indexes: &def.indexes,
                        access: &def.access,
                        at: &def.updated_at,
                        created_at: Some(&def.created_at),
                    })
                    .await
                    .map_err(|e| format!("{}: defining it in the target: {e}", def.name))?;
            }
        }
        totals.collections += 1;
        copy_documents(&source, &target, def, resume, &mut totals).await?;
    }
    copy_files(&source, &target, resume, &mut totals).await?;
    Ok(format!(
        "copied {} collection(s) and {} document(s), {} file(s), from {} to {}{}{} in {:.1} s",
        totals.collections,
        totals.copied,
        totals.files,
        shown(from),
        shown(to),
        if totals.already > 0 {
            format!(" ({} already there)", totals.already)
        } else {
            String::new()
        },
        if totals.files_already > 0 {
            format!(" ({} file(s) already there)", totals.files_already)
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    ))
}

/// Files read per export page.
const FILE_PAGE: usize = 100;

/// Copies every stored file, one at a time (each is streamed from the
/// source into the target, never held whole). Resuming, a file already in
/// the target with the same metadata is skipped; a half-copied one was
/// never committed, so it is copied again.
async fn copy_files(
    source: &Arc<dyn Store>,
    target: &Arc<dyn Store>,
    resume: bool,
    totals: &mut Totals,
) -> Result<(), String> {
    let mut after: Option<(String, FileId)> = None;
    let mut last_report = Instant::now();
    loop {
        let page = source
            .export_files(after.as_ref().map(|(t, i)| (t.as_str(), i)), FILE_PAGE)
            .await
            .map_err(|e| format!("files: reading the source: {e}"))?;
        let full = page.len() == FILE_PAGE;
        for (tenant, meta) in page {
            after = Some((tenant.key().to_owned(), meta.id.clone()));
            // An operator tool: files go into the tenant they came from.
            #[allow(clippy::disallowed_methods)]
            let scope = Scope::operator(tenant);
            let what =
                |e: StoreError| format!("file {} of tenant {:?}: {e}", meta.id, scope.tenant_key());
            if let Some(there) = target.file_meta(&scope, &meta.id).await.map_err(what)? {
                if resume && there == meta {
                    totals.files_already += 1;
                    continue;
                }
                return Err(format!(
                    "file {} of tenant {:?} is already in the target{}",
                    meta.id,
                    scope.tenant_key(),
                    if resume { " with other metadata" } else { "" }
                ));
            }
            let mut bytes = source
                .read_file(&scope, &meta.id, 0..meta.size)
                .await
                .map_err(what)?;
            let mut writer = target.begin_file(&scope, &meta.id).await.map_err(what)?;
            let copied = async {
                while let Some(chunk) = bytes.try_next().await? {
                    writer.write(chunk).await?;
                }
                Ok::<_, StoreError>(())
            }
            .await;
            match copied {
                Ok(()) => writer.commit(meta.clone()).await.map_err(what)?,
                Err(e) => {
                    writer.abort().await;
                    return Err(what(e));
                }
            }
            totals.files += 1;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("arca copy: files: {} copied so far", totals.files);
            last_report = Instant::now();
        }
        if !full {
            break;
        }
    }
    eprintln!("arca copy: files: done");
    Ok(())
}

async fn copy_documents(
    source: &Arc<dyn Store>,
    target: &Arc<dyn Store>,
    def: &arca_store::StoredCollection,
    resume: bool,
    totals: &mut Totals,
) -> Result<(), String> {
    let name = &def.name;
    let mut after: Option<ExportPosition> = None;
    let mut tasks: JoinSet<Result<bool, String>> = JoinSet::new();
    let mut last_report = Instant::now();
    let settle = |r: Result<Result<bool, String>, tokio::task::JoinError>,
                  totals: &mut Totals|
     -> Result<(), String> {
        match r {
            Ok(Ok(true)) => totals.copied += 1,
            Ok(Ok(false)) => totals.already += 1,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("a copy task failed: {e}")),
        }
        Ok(())
    };
    loop {
        let page = source
            .export(name, after.as_ref(), PAGE)
            .await
            .map_err(|e| format!("{name}: reading the source: {e}"))?;
        let Some((tenant, last)) = page.last() else {
            break;
        };
        after = Some(ExportPosition {
            tenant: tenant.key().to_owned(),
            id: last.system.id.clone(),
        });
        let full = page.len() == PAGE;
        for (tenant, doc) in page {
            // An operator tool: the copy writes with the store's own
            // authority, into the tenant each document came from.
            #[allow(clippy::disallowed_methods)]
            let scope = Scope::operator(tenant);
            let (target, name) = (target.clone(), name.clone());
            tasks.spawn(async move {
                match target.insert(&name, &scope, &doc).await {
                    Ok(()) => Ok(true),
                    // Resuming: the document may be there from the first
                    // run (an engine may name a unique index before the
                    // id, so look it up rather than trust which field).
                    Err(StoreError::Conflict(_))
                        if resume
                            && target
                                .get(&name, &scope, &doc.system.id)
                                .await
                                .is_ok_and(|found| found.as_ref() == Some(&doc)) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(format!(
                        "{name}: document {} of tenant {:?}: {e}",
                        doc.system.id,
                        scope.tenant_key()
                    )),
                }
            });
            while tasks.len() >= IN_FLIGHT {
                if let Some(r) = tasks.join_next().await {
                    settle(r, totals)?;
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "arca copy: {name}: {} documents copied so far",
                totals.copied + totals.already
            );
            last_report = Instant::now();
        }
        if !full {
            break;
        }
    }
    while let Some(r) = tasks.join_next().await {
        settle(r, totals)?;
    }
    eprintln!("arca copy: {name}: done");
    Ok(())
}
