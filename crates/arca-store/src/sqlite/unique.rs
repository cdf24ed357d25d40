//! Unique indexes over arrays, as MongoDB has them (multikey): a document
//! whose indexed field holds an array gives the index one key per element,
//! and two documents of a tenant conflict when they share any key.
//!
//! SQLite's own `UNIQUE` expression index (see `sql::create_index`) sees
//! one value per row: it enforces the common case, a single value against
//! a single value. This module adds, in the writer's transaction (so no
//! other write can interleave), what it cannot see: a document holding
//! arrays on the index's fields against every other document of the tenant,
//! and a single-valued one against those holding arrays. The keys are
//! `arca_core::query::index` (MongoDB's multikey rules, the evaluator's
//! equality). Documents holding arrays on an indexed path are found through
//! the partial "array on this path" indexes, so a write to a collection
//! whose documents hold no arrays costs one empty index probe per field.
//!
//! The definitions are read from the catalogue table in the transaction
//! (cached per catalogue generation), so a unique index declared through
//! another process on the same file is enforced at once.

use std::cell::RefCell;
use std::collections::HashMap;

use arca_core::query::index::{IndexKey, document_index_tuples, tuples_meet};
use arca_core::{CollectionName, Document, IndexDef, SystemFields};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::{Map, Value};

use super::sql;
use super::writer::map_err;
use crate::StoreError;

/// Most key tuples one document may give an index (a compound index over
/// one array field: its elements).
const MAX_TUPLES: usize = 100_000;

/// The unique indexes of each collection, as of one catalogue generation.
#[derive(Default)]
struct Cache {
    generation: Option<i64>,
    uniques: HashMap<String, Vec<IndexDef>>,
}

thread_local! {
    /// The writer thread's cache (only the writer calls `check`).
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The unique indexes of `coll` with at least one user field.
fn uniques(conn: &Connection, coll: &CollectionName) -> Result<Vec<IndexDef>, StoreError> {
    let generation: Option<i64> = conn
        .prepare_cached("SELECT value FROM _arca_meta WHERE key = 'catalog_generation'")
        .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
        .map_err(map_err)?;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.generation != generation || generation.is_none() {
            let mut uniques = HashMap::new();
            let mut st = conn
                .prepare_cached("SELECT name, def FROM _arca_collections")
                .map_err(map_err)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(map_err)?;
            for row in rows {
                let (name, def) = row.map_err(map_err)?;
                let Ok(record) = serde_json::from_str::<super::CollectionRecord>(&def) else {
                    continue;
                };
                let defs: Vec<IndexDef> = record
                    .indexes
                    .into_iter()
                    .filter(|d| d.unique && d.fields.iter().any(|(p, _)| !p.starts_with('_')))
                    .collect();
                if !defs.is_empty() {
                    uniques.insert(name, defs);
                }
            }
            *cache = Cache {
                generation,
                uniques,
            };
        }
        Ok(cache
            .uniques
            .get(coll.as_str())
            .cloned()
            .unwrap_or_default())
    })
}

/// The fields of an index, as a conflict names them.
fn field_names(def: &IndexDef) -> String {
    def.fields
        .iter()
        .map(|(p, _)| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the document about to be written (`system`, `body` as JSON text)
/// against every unique index of `coll` within the tenant: `Conflict`
/// naming the index's fields when it shares a key with another document.
pub fn check(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    system: &SystemFields,
    body: &str,
) -> Result<(), StoreError> {
    let defs = uniques(conn, coll)?;
    if defs.is_empty() {
        return Ok(());
    }
    let body = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let doc = Document {
        system: system.clone(),
        body,
    };
    for def in &defs {
        let Some(tuples) = document_index_tuples(&doc, def, MAX_TUPLES) else {
            continue; // a sparse index skips it
        };
        if conflicts(conn, coll, tenant, system.id.as_str(), def, &tuples)? {
            return Err(StoreError::Conflict(field_names(def)));
        }
    }
    Ok(())
}

/// Whether `tuples` (the keys of document `id`) meet another document of
/// the tenant's keys for `def`: a document holding arrays on its fields
/// (compared in full), or a single-valued one (through SQLite's unique
/// index expression, for each tuple of a multikey document).
fn conflicts(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    id: &str,
    def: &IndexDef,
    tuples: &[Vec<IndexKey>],
) -> Result<bool, StoreError> {
    let table = sql::table(coll);
    let user: Vec<&str> = def
        .fields
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !p.starts_with('_'))
        .collect();
    // Documents holding an array on one of the fields (one probe of its
    // partial index per field).
    for path in &user {
        let q = format!(
            "SELECT {} FROM {table} WHERE tenant = ?1 AND id <> ?2 AND {}",
            sql::DOC_COLUMNS,
            sql::path_has_array(path)
        );
        let mut st = conn.prepare_cached(&q).map_err(map_err)?;
        let mut rows = st.query(params![tenant, id]).map_err(map_err)?;
        while let Some(row) = rows.next().map_err(map_err)? {
            let other = sql::decode_document(row).map_err(map_err)??;
            if let Some(theirs) = document_index_tuples(&other, def, MAX_TUPLES)
                && tuples_meet(tuples, &theirs)
            {
                return Ok(true);
            }
        }
    }
    // A document with more than one key, against single-valued ones (a
    // single-valued one against single-valued ones is SQLite's own unique
    // index).
    if tuples.len() < 2 && !tuples.iter().flatten().any(|k| *k == IndexKey::EmptyArray) {
        return Ok(false);
    }
    let no_arrays: Vec<String> = user
        .iter()
        .map(|p| format!("NOT {}", sql::path_has_array(p)))
        .collect();
    let sparse = if def.sparse {
        let present: Vec<String> = def
            .fields
            .iter()
            .map(|(p, _)| {
                if p.starts_with('_') {
                    "1".to_owned()
                } else {
                    format!("json_type(doc, {}) IS NOT NULL", sql::json_path(p))
                }
            })
            .collect();
        format!(" AND ({})", present.join(" OR "))
    } else {
        String::new()
    };
    for tuple in tuples {
        if tuple.contains(&IndexKey::EmptyArray) {
            // Only another empty array equals it (found above).
            continue;
        }
        let mut terms = Vec::new();
        let mut args: Vec<Sql> = vec![Sql::Text(tenant.to_owned()), Sql::Text(id.to_owned())];
        for ((path, _), key) in def.fields.iter().zip(tuple) {
            let (bracket, value) = sql_key(key);
            if path.starts_with('_') {
                terms.push(format!("{} = ?", sql::field_expr(path)));
                args.push(value);
            } else {
                let (b, v) = sql::unique_key_exprs(path);
                terms.push(format!("{b} = ? AND {v} = ?"));
                args.push(Sql::Text(bracket.to_owned()));
                args.push(value);
            }
        }
        let q = format!(
            "SELECT 1 FROM {table} WHERE tenant = ? AND id <> ? AND {} AND {}{sparse} LIMIT 1",
            terms.join(" AND "),
            no_arrays.join(" AND ")
        );
        let found = conn
            .prepare_cached(&q)
            .and_then(|mut st| st.exists(params_from_iter(args.iter())))
            .map_err(map_err)?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A key as SQLite's unique index expression sees a single value: its
/// type bracket and its value (see `sql::unique_key_exprs`).
fn sql_key(key: &IndexKey) -> (&'static str, Sql) {
    match key {
        IndexKey::Null | IndexKey::EmptyArray => ("z", Sql::Blob(vec![0])),
        IndexKey::Value(v) => match v {
            Value::Null => ("z", Sql::Blob(vec![0])),
            Value::Bool(b) => ("b", Sql::Integer(i64::from(*b))),
            Value::Number(n) => (
                "n",
                match n.as_i64() {
                    Some(i) => Sql::Integer(i),
                    None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
                },
            ),
            Value::String(s) => ("s", Sql::Text(s.clone())),
            Value::Array(_) => ("a", Sql::Text(v.to_string())),
            Value::Object(_) => ("o", Sql::Text(v.to_string())),
        },
    }
}

/// Checks existing documents against a unique index about to be kept
/// (`put_collection`): `true` when two documents of one tenant share a
/// key that SQLite's own index could not see (arrays involved).
pub fn existing_conflict(
    conn: &Connection,
    coll: &CollectionName,
    def: &IndexDef,
) -> Result<bool, StoreError> {
    let table = sql::table(coll);
    for (path, _) in def.fields.iter().filter(|(p, _)| !p.starts_with('_')) {
        let q = format!(
            "SELECT {}, tenant FROM {table} WHERE {}",
            sql::DOC_COLUMNS,
            sql::path_has_array(path)
        );
        let mut st = conn.prepare(&q).map_err(map_err)?;
        let mut rows = st.query([]).map_err(map_err)?;
        while let Some(row) = rows.next().map_err(map_err)? {
            let doc = sql::decode_document(row).map_err(map_err)??;
            let tenant: String = row.get(6).map_err(map_err)?;
            let Some(tuples) = document_index_tuples(&doc, def, MAX_TUPLES) else {
                continue;
            };
            if conflicts(conn, coll, &tenant, doc.system.id.as_str(), def, &tuples)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
