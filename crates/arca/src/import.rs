//! `arca import`: bulk-loads NDJSON into a collection through the same
//! checks as `POST .../documents` (reserved fields, numbers, the schema),
//! with many inserts in flight so the SQLite writer commits them in large
//! groups. It is the fast path for migrations and benchmark seeding, and
//! may run while a server serves the same store (SQLite orders the two
//! writers; tested under concurrent traffic).

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
    let mut tasks: JoinSet<Result<(), Failure>> = JoinSet::new();
    let mut tally = Tally::default();
    let mut last_read = 0;
    let limit = cfg.server.max_body_bytes;
    for (n, line) in reader.lines().enumerate() {
        let line_no = n + 1;
        last_read = line_no;
        let body = match check_line(line, line_no, &def, limit) {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(why) => {
                tally.failed.push((line_no, why));
                break;
            }
        };
        let doc = NewDocument {
            id: body.id,
            owner: owner.clone(),
            body: body.fields,
        };
        let (store, scope, name) = (store.clone(), scope.clone(), name.clone());
        tasks.spawn(async move {
            store
                .insert(&name, &scope, doc)
                .await
                .map(|_| ())
                .map_err(|e| (line_no, e.to_string()))
        });
        while tasks.len() >= IN_FLIGHT {
            if let Some(r) = tasks.join_next().await {
                tally.settle(r);
            }
        }
        // A refused insert (a duplicate _id or unique value) stops the
        // reading too.
        if !tally.failed.is_empty() {
            break;
        }
    }
    // Inserts already started are finished (never dropped half-way), so
    // the report of what got in is exact.
    while let Some(r) = tasks.join_next().await {
        tally.settle(r);
    }
    if !tally.failed.is_empty() {
        return Err(tally.report(last_read));
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "imported {} documents into {name} in {secs:.2} s ({:.0} documents/s)",
        tally.imported,
        tally.imported as f64 / secs.max(1e-9)
    ))
}

/// A line that was not imported: its number and why.
type Failure = (usize, String);

/// What the inserts came to.
#[derive(Default)]
struct Tally {
    imported: u64,
    failed: Vec<Failure>,
}

impl Tally {
    fn settle(&mut self, joined: Result<Result<(), Failure>, tokio::task::JoinError>) {
        match joined {
            Ok(Ok(())) => self.imported += 1,
            Ok(Err(failure)) => self.failed.push(failure),
            // Only a panic gets here (the set is never aborted).
            Err(e) => self.failed.push((0, format!("an insert failed: {e}"))),
        }
    }

    /// The error of an import that stopped: the first failed line, and
    /// exactly which lines got in. Up to `IN_FLIGHT` inserts run at once,
    /// so lines after a refused one may have been imported too.
    fn report(mut self, last_read: usize) -> String {
        self.failed.sort();
        let (first, why) = &self.failed[0];
        let lines: Vec<String> = self.failed.iter().map(|(n, _)| n.to_string()).collect();
        let except = match lines.len() {
            1 => format!("line {first}"),
            n if n <= 10 => format!("lines {}", lines.join(", ")),
            n => format!("lines {} and {} more", lines[..10].join(", "), n - 10),
        };
        let imported = match self.imported {
            1 => "1 document was".to_owned(),
            n => format!("{n} documents were"),
        };
        format!(
            "line {first}: {why}. {imported} imported: lines 1 to {last_read} except {except}; \
             nothing after line {last_read} was read",
            why = why.strip_prefix(&format!("line {first}: ")).unwrap_or(why),
        )
    }
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
