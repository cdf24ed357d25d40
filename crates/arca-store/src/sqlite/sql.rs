//! SQL text for the embedded engine: table and index DDL, row decoding.
//! Collection names are validated `[a-z][a-z0-9_]*` and index paths are
//! validated and quoted, so identifiers here can never carry injected SQL;
//! values always travel as bound parameters.

use arca_core::{CollectionName, DocId, Document, DocumentText, IndexDef, SystemFields};
use rusqlite::Row;
use serde_json::{Map, Value};

use crate::StoreError;

/// The table holding a collection's documents.
pub fn table(name: &CollectionName) -> String {
    format!("\"c_{}\"", name.as_str())
}

/// Columns selected for a `Document`, in `decode_document`'s order.
pub const DOC_COLUMNS: &str = "id, rev, created_at, updated_at, owner, json(doc)";

/// DDL of a collection's table.
pub fn create_table(name: &CollectionName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            rev INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            owner TEXT NOT NULL,
            doc BLOB NOT NULL,
            PRIMARY KEY (tenant, id)
        )",
        table(name)
    )
}

/// A JSON path literal for `json_extract`: `$."a"."b"`, each segment quoted
/// (a numeric segment is a key here; array positions are the query
/// language's business).
pub fn json_path(path: &str) -> String {
    let mut out = String::from("'$");
    for seg in path.split('.') {
        out.push_str(".\"");
        // Validated paths hold no quotes; escape anyway for SQL and JSON path.
        out.push_str(&seg.replace('\'', "''").replace('"', "\\\""));
        out.push('"');
    }
    out.push('\'');
    out
}

/// The SQL expression of an indexed field.
pub fn field_expr(path: &str) -> String {
    match path {
        "_owner" => "owner".into(),
        "_created_at" => "created_at".into(),
        "_updated_at" => "updated_at".into(),
        _ => format!("json_extract(doc, {})", json_path(path)),
    }
}

/// A condition true when an array lies anywhere on `path` (a prefix or the
/// value itself): the rows `json_extract` equality could miss. It is also
/// the `WHERE` of the path's partial index, so the text must stay identical.
pub fn path_has_array(path: &str) -> String {
    let segs: Vec<&str> = path.split('.').collect();
    let terms: Vec<String> = (1..=segs.len())
        .map(|n| {
            format!(
                "json_type(doc, {}) = 'array'",
                json_path(&segs[..n].join("."))
            )
        })
        .collect();
    format!("({})", terms.join(" OR "))
}

/// Every index a collection should have: the declared ones, plus for each
/// user path that leads a declared index a plain expression index (when no
/// plain declared index already serves) and the partial "array on this
/// path" index the planner unions with it.
pub fn desired_indexes(coll: &CollectionName, defs: &[IndexDef]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = defs
        .iter()
        .map(|d| (index_name(coll, d), create_index(coll, d)))
        .collect();
    // Every user field of a unique index gets its "array on this path"
    // index (the multikey checks of `unique` find documents through it).
    let leading: std::collections::HashSet<&str> = defs
        .iter()
        .filter_map(|d| d.fields.first().map(|(p, _)| p.as_str()))
        .collect();
    let mut others = std::collections::HashSet::new();
    for d in defs.iter().filter(|d| d.unique) {
        for (p, _) in d.fields.iter().skip(1) {
            // A leading path gets its own below.
            if p.starts_with('_') || leading.contains(p.as_str()) || !others.insert(p.clone()) {
                continue;
            }
            let h = short_hash(&format!("v2:{p}"));
            out.push((
                format!("ixa_{}_{h}", coll.as_str()),
                format!(
                    "CREATE INDEX IF NOT EXISTS \"ixa_{c}_{h}\" ON {t} (tenant, id) WHERE {w}",
                    c = coll.as_str(),
                    t = table(coll),
                    w = path_has_array(p)
                ),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for d in defs {
        let Some((first, _)) = d.fields.first() else {
            continue;
        };
        if first.starts_with('_') || !seen.insert(first.clone()) {
            continue;
        }
        let plain_declared = defs.iter().any(|o| serves_ordered_scan(o, first));
        // "v2": these indexes end with `id` since the ordered scans; the new
        // names make older databases rebuild them.
        let h = short_hash(&format!("v2:{first}"));
        if !plain_declared {
            out.push((
                format!("ixq_{}_{h}", coll.as_str()),
                format!(
                    "CREATE INDEX IF NOT EXISTS \"ixq_{c}_{h}\" ON {t} (tenant, {e}, id)",
                    c = coll.as_str(),
                    t = table(coll),
                    e = field_expr(first)
                ),
            ));
        }
        out.push((
            format!("ixa_{}_{h}", coll.as_str()),
            format!(
                "CREATE INDEX IF NOT EXISTS \"ixa_{c}_{h}\" ON {t} (tenant, id) WHERE {w}",
                c = coll.as_str(),
                t = table(coll),
                w = path_has_array(first)
            ),
        ));
    }
    out
}

/// The user paths that lead a declared index (what the planner may use).
pub fn indexed_paths(defs: &[IndexDef]) -> std::collections::HashSet<String> {
    defs.iter()
        .filter_map(|d| d.fields.first().map(|(p, _)| p.clone()))
        .filter(|p| !p.starts_with('_'))
        .collect()
}

fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// MongoDB's unique-index equality, in SQL: a type bracket (numbers
/// together, booleans apart from numbers, null and missing together) and
/// the value, with null/missing mapped to one non-NULL sentinel because
/// SQLite would otherwise treat every NULL as distinct.
fn unique_exprs(path: &str) -> String {
    if path.starts_with('_') {
        return field_expr(path);
    }
    let (bracket, value) = unique_key_exprs(path);
    format!("{bracket}, {value}")
}

/// The two expressions of a user path in a unique index: its type bracket
/// and its value (queries comparing with them use the index).
pub fn unique_key_exprs(path: &str) -> (String, String) {
    let p = json_path(path);
    (
        format!(
            "(CASE json_type(doc, {p}) WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n' \
             WHEN 'true' THEN 'b' WHEN 'false' THEN 'b' WHEN 'text' THEN 's' \
             WHEN 'object' THEN 'o' WHEN 'array' THEN 'a' ELSE 'z' END)"
        ),
        format!("ifnull(json_extract(doc, {p}), x'00')"),
    )
}

/// A stable index name derived from the collection and the definition, so
/// reconciling indexes is a set difference of names.
pub fn index_name(coll: &CollectionName, def: &IndexDef) -> String {
    // FNV-1a: a tiny stable hash for a name, not for security. "v2": plain
    // indexes end with `id` since the ordered scans.
    let v = if def.unique { "" } else { "v2:" };
    format!(
        "ix_{}_{}",
        coll.as_str(),
        short_hash(&format!(
            "{v}{}",
            serde_json::to_string(def).unwrap_or_default()
        ))
    )
}

/// DDL of a declared index, leading with the tenant.
pub fn create_index(coll: &CollectionName, def: &IndexDef) -> String {
    let cols: Vec<String> = def
        .fields
        .iter()
        .map(|(p, d)| {
            let dir = if *d < 0 { " DESC" } else { "" };
            if def.unique {
                unique_exprs(p)
            } else {
                format!("{}{dir}", field_expr(p))
            }
        })
        .collect();
    let sparse = if def.sparse {
        let present: Vec<String> = def
            .fields
            .iter()
            .map(|(p, _)| {
                if p.starts_with('_') {
                    "1".to_owned()
                } else {
                    format!("json_type(doc, {}) IS NOT NULL", json_path(p))
                }
            })
            .collect();
        format!(" WHERE {}", present.join(" OR "))
    } else {
        String::new()
    };
    // A non-unique index ends with `id`, so an equality on its fields
    // yields rows already in `_id` order (pages stop early, no sort).
    let tail = if def.unique { "" } else { ", id" };
    format!(
        "CREATE {}INDEX IF NOT EXISTS \"{}\" ON {} (tenant, {}{tail}){sparse}",
        if def.unique { "UNIQUE " } else { "" },
        index_name(coll, def),
        table(coll),
        cols.join(", ")
    )
}

/// Whether `def` is a plain index on exactly `path` (it then serves the
/// planner's ordered equality scans itself).
pub fn serves_ordered_scan(def: &IndexDef, path: &str) -> bool {
    !def.unique && !def.sparse && def.fields.len() == 1 && def.fields[0].0 == path
}

/// Decodes a row selected with `DOC_COLUMNS`.
pub fn decode_document(row: &Row<'_>) -> rusqlite::Result<Result<Document, StoreError>> {
    let doc: String = row.get(5)?;
    let body = match serde_json::from_str::<Value>(&doc) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(_) => Map::new(),
    };
    Ok(decode_system(row)?.map(|system| Document { system, body }))
}

/// Decodes a `DOC_COLUMNS` row with only the top-level body members named
/// in `keys` (the system fields whole): for evaluating something that
/// reads only those, the rest is scanned over, never built.
pub fn decode_document_fields(
    row: &Row<'_>,
    keys: &[&str],
) -> rusqlite::Result<Result<Document, StoreError>> {
    let text = row.get_ref(5)?.as_str()?;
    let body = arca_core::parse_body_fields(text, keys).unwrap_or_default();
    Ok(decode_system(row)?.map(|system| Document { system, body }))
}

/// Decodes a `DOC_COLUMNS` row keeping the body as stored text.
pub fn decode_document_text(row: &Row<'_>) -> rusqlite::Result<Result<DocumentText, StoreError>> {
    let doc: String = row.get(5)?;
    Ok(decode_system(row)?.and_then(|system| document_text(system, doc)))
}

/// A document from its system fields and stored body text.
pub fn document_text(system: SystemFields, body: String) -> Result<DocumentText, StoreError> {
    DocumentText::new(system, body)
        .ok_or_else(|| StoreError::Unavailable("a stored document is not a JSON object".into()))
}

/// Decodes the system columns of a `DOC_COLUMNS` row.
pub fn decode_system(row: &Row<'_>) -> rusqlite::Result<Result<SystemFields, StoreError>> {
    // The id is checked on the borrowed text, then copied once.
    let raw_id = row.get_ref(0)?.as_str()?;
    let Ok(id) = DocId::parse(raw_id) else {
        return Ok(Err(StoreError::Unavailable(format!(
            "corrupt document id {raw_id:?}"
        ))));
    };
    let rev: i64 = row.get(1)?;
    let created_at: String = row.get(2)?;
    let updated_at: String = row.get(3)?;
    let owner: String = row.get(4)?;
    Ok(Ok(SystemFields {
        id,
        rev: u64::try_from(rev).unwrap_or(0),
        created_at,
        updated_at,
        owner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_per_segment() {
        assert_eq!(field_expr("a.b"), "json_extract(doc, '$.\"a\".\"b\"')");
        assert_eq!(field_expr("_owner"), "owner");
    }

    #[test]
    fn index_names_are_stable_and_distinct() {
        let c = CollectionName::parse("people").expect("name");
        let a = IndexDef {
            fields: vec![("email".into(), 1)],
            unique: true,
            sparse: false,
        };
        let b = IndexDef {
            unique: false,
            ..a.clone()
        };
        assert_eq!(index_name(&c, &a), index_name(&c, &a.clone()));
        assert_ne!(index_name(&c, &a), index_name(&c, &b));
    }
}
