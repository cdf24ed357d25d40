//! The reference evaluator: does a document match a filter, with MongoDB's
//! documented semantics. This is the definition of what a filter means in
//! Arca; the SQLite engine's SQL only narrows candidates before it, and the
//! MongoDB engine is held to it by the conformance tests.
//!
//! Paths follow MongoDB: `a.b` reaches into objects and, through arrays of
//! objects, into each element; a numeric segment is an array index or an
//! object key. A field that holds an array matches a condition when the
//! array itself or any of its elements does. `null` matches a missing field.

use std::cmp::Ordering;

use serde_json::Value;

use super::filter::{Cond, ElemMatch, FieldPath, Filter, Node, TypeName};
use super::order::{Bracket, bracket, compare, equal};

/// The values a path reaches in a document; `None` marks a branch where
/// the field is missing.
pub fn resolve<'a>(doc: &'a Value, path: &FieldPath) -> Vec<Option<&'a Value>> {
    let mut out = Vec::with_capacity(1);
    walk(doc, path.segments(), &mut out);
    out
}

fn walk<'a>(v: &'a Value, segs: &[String], out: &mut Vec<Option<&'a Value>>) {
    let Some((seg, rest)) = segs.split_first() else {
        out.push(Some(v));
        return;
    };
    match v {
        Value::Object(m) => match m.get(seg) {
            Some(child) => walk(child, rest, out),
            None => out.push(None),
        },
        Value::Array(items) => {
            let before = out.len();
            if let Ok(i) = seg.parse::<usize>()
                && let Some(child) = items.get(i)
            {
                walk(child, rest, out);
            }
            for item in items {
                if item.is_object() {
                    walk(item, segs, out);
                }
            }
            if out.len() == before {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

impl Filter {
    /// Whether `doc` (a document with its system fields) matches.
    pub fn matches(&self, doc: &Value) -> bool {
        node_matches(self.root(), doc)
    }
}

fn node_matches(node: &Node, doc: &Value) -> bool {
    match node {
        Node::And(list) => list.iter().all(|n| node_matches(n, doc)),
        Node::Or(list) => list.iter().any(|n| node_matches(n, doc)),
        Node::Nor(list) => !list.iter().any(|n| node_matches(n, doc)),
        Node::Nothing => false,
        Node::Field(path, conds) => {
            let values = resolve(doc, path);
            conds.iter().all(|c| cond_matches(c, &values))
        }
    }
}

/// A value or, for an array, any of its elements satisfies `pred`; arrays
/// are also offered whole when `whole` is set (equality against arrays).
fn any_value(values: &[Option<&Value>], whole: bool, pred: &dyn Fn(&Value) -> bool) -> bool {
    values.iter().flatten().any(|v| match v {
        Value::Array(items) => (whole && pred(v)) || items.iter().any(pred),
        other => pred(other),
    })
}

fn eq_matches(target: &Value, values: &[Option<&Value>]) -> bool {
    if target.is_null() && values.iter().any(Option::is_none) {
        return true;
    }
    any_value(values, true, &|v| equal(v, target))
}

/// `$gt`-style comparison: only within the target's type bracket.
fn cmp_matches(target: &Value, values: &[Option<&Value>], ok: fn(Ordering) -> bool) -> bool {
    if target.is_null() && ok(Ordering::Equal) && values.iter().any(Option::is_none) {
        return true; // `$gte: null` / `$lte: null` match a missing field
    }
    let b = bracket(target);
    any_value(values, b == Bracket::Array, &|v| {
        bracket(v) == b && ok(compare(v, target))
    })
}

fn type_matches(v: &Value, t: TypeName) -> bool {
    match (t, v) {
        (TypeName::Double, Value::Number(n)) => n.is_f64(),
        (TypeName::Int, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (TypeName::Long, Value::Number(n)) => {
            !n.is_f64() && n.as_i64().is_none_or(|i| i32::try_from(i).is_err())
        }
        (TypeName::Number, Value::Number(_)) => true,
        (TypeName::String, Value::String(_)) => true,
        (TypeName::Object, Value::Object(_)) => true,
        (TypeName::Array, Value::Array(_)) => true,
        (TypeName::Bool, Value::Bool(_)) => true,
        (TypeName::Null, Value::Null) => true,
        _ => false,
    }
}

fn cond_matches(cond: &Cond, values: &[Option<&Value>]) -> bool {
    match cond {
        Cond::Eq(t) => eq_matches(t, values),
        Cond::Ne(t) => !eq_matches(t, values),
        Cond::Gt(t) => cmp_matches(t, values, |o| o == Ordering::Greater),
        Cond::Gte(t) => cmp_matches(t, values, |o| o != Ordering::Less),
        Cond::Lt(t) => cmp_matches(t, values, |o| o == Ordering::Less),
        Cond::Lte(t) => cmp_matches(t, values, |o| o != Ordering::Greater),
        Cond::In(list) => list.iter().any(|t| eq_matches(t, values)),
        Cond::Nin(list) => !list.iter().any(|t| eq_matches(t, values)),
        Cond::Exists(want) => values.iter().any(Option::is_some) == *want,
        Cond::Type(types) => types
            .iter()
            .any(|t| any_value(values, *t == TypeName::Array, &|v| type_matches(v, *t))),
        Cond::Regex(re) => any_value(values, false, &|v| {
            v.as_str().is_some_and(|s| re.is_match(s))
        }),
        Cond::Not(inner) => !inner.iter().all(|c| cond_matches(c, values)),
        Cond::Size(n) => values
            .iter()
            .flatten()
            .any(|v| v.as_array().is_some_and(|a| a.len() as u64 == *n)),
        Cond::All(list) => !list.is_empty() && list.iter().all(|t| eq_matches(t, values)),
        Cond::ElemMatch(em) => values.iter().flatten().any(|v| {
            let Some(items) = v.as_array() else {
                return false;
            };
            items.iter().any(|item| match em {
                ElemMatch::Ops(conds) => {
                    let one = [Some(item)];
                    conds.iter().all(|c| cond_matches(c, &one))
                }
                ElemMatch::Query(node) => item.is_object() && node_matches(node, item),
            })
        }),
    }
}
