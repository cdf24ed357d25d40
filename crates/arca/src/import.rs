//! `arca import`: bulk-loads NDJSON into a collection through the same
//! checks as `POST .../documents` (reserved fields, numbers, the schema),
//! with many inserts in flight so the SQLite writer commits them in large
//! groups. It is the fast path for migrations and benchmark seeding.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arca_core::document::split_client_body;
use arca_core::{CollectionDef, CollectionName, Scope, Tenant};
use arca_server::config::Config;
use arca_store::{NewDocument, Store};
use serde_json::Value;
use tokio::task::JoinSet;

/// Inserts in flight at once (the writer groups up to 256 per commit).
const IN_FLIGHT: usize = 1024;

/// Imports `file` into `collection`; returns a one-line summary.
pub async fn run(
    cfg: Config,
    collection: &str,
    tenant: Option<&str>,
    owner: String,
    file: &Path,
) -> Result<String, String> {
    let started = Instant::now();
    let name = CollectionName::parse(collection).map_err(|e| e.to_string())?;
    let tenant = match tenant {
        Some(t) => Tenant::parse(t).map_err(|e| e.to_string())?,
        None => Tenant::None,
    };
    let store: Arc<dyn Store> = Arc::new(crate::open_store(&cfg).await?);
    let stored = store
        .collections()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            format!("no collection named {name}; define it first (PUT /v1/collections/{name})")
        })?;
    let def = CollectionDef::parse(&serde_json::json!({
        "schema": stored.schema,
        "indexes": stored.indexes.iter().map(arca_core::IndexDef::to_json).collect::<Vec<_>>(),
        "access": stored.access,
    }))
    .map_err(|e| e.to_string())?;
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?,
        ))
    };
    let scope = Scope::tenant(tenant);
    let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
    let mut count = 0u64;
    // On a bad line, the inserts already started are finished (never
    // dropped half-way), so the report of what got in is exact.
    async fn stop(tasks: &mut JoinSet<Result<(), String>>, count: u64, why: String) -> String {
        while tasks.join_next().await.is_some() {}
        format!("{why} ({count} documents before it were imported)")
    }
    let limit = cfg.server.max_body_bytes;
    for (n, line) in reader.lines().enumerate() {
        let checked = check_line(line, n + 1, &def, limit);
        let body = match checked {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(why) => return Err(stop(&mut tasks, count, why).await),
        };
        let doc = NewDocument {
            id: body.id,
            owner: owner.clone(),
            body: body.fields,
        };
        let (store, scope, name) = (store.clone(), scope.clone(), name.clone());
        let line_no = n + 1;
        tasks.spawn(async move {
            store
                .insert(&name, &scope, doc)
                .await
                .map(|_| ())
                .map_err(|e| format!("line {line_no}: {e}"))
        });
        count += 1;
        while tasks.len() >= IN_FLIGHT {
            if let Some(r) = tasks.join_next().await {
                r.map_err(|e| e.to_string())??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "imported {count} documents into {name} in {secs:.2} s ({:.0} documents/s)",
        count as f64 / secs.max(1e-9)
    ))
}

/// Checks one NDJSON line like a POST body; `None` for a blank line.
fn check_line(
    line: std::io::Result<String>,
    line_no: usize,
    def: &CollectionDef,
    limit: usize,
) -> Result<Option<arca_core::ClientBody>, String> {
    let line = line.map_err(|e| format!("line {line_no}: {e}"))?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    // The server's body limit, as a POST of the line would meet it.
    if line.len() > limit {
        return Err(format!(
            "line {line_no}: {} bytes, over server.max_body_bytes ({limit})",
            line.len()
        ));
    }
    let bytes = line.as_bytes();
    if let Some(lit) = arca_core::number::first_unrepresentable(bytes) {
        return Err(format!(
            "line {line_no}: the number {lit} cannot be stored exactly"
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("line {line_no}: {e}"))?;
    let body = split_client_body(value, None).map_err(|e| format!("line {line_no}: {e}"))?;
    let mut errors = body.errors.clone();
    errors.extend(def.schema.validate(&Value::Object(body.fields.clone())));
    match errors.first() {
        Some(first) => Err(format!("line {line_no}: {} {}", first.path, first.message)),
        None => Ok(Some(body)),
    }
}
