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

/// What a filter is evaluated against: a JSON object, or a stored document
/// seen as one (its system fields and body) without being copied into one.
pub trait Root {
    /// The top-level field `key`.
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Root for Value {
    fn field(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|m| m.get(key))
    }
}

/// A `Document` as a filter root; system fields are made into values only
/// when a filter names one.
pub(crate) struct DocumentRoot<'a> {
    doc: &'a crate::Document,
    system: std::cell::OnceCell<[Value; 5]>,
}

impl<'a> DocumentRoot<'a> {
    /// A root over `doc`.
    pub(crate) fn new(doc: &'a crate::Document) -> Self {
        Self {
            doc,
            system: std::cell::OnceCell::new(),
        }
    }
}

impl Root for DocumentRoot<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        let i = match key {
            "_id" => 0,
            "_rev" => 1,
            "_created_at" => 2,
            "_updated_at" => 3,
            "_owner" => 4,
            _ => return self.doc.body.get(key),
        };
        let s = &self.doc.system;
        let sys = self.system.get_or_init(|| {
            [
                Value::String(s.id.as_str().to_owned()),
                Value::from(s.rev),
                Value::String(s.created_at.clone()),
                Value::String(s.updated_at.clone()),
                Value::String(s.owner.clone()),
            ]
        });
        Some(&sys[i])
    }
}

pub(crate) fn resolve_root<'a, R: Root + ?Sized>(
    root: &'a R,
    path: &FieldPath,
) -> Vec<Option<&'a Value>> {
    let mut out = Vec::with_capacity(1);
    match path.segments().split_first() {
        Some((first, rest)) => match root.field(first) {
            Some(v) => walk(v, rest, &mut out),
            None => out.push(None),
        },
        None => out.push(None),
    }
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

    /// Whether a stored document matches (same as `matches` on its
    /// `to_json()`, without building it).
    pub fn matches_document(&self, doc: &crate::Document) -> bool {
        if self.is_all() {
            return true;
        }
        node_matches(
            self.root(),
            &DocumentRoot {
                doc,
                system: std::cell::OnceCell::new(),
            },
        )
    }
}

fn node_matches<R: Root + ?Sized>(node: &Node, doc: &R) -> bool {
    match node {
        Node::And(list) => list.iter().all(|n| node_matches(n, doc)),
        Node::Or(list) => list.iter().any(|n| node_matches(n, doc)),
        Node::Nor(list) => !list.iter().any(|n| node_matches(n, doc)),
        Node::Nothing => false,
        Node::Field(path, conds) => {
            let values = resolve_root(doc, path);
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

/// `$in`: some value (or array element, or whole array) is in the set; a
/// `null` in the set also matches a missing field. One binary search per
/// value, whatever the set's size.
fn in_matches(set: &super::filter::ValueSet, values: &[Option<&Value>]) -> bool {
    if values.iter().any(Option::is_none) && set.contains(&Value::Null) {
        return true;
    }
    any_value(values, true, &|v| set.contains(v))
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
        Cond::In(set) => in_matches(set, values),
        Cond::Nin(set) => !in_matches(set, values),
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
