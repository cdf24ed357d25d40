//! Inclusion projections (`fields=name,address.city`): keep the named
//! paths, always with `_id`. Through arrays of objects, each element is
//! projected (non-object elements are dropped), as MongoDB does.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::filter::{FieldPath, FilterError};

/// Most fields in a projection.
pub const MAX_FIELDS: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tree {
    /// Keep the whole value here.
    leaf: bool,
    children: BTreeMap<String, Tree>,
}

/// A parsed inclusion projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    root: Tree,
}

impl Projection {
    /// Parses a comma-separated list of paths.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let mut root = Tree::default();
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.len() > MAX_FIELDS {
            return Err(FilterError(format!(
                "fields takes at most {MAX_FIELDS} paths"
            )));
        }
        for part in parts {
            let path =
                FieldPath::parse(part).map_err(|e| FilterError(format!("fields: {}", e.0)))?;
            let mut node = &mut root;
            for seg in path.segments() {
                if node.leaf {
                    return Err(FilterError(format!(
                        "fields: \"{part}\" collides with a shorter path"
                    )));
                }
                node = node.children.entry(seg.clone()).or_default();
            }
            if !node.children.is_empty() {
                return Err(FilterError(format!(
                    "fields: \"{part}\" collides with a longer path"
                )));
            }
            node.leaf = true;
        }
        root.children.entry("_id".into()).or_default().leaf = true;
        Ok(Self { root })
    }

    /// Projects a document.
    pub fn apply(&self, doc: &Value) -> Value {
        project(doc, &self.root).unwrap_or_else(|| Value::Object(Map::new()))
    }
}

fn project(v: &Value, tree: &Tree) -> Option<Value> {
    if tree.leaf {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, sub) in &tree.children {
                if let Some(child) = m.get(k).and_then(|c| project(c, sub)) {
                    out.insert(k.clone(), child);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter(|i| i.is_object())
                .filter_map(|i| project(i, tree))
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_nested_paths_and_array_elements_with_id() {
        let p = Projection::parse("name,a.b").expect("projection");
        let doc = json!({"_id": "x", "_rev": 1, "name": "n", "age": 3, "a": [{"b": 1, "c": 2}, 5, {"c": 3}]});
        assert_eq!(
            p.apply(&doc),
            json!({"_id": "x", "name": "n", "a": [{"b": 1}, {}]})
        );
        let p = Projection::parse("a.b").expect("projection");
        assert_eq!(
            p.apply(&json!({"_id": "x", "a": {"b": {"c": 1}, "d": 2}})),
            json!({"_id": "x", "a": {"b": {"c": 1}}})
        );
        assert!(Projection::parse("a,a.b").is_err());
        assert!(Projection::parse("a.b,a").is_err());
        assert!(Projection::parse("").is_err());
    }
}
