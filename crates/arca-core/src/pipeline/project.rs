//! Field trees: the shape of `$project`, `$addFields`/`$set` and `$unset`,
//! parsed into a tree of paths, and applied with MongoDB's rules.
//!
//! Parsing (MongoDB's rules): dotted keys and nested objects are the same
//! thing (`{"a.b": 1}` is `{a: {b: 1}}`); a path given twice, or together
//! with one of its prefixes, is a "path collision". In `$project`, `true`
//! or a non-zero number includes a field, `false` or `0` excludes it, any
//! other value is an expression (a computed field); inclusion and
//! exclusion do not mix (except that `_id` may be excluded from an
//! inclusion), computed fields make an inclusion, `_id` is kept unless
//! excluded, and an empty sub-object is refused. In `$addFields` every
//! value is an expression, except a nested object without operators, which
//! adds fields inside the existing sub-document (an empty object is the
//! value `{}`). `$unset` is an exclusion of its paths.
//!
//! Applying (MongoDB's projection executor, in aggregation's mode that
//! recurses into nested arrays):
//!
//! - Inclusion: the included fields come in the input document's order,
//!   then computed fields in the order written. Through an array, each
//!   element is projected: object elements keep only the included
//!   sub-fields, elements that are not objects are dropped; a scalar where
//!   sub-fields are asked for is dropped.
//! - Computed fields (in `$project` and `$addFields`) are evaluated against
//!   the input document. A computed value that is missing removes the
//!   field. A computed field under an array is set in every element (a
//!   scalar element becomes an object holding the computed fields); under
//!   a scalar or a missing field, a new object is made.
//! - Exclusion: the excluded fields are removed, through arrays in every
//!   object element; everything else keeps its place.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::PipelineError;
use super::expr::{Env, Expr, Scope, parse_path};
use super::values::Budget;

/// What a tree says about one field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldNode {
    /// Keep the field (`$project: {a: 1}`).
    Include,
    /// Remove the field (`$project: {a: 0}`, `$unset`).
    Exclude,
    /// Set the field to an expression's value.
    Set(Expr),
    /// Rules for the fields inside this one.
    Nested(FieldTree),
}

/// A tree of field rules, in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTree {
    fields: Vec<(String, FieldNode)>,
    index: BTreeMap<String, usize>,
}

impl FieldTree {
    /// The fields with their rules, in the order written.
    pub fn fields(&self) -> &[(String, FieldNode)] {
        &self.fields
    }

    fn get(&self, k: &str) -> Option<&FieldNode> {
        self.index
            .get(k)
            .and_then(|i| self.fields.get(*i))
            .map(|(_, n)| n)
    }

    fn push(&mut self, k: String, node: FieldNode) {
        self.index.insert(k.clone(), self.fields.len());
        self.fields.push((k, node));
    }

    /// Whether any rule below sets a value.
    fn has_computed(&self) -> bool {
        self.fields.iter().any(|(_, n)| match n {
            FieldNode::Set(_) => true,
            FieldNode::Nested(t) => t.has_computed(),
            _ => false,
        })
    }

    /// Adds `node` at `segs`; a path given twice or beside its own prefix
    /// is a collision.
    fn insert(&mut self, segs: &[String], node: FieldNode) -> Result<(), PipelineError> {
        let collision = || PipelineError::Invalid(format!("path collision at {}", segs.join(".")));
        self.insert_at(segs, node).map_err(|()| collision())
    }

    fn insert_at(&mut self, segs: &[String], node: FieldNode) -> Result<(), ()> {
        let Some((first, rest)) = segs.split_first() else {
            return Err(());
        };
        if rest.is_empty() {
            if self.get(first).is_some() {
                return Err(());
            }
            self.push(first.clone(), node);
            return Ok(());
        }
        if self.get(first).is_none() {
            self.push(first.clone(), FieldNode::Nested(FieldTree::default()));
        }
        let i = self.index.get(first).copied().ok_or(())?;
        match self.fields.get_mut(i) {
            Some((_, FieldNode::Nested(sub))) => sub.insert_at(rest, node),
            _ => Err(()),
        }
    }

    /// Every leaf with its dotted path, depth first in the order written.
    pub fn leaves(&self) -> Vec<(String, &FieldNode)> {
        let mut out = Vec::new();
        self.collect_leaves("", &mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a FieldNode)>) {
        for (k, n) in &self.fields {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match n {
                FieldNode::Nested(sub) => sub.collect_leaves(&path, out),
                leaf => out.push((path, leaf)),
            }
        }
    }
}

/// A parsed `$project`.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    exclusion: bool,
    tree: FieldTree,
}

impl Project {
    /// Whether this is an exclusion projection (else an inclusion, with or
    /// without computed fields).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The rules (for an inclusion, `_id` is there explicitly, included
    /// unless the stage excluded it).
    pub fn tree(&self) -> &FieldTree {
        &self.tree
    }
}

impl FieldTree {
    /// Adds the top-level fields of the input document this tree reads to
    /// `out`: each field it names, and what its computed fields' expressions
    /// read (they are evaluated against the input document); `false` when
    /// an expression reads the whole document.
    pub(crate) fn add_top_level<'a>(&'a self, out: &mut Vec<&'a str>) -> bool {
        for (name, _) in &self.fields {
            if !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
        self.add_expr_fields(out)
    }

    fn add_expr_fields<'a>(&'a self, out: &mut Vec<&'a str>) -> bool {
        self.fields.iter().all(|(_, node)| match node {
            FieldNode::Set(e) => e.add_top_level(out),
            FieldNode::Nested(t) => t.add_expr_fields(out),
            FieldNode::Include | FieldNode::Exclude => true,
        })
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, PipelineError> {
    Err(PipelineError::Invalid(msg.into()))
}

fn key_segments(key: &str, what: &str) -> Result<Vec<String>, PipelineError> {
    Ok(parse_path(key, what)?.segments().to_vec())
}

/// Parses a `$project` specification.
pub(crate) fn parse_project(spec: &Value, scope: &Scope) -> Result<Project, PipelineError> {
    let Some(obj) = spec.as_object() else {
        return invalid("$project takes an object");
    };
    if obj.is_empty() {
        return invalid("$project requires at least one output field");
    }
    let mut tree = FieldTree::default();
    for (k, v) in obj {
        let segs = key_segments(k, "$project")?;
        project_entry(&mut tree, segs, v, scope)?;
    }
    // Which kind of projection is it?
    let leaves = tree.leaves();
    let is_id = |p: &str| p == "_id";
    let first_exclusion = leaves
        .iter()
        .find(|(p, n)| !is_id(p) && matches!(n, FieldNode::Exclude));
    let first_inclusion = leaves
        .iter()
        .find(|(p, n)| !is_id(p) && matches!(n, FieldNode::Include));
    let first_computed = leaves.iter().find(|(_, n)| matches!(n, FieldNode::Set(_)));
    let id = tree.get("_id");
    let exclusion = match (first_exclusion, first_inclusion, first_computed) {
        (Some((p, _)), Some(_), _) => {
            return invalid(format!(
                "$project: cannot do exclusion on field {p} in an inclusion projection"
            ));
        }
        (Some((p, _)), None, Some((c, _))) => {
            return invalid(format!(
                "$project: cannot use an expression (field {c}) in an exclusion projection (field {p} is excluded)"
            ));
        }
        (Some(_), None, None) => true,
        (None, _, Some(_)) | (None, Some(_), None) => false,
        (None, None, None) => matches!(id, Some(FieldNode::Exclude)),
    };
    if exclusion && matches!(id, Some(FieldNode::Include)) {
        return invalid("$project: cannot do inclusion on field _id in an exclusion projection");
    }
    if !exclusion && id.is_none() {
        // `_id` is kept by default; it comes in the input's order anyway.
        tree.push("_id".into(), FieldNode::Include);
    }
    Ok(Project { exclusion, tree })
}

fn project_entry(
    tree: &mut FieldTree,
    segs: Vec<String>,
    v: &Value,
    scope: &Scope,
) -> Result<(), PipelineError> {
    let node = match v {
        Value::Bool(b) => {
            if *b {
                FieldNode::Include
            } else {
                FieldNode::Exclude
            }
        }
        Value::Number(n) => {
            if n.as_f64().is_some_and(|f| f == 0.0) {
                FieldNode::Exclude
            } else {
                FieldNode::Include
            }
        }
        Value::Object(m) if m.is_empty() => {
            return invalid(format!(
                "$project: an empty sub-projection is not a valid value (at {})",
                segs.join(".")
            ));
        }
        Value::Object(m) if !m.keys().next().is_some_and(|k| k.starts_with('$')) => {
            for (k, sub) in m {
                if k.contains('.') {
                    return invalid(format!(
                        "$project: field name \"{k}\" inside a sub-object may not contain '.'"
                    ));
                }
                let mut path = segs.clone();
                path.extend(key_segments(k, "$project")?);
                project_entry(tree, path, sub, scope)?;
            }
            return Ok(());
        }
        other => FieldNode::Set(Expr::parse(other, 0, scope)?),
    };
    tree.insert(&segs, node)
}

/// Parses an `$addFields` (or `$set`) specification.
pub(crate) fn parse_add_fields(
    stage: &str,
    spec: &Value,
    scope: &Scope,
) -> Result<FieldTree, PipelineError> {
    let Some(obj) = spec.as_object() else {
        return invalid(format!("{stage} takes an object"));
    };
    if obj.is_empty() {
        return invalid(format!("{stage} requires at least one field"));
    }
    let mut tree = FieldTree::default();
    for (k, v) in obj {
        let segs = key_segments(k, stage)?;
        add_fields_entry(stage, &mut tree, segs, v, scope)?;
    }
    Ok(tree)
}

fn add_fields_entry(
    stage: &str,
    tree: &mut FieldTree,
    segs: Vec<String>,
    v: &Value,
    scope: &Scope,
) -> Result<(), PipelineError> {
    match v {
        Value::Object(m)
            if !m.is_empty() && !m.keys().next().is_some_and(|k| k.starts_with('$')) =>
        {
            for (k, sub) in m {
                if k.contains('.') {
                    return invalid(format!(
                        "{stage}: field name \"{k}\" inside a sub-object may not contain '.'"
                    ));
                }
                let mut path = segs.clone();
                path.extend(key_segments(k, stage)?);
                add_fields_entry(stage, tree, path, sub, scope)?;
            }
            Ok(())
        }
        Value::Object(m) if m.is_empty() => tree.insert(
            &segs,
            FieldNode::Set(Expr::Literal(Value::Object(Map::new()))),
        ),
        other => tree.insert(&segs, FieldNode::Set(Expr::parse(other, 0, scope)?)),
    }
}

/// Parses an `$unset` specification: a path or a non-empty array of paths.
pub(crate) fn parse_unset(spec: &Value) -> Result<FieldTree, PipelineError> {
    let paths: Vec<&Value> = match spec {
        Value::String(_) => vec![spec],
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        _ => return invalid("$unset takes a field path or a non-empty array of field paths"),
    };
    let mut tree = FieldTree::default();
    for p in paths {
        let Some(s) = p.as_str() else {
            return invalid("$unset takes a field path or a non-empty array of field paths");
        };
        tree.insert(&key_segments(s, "$unset")?, FieldNode::Exclude)?;
    }
    Ok(tree)
}

impl Project {
    /// Applies the projection to one document.
    pub(crate) fn apply(
        &self,
        doc: &Map<String, Value>,
        env: Env<'_>,
        budget: &mut Budget,
    ) -> Result<Map<String, Value>, PipelineError> {
        if self.exclusion {
            return Ok(exclude(doc, &self.tree));
        }
        let mut out = include(doc, &self.tree);
        apply_expressions(&mut out, &self.tree, env, budget)?;
        Ok(out)
    }
}

/// `$addFields`: the input with the tree's computed fields set.
pub(crate) fn add_fields(
    doc: &Map<String, Value>,
    tree: &FieldTree,
    env: Env<'_>,
    budget: &mut Budget,
) -> Result<Map<String, Value>, PipelineError> {
    let mut out = doc.clone();
    apply_expressions(&mut out, tree, env, budget)?;
    Ok(out)
}

/// The included fields of `doc`, in its order (no computed fields yet).
fn include(doc: &Map<String, Value>, tree: &FieldTree) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in doc {
        match tree.get(k) {
            Some(FieldNode::Include) => {
                out.insert(k.clone(), v.clone());
            }
            Some(FieldNode::Nested(sub)) => {
                if let Some(p) = include_value(v, sub) {
                    out.insert(k.clone(), p);
                }
            }
            _ => {}
        }
    }
    out
}

fn include_value(v: &Value, tree: &FieldTree) -> Option<Value> {
    match v {
        Value::Object(m) => Some(Value::Object(include(m, tree))),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|x| include_value(x, tree))
                .collect(),
        )),
        _ => None,
    }
}

/// Sets the tree's computed fields in `out`, in the order written.
fn apply_expressions(
    out: &mut Map<String, Value>,
    tree: &FieldTree,
    env: Env<'_>,
    budget: &mut Budget,
) -> Result<(), PipelineError> {
    for (k, node) in &tree.fields {
        match node {
            FieldNode::Set(e) => match e.eval(env, budget)? {
                Some(v) => {
                    budget.charge_value(&v)?;
                    out.insert(k.clone(), v.into_owned());
                }
                None => {
                    out.shift_remove(k);
                }
            },
            FieldNode::Nested(sub) if sub.has_computed() => {
                let current = out.get_mut(k).map(std::mem::take);
                if let Some(v) = expressions_on_value(current, sub, env, budget)? {
                    out.insert(k.clone(), v);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn expressions_on_value(
    v: Option<Value>,
    tree: &FieldTree,
    env: Env<'_>,
    budget: &mut Budget,
) -> Result<Option<Value>, PipelineError> {
    match v {
        Some(Value::Object(mut m)) => {
            apply_expressions(&mut m, tree, env, budget)?;
            Ok(Some(Value::Object(m)))
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(
                    expressions_on_value(Some(item), tree, env, budget)?.unwrap_or(Value::Null),
                );
            }
            Ok(Some(Value::Array(out)))
        }
        other => {
            if tree.has_computed() {
                let mut m = Map::new();
                apply_expressions(&mut m, tree, env, budget)?;
                Ok(Some(Value::Object(m)))
            } else {
                Ok(other)
            }
        }
    }
}

/// `doc` without the excluded fields.
pub(crate) fn exclude(doc: &Map<String, Value>, tree: &FieldTree) -> Map<String, Value> {
    let mut out = Map::with_capacity(doc.len());
    for (k, v) in doc {
        match tree.get(k) {
            Some(FieldNode::Exclude) => {}
            Some(FieldNode::Nested(sub)) => {
                out.insert(k.clone(), exclude_value(v, sub));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn exclude_value(v: &Value, tree: &FieldTree) -> Value {
    match v {
        Value::Object(m) => Value::Object(exclude(m, tree)),
        Value::Array(items) => Value::Array(items.iter().map(|x| exclude_value(x, tree)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn project(spec: Value, doc: Value) -> Result<String, PipelineError> {
        let p = parse_project(&spec, &Scope::default())?;
        let m = doc.as_object().expect("object");
        let mut b = Budget::new();
        let out = p.apply(
            m,
            Env {
                root: &doc,
                vars: &[],
            },
            &mut b,
        )?;
        Ok(serde_json::to_string(&out).expect("json"))
    }

    fn add(spec: Value, doc: Value) -> Result<String, PipelineError> {
        let t = parse_add_fields("$addFields", &spec, &Scope::default())?;
        let m = doc.as_object().expect("object");
        let mut b = Budget::new();
        let out = add_fields(
            m,
            &t,
            Env {
                root: &doc,
                vars: &[],
            },
            &mut b,
        )?;
        Ok(serde_json::to_string(&out).expect("json"))
    }

    fn refused(spec: Value, needle: &str) {
        let e = parse_project(&spec, &Scope::default()).expect_err("refused");
        assert!(e.to_string().contains(needle), "{spec}: {e}");
    }

    #[test]
    fn project_rules_on_mixing() {
        refused(json!({"a": 1, "b": 0}), "exclusion on field b");
        refused(json!({"a": 0, "b": "$x"}), "expression");
        refused(json!({"a": 0, "_id": 1}), "inclusion on field _id");
        refused(json!({}), "at least one");
        refused(json!({"a": {}}), "empty sub-projection");
        refused(json!({"a": 1, "a.b": 1}), "path collision at a.b");
        refused(json!({"a.b": 1, "a": {"b": 0}}), "path collision");
        refused(json!({"$a": 1}), "'$'");
        refused(json!({"a": {"b.c": 1}}), "'.'");
        assert!(parse_project(&json!({"_id": 0, "a": 1}), &Scope::default()).is_ok());
        assert!(parse_project(&json!({"_id": 0, "a": 0}), &Scope::default()).is_ok());
        assert!(
            parse_project(&json!({"_id": 0}), &Scope::default()).is_ok_and(|p| p.is_exclusion())
        );
        assert!(
            parse_project(&json!({"_id": 1}), &Scope::default()).is_ok_and(|p| !p.is_exclusion())
        );
    }

    #[test]
    fn inclusion_keeps_input_order_then_computed_fields() {
        let doc = json!({"_id": 1, "b": 2, "a": {"x": 1, "y": 2}, "c": [{"x": 1, "z": 0}, 5, [{"x": 2}]]});
        assert_eq!(
            project(
                json!({"c.x": 1, "n": {"$add": ["$b", 1]}, "a.y": true, "b": 1}),
                doc.clone()
            )
            .expect("ok"),
            r#"{"_id":1,"b":2,"a":{"y":2},"c":[{"x":1},[{"x":2}]],"n":3}"#
        );
        assert_eq!(
            project(
                json!({"_id": 0, "m": "$missing", "s": "lit", "a.z": "$b"}),
                doc.clone()
            )
            .expect("ok"),
            r#"{"a":{"z":2},"s":"lit"}"#
        );
        assert_eq!(
            project(json!({"b": {"q": "$b"}}), doc.clone()).expect("ok"),
            r#"{"_id":1,"b":{"q":2}}"#
        );
        assert_eq!(
            project(json!({"a": 0, "c.x": 0}), doc).expect("ok"),
            r#"{"_id":1,"b":2,"c":[{"z":0},5,[{}]]}"#
        );
    }

    #[test]
    fn add_fields_sets_in_place_and_through_arrays() {
        let doc = json!({"_id": 1, "a": 1, "arr": [{"x": 1}, 2], "o": {"p": 1}});
        assert_eq!(
            add(json!({"a": "$missing", "z": 1, "_id": "new"}), doc.clone()).expect("ok"),
            r#"{"_id":"new","arr":[{"x":1},2],"o":{"p":1},"z":1}"#
        );
        assert_eq!(
            add(
                json!({"arr.y": 5, "o": {"q": "$a"}, "a.b": true}),
                doc.clone()
            )
            .expect("ok"),
            r#"{"_id":1,"a":{"b":true},"arr":[{"x":1,"y":5},{"y":5}],"o":{"p":1,"q":1}}"#
        );
        assert_eq!(
            add(json!({"e": {}}), doc).expect("ok"),
            r#"{"_id":1,"a":1,"arr":[{"x":1},2],"o":{"p":1},"e":{}}"#
        );
        assert!(add(json!({"a": 1, "a.b": 2}), json!({})).is_err());
        assert!(add(json!({}), json!({})).is_err());
    }

    #[test]
    fn unset_is_an_exclusion() {
        let t = parse_unset(&json!(["a", "o.p"])).expect("ok");
        let doc = json!({"a": 1, "o": {"p": 1, "q": 2}, "z": 0});
        let out = exclude(doc.as_object().expect("object"), &t);
        assert_eq!(
            serde_json::to_string(&out).expect("json"),
            r#"{"o":{"q":2},"z":0}"#
        );
        assert!(parse_unset(&json!([])).is_err());
        assert!(parse_unset(&json!([1])).is_err());
        assert!(parse_unset(&json!("$a")).is_err());
    }
}
