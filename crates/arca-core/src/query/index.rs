//! Index keys with MongoDB's multikey semantics: the keys a document gives
//! a (compound) index, so that an engine without multikey indexes can
//! enforce a unique index exactly as MongoDB does.
//!
//! A field's keys: each value its path reaches (through arrays of
//! objects), an array contributing each of its elements (an element that
//! is itself an array is one key), a missing or `null` value the key
//! `null` (the contract: "a missing field counts as null"), and an empty
//! array the key MongoDB calls `undefined` (which equals only itself).
//! Equal keys of one document count once. A compound index's keys are the
//! tuples of its fields' keys; MongoDB refuses a document with arrays on
//! two fields of one compound index ("cannot index parallel arrays"), and
//! so does Arca, before any engine sees it (`parallel_arrays`). A sparse
//! index skips a document where every field is missing.

use serde_json::Value;

use super::eval::{DocumentRoot, Root, resolve_root};
use super::filter::FieldPath;
use super::order::equal;
use crate::{Document, IndexDef};

/// One key of one field.
#[derive(Debug, Clone)]
pub enum IndexKey {
    /// `null`, or the field missing.
    Null,
    /// An empty array (MongoDB's `undefined` key).
    EmptyArray,
    /// Any other value (an array element, or a non-array value).
    Value(Value),
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Null, Self::Null) | (Self::EmptyArray, Self::EmptyArray) => true,
            (Self::Value(a), Self::Value(b)) => equal(a, b),
            _ => false,
        }
    }
}

/// What a document gives one field of an index.
struct FieldKeys {
    keys: Vec<IndexKey>,
    /// An array lies on the path (the field is multikey here).
    array: bool,
    /// The path reaches no value at all.
    missing: bool,
}

fn field_keys<R: Root + ?Sized>(root: &R, path: &str) -> FieldKeys {
    let mut keys: Vec<IndexKey> = Vec::new();
    let (mut array, mut missing) = (false, true);
    let push = |keys: &mut Vec<IndexKey>, k: IndexKey| {
        if !keys.contains(&k) {
            keys.push(k);
        }
    };
    let Ok(path) = FieldPath::parse(path) else {
        return FieldKeys {
            keys: vec![IndexKey::Null],
            array,
            missing,
        };
    };
    let reached = resolve_root(root, &path);
    if reached.len() > 1 {
        // The path went through an array of objects.
        array = true;
    }
    for v in reached {
        match v {
            None | Some(Value::Null) => {
                missing &= v.is_none();
                push(&mut keys, IndexKey::Null);
            }
            Some(Value::Array(items)) => {
                missing = false;
                array = true;
                if items.is_empty() {
                    push(&mut keys, IndexKey::EmptyArray);
                }
                for item in items {
                    push(
                        &mut keys,
                        match item {
                            Value::Null => IndexKey::Null,
                            other => IndexKey::Value(other.clone()),
                        },
                    );
                }
            }
            Some(other) => {
                missing = false;
                push(&mut keys, IndexKey::Value(other.clone()));
            }
        }
    }
    if keys.is_empty() {
        keys.push(IndexKey::Null);
    }
    FieldKeys {
        keys,
        array,
        missing,
    }
}

/// The keys `doc` (a JSON object as clients see it) gives `def`: one tuple
/// per combination of its fields' keys; `None` when a sparse index skips
/// it. At most `limit` tuples are made (a document with parallel arrays is
/// refused before this matters).
pub fn index_tuples(doc: &Value, def: &IndexDef, limit: usize) -> Option<Vec<Vec<IndexKey>>> {
    tuples(doc, def, limit)
}

/// `index_tuples` of a stored document.
pub fn document_index_tuples(
    doc: &Document,
    def: &IndexDef,
    limit: usize,
) -> Option<Vec<Vec<IndexKey>>> {
    tuples(&DocumentRoot::new(doc), def, limit)
}

fn tuples<R: Root + ?Sized>(root: &R, def: &IndexDef, limit: usize) -> Option<Vec<Vec<IndexKey>>> {
    let fields: Vec<FieldKeys> = def
        .fields
        .iter()
        .map(|(p, _)| field_keys(root, p))
        .collect();
    if def.sparse && fields.iter().all(|f| f.missing) {
        return None;
    }
    let mut out: Vec<Vec<IndexKey>> = vec![Vec::new()];
    for f in &fields {
        let mut next = Vec::with_capacity(out.len() * f.keys.len());
        for prefix in &out {
            for k in &f.keys {
                if next.len() == limit {
                    break;
                }
                let mut t = prefix.clone();
                t.push(k.clone());
                next.push(t);
            }
        }
        out = next;
    }
    Some(out)
}

/// Whether `doc` has an array on any field of `def` (its keys are then
/// more than the one value an engine's plain index sees).
pub fn document_is_multikey(doc: &Document, def: &IndexDef) -> bool {
    let root = DocumentRoot::new(doc);
    def.fields.iter().any(|(p, _)| field_keys(&root, p).array)
}

/// The first two fields of `def` that both hold arrays in `doc`, if any:
/// MongoDB cannot index such a document ("cannot index parallel arrays").
pub fn parallel_arrays<'a>(doc: &Document, def: &'a IndexDef) -> Option<(&'a str, &'a str)> {
    let root = DocumentRoot::new(doc);
    let mut first: Option<&str> = None;
    for (p, _) in &def.fields {
        if field_keys(&root, p).array {
            match first {
                None => first = Some(p),
                Some(f) => return Some((f, p)),
            }
        }
    }
    None
}

/// Whether two documents' tuples share a key tuple.
pub fn tuples_meet(a: &[Vec<IndexKey>], b: &[Vec<IndexKey>]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x == y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(fields: &[&str], sparse: bool) -> IndexDef {
        IndexDef {
            fields: fields.iter().map(|f| ((*f).to_owned(), 1)).collect(),
            unique: true,
            sparse,
        }
    }

    fn keys(doc: Value, d: &IndexDef) -> Option<Vec<Vec<IndexKey>>> {
        index_tuples(&doc, d, 1000)
    }

    #[test]
    fn arrays_give_each_element_and_missing_is_null() {
        let d = def(&["tags"], false);
        let k = keys(json!({"tags": ["a", "b", "a", null]}), &d).expect("keys");
        assert_eq!(
            k,
            vec![
                vec![IndexKey::Value(json!("a"))],
                vec![IndexKey::Value(json!("b"))],
                vec![IndexKey::Null]
            ]
        );
        assert_eq!(keys(json!({}), &d), Some(vec![vec![IndexKey::Null]]));
        assert_eq!(
            keys(json!({"tags": []}), &d),
            Some(vec![vec![IndexKey::EmptyArray]])
        );
        assert!(keys(json!({}), &def(&["tags"], true)).is_none());
        assert!(keys(json!({"tags": null}), &def(&["tags"], true)).is_some());
        // 1 and 1.0 are one key; a nested array is one key.
        assert!(tuples_meet(
            &keys(json!({"t": [1]}), &def(&["t"], false)).expect("k"),
            &keys(json!({"t": 1.0}), &def(&["t"], false)).expect("k")
        ));
        assert_eq!(
            keys(json!({"t": [[1, 2]]}), &def(&["t"], false)),
            Some(vec![vec![IndexKey::Value(json!([1, 2]))]])
        );
    }

    #[test]
    fn paths_through_arrays_of_objects_and_compound_tuples() {
        let d = def(&["a.b"], false);
        let k = keys(json!({"a": [{"b": 1}, {"b": [2, 3]}, {"c": 4}]}), &d).expect("keys");
        assert_eq!(k.len(), 4, "{k:?}");
        let c = def(&["x", "tags"], false);
        let k = keys(json!({"x": 1, "tags": ["p", "q"]}), &c).expect("keys");
        assert_eq!(
            k,
            vec![
                vec![IndexKey::Value(json!(1)), IndexKey::Value(json!("p"))],
                vec![IndexKey::Value(json!(1)), IndexKey::Value(json!("q"))]
            ]
        );
    }
}
