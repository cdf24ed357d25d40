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
use arca_core::{CollectionDef, CollectionName, Document, Scope, SystemFields, Tenant};
use arca_server::config::Config;
use arca_server::gateway::stamp;
use arca_store::Store;
use serde_json::Value;
use tokio::task::JoinSet;

/// Inserts in flight at once on the embedded engine (its writer groups up
/// to 256 per commit, so many waiting inserts make large commits).
const IN_FLIGHT_SQLITE: usize = 1024;

/// Inserts in flight at once on MongoDB: enough to keep the driver's
/// connections busy, few enough that none waits out `store.timeout` for a
/// connection.
const IN_FLIGHT_MONGODB: usize = 64;

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
    let store: Arc<dyn Store> = crate::open_store(&cfg).await?;
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
    let mut reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?,
        ))
    };
    // An operator tool: it writes with the store's own authority, into
    // the tenant it is told (every line is still checked like a POST).
    #[allow(clippy::disallowed_methods)]
    let scope = Scope::operator(tenant);
    let mut tasks: JoinSet<Result<(), Failure>> = JoinSet::new();
    let mut tally = Tally::default();
    let mut last_read = 0;
    let limit = cfg.server.max_body_bytes;
    let mut buf = Vec::new();
    let in_flight = match cfg.store.engine() {
        Some(arca_server::config::Engine::Mongodb(_)) => IN_FLIGHT_MONGODB,
        _ => IN_FLIGHT_SQLITE,
    };
    loop {
        let line_no = last_read + 1;
        let line = match read_line(&mut reader, &mut buf, limit) {
            Ok(None) => break,
            Ok(Some(line)) => Ok(line),
            Err(e) => Err(format!("line {line_no}: {e}")),
        };
        last_read = line_no;
        let body = match line.and_then(|line| check_line(line, line_no, &def)) {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(why) => {
                tally.failed.push((line_no, why));
                break;
            }
        };
        // Stamped as the server stamps a create.
        let doc = Document {
            system: SystemFields::first(
                body.id.unwrap_or_else(stamp::new_id),
                owner.clone(),
                stamp::now(),
            ),
            body: body.fields,
        };
        let (store, scope, name) = (store.clone(), scope.clone(), name.clone());
        tasks.spawn(async move {
            store
                .insert(&name, &scope, &doc)
                .await
                .map_err(|e| (line_no, e.to_string()))
        });
        while tasks.len() >= in_flight {
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
    /// exactly which lines got in. Many inserts run at once,
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

/// Reads the next line (without its `\n` or `\r\n`) into `buf`; `None` at
/// the end. A line is held in memory only up to `limit` bytes, the
/// server's body limit, as a POST of it would meet: past that it is an
/// error. (`BufRead::lines` would hold any line whole, and an import often
/// runs inside the server's container, where a multi-gigabyte file with no
/// line breaks would get it killed for memory.)
fn read_line<'a>(
    reader: &mut dyn BufRead,
    buf: &'a mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<&'a str>> {
    use std::io::{Error, ErrorKind, Read};
    buf.clear();
    // The line, then "\r\n" at most.
    let cap = limit as u64 + 2;
    let n = reader.take(cap).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    let ended = buf.last() == Some(&b'\n');
    if ended {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > limit || (!ended && n as u64 == cap) {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("longer than server.max_body_bytes ({limit} bytes)"),
        ));
    }
    std::str::from_utf8(buf)
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::InvalidData, format!("not UTF-8 ({e})")))
}

/// Checks one NDJSON line like a POST body; `None` for a blank line.
fn check_line(
    line: &str,
    line_no: usize,
    def: &CollectionDef,
) -> Result<Option<arca_core::ClientBody>, String> {
    if line.trim().is_empty() {
        return Ok(None);
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
    errors.extend(arca_core::document::portable_errors(&body.fields));
    errors.extend(def.schema.validate(&Value::Object(body.fields.clone())));
    match errors.first() {
        Some(first) => Err(format!("line {line_no}: {} {}", first.path, first.message)),
        None => Ok(Some(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::read_line;
    use std::io::BufRead;

    /// Every line of `input` as `read_line` gives it, with a limit of 5.
    fn lines(input: &[u8]) -> Vec<Result<String, String>> {
        let mut reader: Box<dyn BufRead> = Box::new(input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf, 5) {
                Ok(None) => return out,
                Ok(Some(line)) => out.push(Ok(line.to_owned())),
                Err(e) => {
                    // Never more than the limit and a line ending in memory.
                    assert!(buf.len() <= 7, "{} bytes held", buf.len());
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn lines_end_with_lf_crlf_or_the_input_and_hold_at_most_the_limit() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(
            lines(b"a\nbb\r\n\n12345\nlast"),
            vec![ok("a"), ok("bb"), ok(""), ok("12345"), ok("last")]
        );
        assert_eq!(lines(b"12345\r\n"), vec![ok("12345")]);
        let too_long = Err("longer than server.max_body_bytes (5 bytes)".to_owned());
        assert_eq!(lines(b"ok\n123456\nnext"), vec![ok("ok"), too_long.clone()]);
        assert_eq!(lines(b"123456"), vec![too_long.clone()]);
        let endless = vec![b'x'; 1 << 20];
        assert_eq!(lines(&endless), vec![too_long]);
        assert!(matches!(&lines(b"\xff\n")[0], Err(e) if e.starts_with("not UTF-8")));
    }
}
