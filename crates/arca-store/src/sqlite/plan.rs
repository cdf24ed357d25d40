//! Narrowing a filter to candidate rows with SQL. The reference evaluator
//! in arca-core always has the last word (every candidate is checked in
//! Rust), so the SQL here only has to return a superset of the matches —
//! never miss one — and to do it through an index.
//!
//! Where that is possible: an equality, `$in` or range on a system column,
//! or on the first field of a declared index. For a user field,
//! `json_extract` alone would miss documents where an array lies on the
//! path (MongoDB matches through arrays), so the candidates are the union
//! of the expression-index scan and a scan of a partial index holding the
//! documents that have an array somewhere on that path (usually none).

use std::collections::HashSet;

use arca_core::query::{Cond, Filter, Node};
use rusqlite::types::Value as Sql;
use serde_json::Value;

use super::sql::{field_expr, path_has_array};

/// Candidate selection for a query.
pub struct Prefilter {
    /// A SQL condition over the collection table (may use `rowid`).
    pub condition: String,
    /// Its parameters, in order.
    pub params: Vec<Sql>,
}

const SYSTEM: &[(&str, &str)] = &[
    ("_id", "id"),
    ("_owner", "owner"),
    ("_created_at", "created_at"),
    ("_updated_at", "updated_at"),
    ("_rev", "rev"),
];

fn sql_value(v: &Value, allow_bool: bool) -> Option<Sql> {
    match v {
        Value::String(s) => Some(Sql::Text(s.clone())),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Sql::Integer(i)),
            None => n.as_f64().map(Sql::Real),
        },
        Value::Bool(b) if allow_bool => Some(Sql::Integer(i64::from(*b))),
        _ => None,
    }
}

/// The conjuncts of a filter's top-level `$and` (flattened).
fn conjuncts<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match node {
        Node::And(list) => list.iter().for_each(|n| conjuncts(n, out)),
        other => out.push(other),
    }
}

/// Builds `expr <op> ?` terms for the conditions of one field that SQL can
/// narrow on; `None` if none can.
fn value_terms(expr: &str, conds: &[Cond]) -> Option<(String, Vec<Sql>)> {
    // Equality and $in first: the most selective.
    for c in conds {
        match c {
            Cond::Eq(v) => {
                if let Some(p) = sql_value(v, true) {
                    return Some((format!("{expr} = ?"), vec![p]));
                }
            }
            Cond::In(list) if !list.is_empty() => {
                let params: Option<Vec<Sql>> = list.iter().map(|v| sql_value(v, true)).collect();
                if let Some(params) = params {
                    let marks = vec!["?"; params.len()].join(", ");
                    return Some((format!("{expr} IN ({marks})"), params));
                }
            }
            _ => {}
        }
    }
    // Ranges: numbers or strings only (SQLite orders numbers before text,
    // so a numeric bound never drops a matching number; extra rows are
    // removed by the evaluator).
    let mut terms = Vec::new();
    let mut params = Vec::new();
    for c in conds {
        let (op, v) = match c {
            Cond::Gt(v) => (">", v),
            Cond::Gte(v) => (">=", v),
            Cond::Lt(v) => ("<", v),
            Cond::Lte(v) => ("<=", v),
            _ => continue,
        };
        if let Some(p) = sql_value(v, false) {
            terms.push(format!("{expr} {op} ?"));
            params.push(p);
        }
    }
    (!terms.is_empty()).then(|| (terms.join(" AND "), params))
}

/// Chooses one indexed conjunct of `filter` to narrow on.
pub fn prefilter(
    filter: &Filter,
    table: &str,
    tenant: &str,
    indexed: &HashSet<String>,
) -> Option<Prefilter> {
    let mut parts = Vec::new();
    conjuncts(filter.root(), &mut parts);
    let mut best: Option<Prefilter> = None;
    for node in parts {
        let Node::Field(path, conds) = node else {
            continue;
        };
        let p = path.as_str();
        let candidate = if let Some((_, col)) = SYSTEM.iter().find(|(f, _)| *f == p) {
            value_terms(col, conds).map(|(condition, params)| Prefilter { condition, params })
        } else if indexed.contains(p) {
            value_terms(&field_expr(p), conds).map(|(terms, params)| {
                let mut all = vec![Sql::Text(tenant.to_owned())];
                all.extend(params);
                all.push(Sql::Text(tenant.to_owned()));
                Prefilter {
                    condition: format!(
                        "rowid IN (SELECT rowid FROM {table} WHERE tenant = ? AND {terms} \
                         UNION ALL SELECT rowid FROM {table} WHERE tenant = ? AND {})",
                        path_has_array(p)
                    ),
                    params: all,
                }
            })
        } else {
            None
        };
        // Prefer system columns and equality; the first usable one wins otherwise.
        if let Some(c) = candidate {
            let is_eq = c.condition.contains(" = ?") || c.condition.contains(" IN (");
            if best.is_none() || is_eq {
                best = Some(c);
                if is_eq {
                    break;
                }
            }
        }
    }
    best
}

/// An equality on the first field of a declared index, among the
/// top-level conjuncts: `(path, value)`. With the `_id` order, such a
/// filter is served by two scans already in `_id` order (the expression
/// index, which ends with `id`, and the "array on this path" index) merged
/// in Rust, so a page costs its own size whatever the collection's.
pub fn prefer_ordered(filter: &Filter, indexed: &HashSet<String>) -> Option<(String, Sql)> {
    let mut parts = Vec::new();
    conjuncts(filter.root(), &mut parts);
    parts.into_iter().find_map(|node| {
        let Node::Field(path, conds) = node else {
            return None;
        };
        if !indexed.contains(path.as_str()) {
            return None;
        }
        conds.iter().find_map(|c| match c {
            // Booleans are left out: SQLite stores them as 0/1.
            Cond::Eq(v) => sql_value(v, false).map(|p| (path.as_str().to_owned(), p)),
            _ => None,
        })
    })
}
