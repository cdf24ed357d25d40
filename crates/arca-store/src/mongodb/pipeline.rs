//! A parsed, scoped `Pipeline` -> the aggregation pipeline the MongoDB
//! engine sends (pure: no I/O).
//!
//! The pipeline sent is, in order:
//!
//! 1. `{$match: {$and: [{_tenant: T}, <read filter>, <leading user
//!    $match stages>]}}` against the stored layout (`filter::filter_to_bson`,
//!    so `_id` is `_id.i` and an index leading with `_tenant` serves it);
//! 2. `{$sort: {_id.i: 1}}`: documents enter the user's stages in `_id`
//!    order on every engine (served by the `{_tenant, _id.i}` index);
//! 3. the client view: `{$set: {_id: "$_id.i"}}` then `{$unset: [internal
//!    fields]}` (every top-level name of the stored layout that clients do
//!    not see, from `value::SYSTEM_FIELDS`: today `_tenant`), so that no
//!    later stage can read, group on, project or return them, and a user
//!    `$match` on `_tenant` finds nothing (the field is not there);
//! 4. the user's other stages, rendered from the typed AST (never the
//!    client's JSON), so only allow-listed stages, operators and variables
//!    can reach the server; every literal is sent as `{$literal: ...}`;
//! 5. `{$limit: max_results + 1}`, so the engine sees when there are too
//!    many results without reading them all.
//!
//! Every `$lookup`, at any depth, becomes `{$lookup: {from, [localField,
//! foreignField,] [let,] pipeline: [1, 2, 3 for its target], as}}`: its own
//! pipeline starts with the same tenant and the target's read filter (from
//! `lookup_filter`), then the same client view. With `localField`/
//! `foreignField` (MongoDB 5's concise form), the server matches the
//! equality on the stored documents before that pipeline; `foreignField` is
//! therefore mapped onto the stored layout as filters are (`_id` ->
//! `_id.i`; `_tenant` and other `_` names -> a path under `_id.i` that never
//! exists, i.e. missing, as for the evaluator). The tenant `$match` follows
//! at once, so another tenant's documents never come out, and the tenant
//! cannot be probed through the join.
//!
//! Exactness: the reference evaluator decides what a pipeline means. A
//! filter whose translation is not exact (see `filter.rs`: regexes, numeric
//! path segments, null through arrays, `$type` int/long on computed values,
//! ...) cannot be corrected on the server in the middle of a pipeline, so
//! it is refused with `PipelineBsonError::Inexact` naming where it is (the
//! read filter of the top or of a `$lookup` target, or a user `$match`);
//! so is a `$lookup` path with a numeric segment. The engine may then fall
//! back to running the evaluator itself. Known differences that cannot be
//! seen in the pipeline (they depend on the data) are listed in
//! `docs/aggregate-differential.json` where the table shows them.

use arca_core::Scope;
use arca_core::pipeline::{AccOp, Expr, FieldNode, FieldTree, Lookup, Pipeline, Stage, Var};
use arca_core::query::{FieldPath, Filter};
use mongodb::bson::{Bson, Document, doc};

use super::filter::{filter_to_bson, filter_to_bson_client_view, numeric_segment, top_path};
use super::value::{SYSTEM_FIELDS, json_to_bson};

/// Why a pipeline cannot be sent as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineBsonError {
    /// A filter (read filter or user `$match`) or `$lookup` path whose
    /// server semantics differ from the evaluator's; names where.
    #[error("cannot run exactly on the MongoDB server: {0}")]
    Inexact(String),
    /// `lookup_filter` knows no collection of that name.
    #[error("$lookup into unknown collection {0}")]
    UnknownCollection(String),
    /// A literal BSON cannot hold (an integer beyond 64 bits, a NUL in a
    /// field name).
    #[error("{0}")]
    Value(String),
}

/// The system fields clients see (the others are internal).
const CLIENT_SYSTEM_FIELDS: &[&str] = &["_id", "_rev", "_created_at", "_updated_at", "_owner"];

/// The top-level names of the stored layout that clients never see.
pub fn internal_fields() -> Vec<&'static str> {
    SYSTEM_FIELDS
        .iter()
        .copied()
        .filter(|f| !CLIENT_SYSTEM_FIELDS.contains(f))
        .collect()
}

/// The pipeline to send for `pipeline` run by a caller with `scope`; each
/// `$lookup` target's read filter (claims substituted) comes from
/// `lookup_filter`, and the tenant is always the scope's.
pub fn pipeline_to_bson(
    pipeline: &Pipeline,
    scope: &Scope,
    lookup_filter: &dyn Fn(&str) -> Option<Filter>,
    max_results: u64,
) -> Result<Vec<Document>, PipelineBsonError> {
    let cx = Cx {
        tenant: scope.tenant_key(),
        lookup_filter,
    };
    let mut out = cx.scoped(pipeline.stages(), scope.filter(), "the pipeline")?;
    out.push(doc! {"$limit": count(max_results.saturating_add(1))});
    Ok(out)
}

struct Cx<'a> {
    tenant: &'a str,
    lookup_filter: &'a dyn Fn(&str) -> Option<Filter>,
}

fn exact_filter(
    filter: &Filter,
    client_view: bool,
    at: &str,
) -> Result<Document, PipelineBsonError> {
    let t = if client_view {
        filter_to_bson_client_view(filter)
    } else {
        filter_to_bson(filter)
    };
    if t.exact {
        Ok(t.filter)
    } else {
        Err(PipelineBsonError::Inexact(format!(
            "{at}: this filter's meaning on the MongoDB server differs from Arca's in some cases"
        )))
    }
}

fn value(v: &serde_json::Value) -> Result<Bson, PipelineBsonError> {
    json_to_bson(v).map_err(|e| PipelineBsonError::Value(e.to_string()))
}

impl Cx<'_> {
    /// The stages of a (top or `$lookup`) pipeline over a collection whose
    /// read filter is `read`: the scoped `$match`, the client view, then
    /// the rest.
    fn scoped(
        &self,
        stages: &[Stage],
        read: &Filter,
        at: &str,
    ) -> Result<Vec<Document>, PipelineBsonError> {
        let mut parts = vec![doc! {"_tenant": self.tenant}];
        let scope = exact_filter(read, false, &format!("{at}: the read filter"))?;
        if !scope.is_empty() {
            parts.push(scope);
        }
        let mut rest = stages;
        let mut index = 0;
        while let Some((Stage::Match(f), tail)) = rest.split_first() {
            let m = exact_filter(f, false, &format!("{at}, stage {index} ($match)"))?;
            if !m.is_empty() {
                parts.push(m);
            }
            rest = tail;
            index += 1;
        }
        let first = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            doc! {"$and": parts}
        };
        // The documents enter in `_id` order, as on the embedded engine
        // (the arrival order the evaluator keeps where MongoDB leaves one
        // unspecified); the `{_tenant, _id.i}` index gives it without a sort.
        let mut out = vec![
            doc! {"$match": first},
            doc! {"$sort": {"_id.i": 1}},
            doc! {"$set": {"_id": "$_id.i"}},
        ];
        let internal = internal_fields();
        if !internal.is_empty() {
            out.push(doc! {"$unset": internal});
        }
        for (i, s) in rest.iter().enumerate() {
            out.push(self.stage(s, &format!("{at}, stage {} ({})", index + i, s.name()))?);
        }
        Ok(out)
    }

    fn stage(&self, s: &Stage, at: &str) -> Result<Document, PipelineBsonError> {
        Ok(match s {
            Stage::Match(f) => doc! {"$match": exact_filter(f, true, at)?},
            Stage::Project(p) => doc! {"$project": tree(p.tree())?},
            Stage::AddFields(t) => doc! {"$addFields": tree(t)?},
            Stage::Unset(t) => {
                let paths: Vec<String> = t.leaves().into_iter().map(|(p, _)| p).collect();
                doc! {"$unset": paths}
            }
            Stage::Group(g) => {
                let mut d = Document::new();
                d.insert("_id", expr(&g.id)?);
                for a in &g.accumulators {
                    let arg = if a.op == AccOp::Count {
                        Bson::Document(Document::new())
                    } else {
                        expr(&a.arg)?
                    };
                    let mut acc = Document::new();
                    acc.insert(a.op.name(), arg);
                    d.insert(a.field.clone(), acc);
                }
                doc! {"$group": d}
            }
            Stage::Sort(keys) => {
                let mut d = Document::new();
                for (path, desc) in keys {
                    d.insert(path.as_str(), if *desc { -1 } else { 1 });
                }
                doc! {"$sort": d}
            }
            Stage::Limit(n) => doc! {"$limit": count(*n)},
            Stage::Skip(n) => doc! {"$skip": count(*n)},
            Stage::Unwind(u) => {
                let mut d = doc! {"path": format!("${}", u.path.as_str())};
                if let Some(i) = &u.include_array_index {
                    d.insert("includeArrayIndex", i.as_str());
                }
                d.insert(
                    "preserveNullAndEmptyArrays",
                    u.preserve_null_and_empty_arrays,
                );
                doc! {"$unwind": d}
            }
            Stage::Count(name) => doc! {"$count": name.as_str()},
            Stage::Lookup(l) => doc! {"$lookup": self.lookup(l, at)?},
        })
    }

    fn lookup(&self, l: &Lookup, at: &str) -> Result<Document, PipelineBsonError> {
        let from = l.from.as_str();
        let read = (self.lookup_filter)(from)
            .ok_or_else(|| PipelineBsonError::UnknownCollection(from.to_owned()))?;
        let inner: &[Stage] = l.pipeline.as_ref().map_or(&[], |p| p.stages());
        let pipeline = self.scoped(inner, &read, &format!("{at} into {from}"))?;
        let mut d = doc! {"from": from};
        if let Some(j) = &l.join {
            for (p, what) in [
                (&j.local_field, "localField"),
                (&j.foreign_field, "foreignField"),
            ] {
                if has_numeric_segment(p) {
                    return Err(PipelineBsonError::Inexact(format!(
                        "{at}: {what} \"{}\" has a numeric segment",
                        p.as_str()
                    )));
                }
            }
            d.insert("localField", j.local_field.as_str());
            d.insert("foreignField", top_path(&j.foreign_field));
        }
        if !l.lets.is_empty() {
            let mut lets = Document::new();
            for (name, e) in &l.lets {
                lets.insert(name.clone(), expr(e)?);
            }
            d.insert("let", lets);
        }
        d.insert("pipeline", pipeline);
        d.insert("as", l.as_field.as_str());
        Ok(d)
    }
}

/// A `$limit`/`$skip` count: Int32 when it fits (as JSON integers are
/// stored; the stand-in refuses an Int64 there), else Int64, saturating.
fn count(n: u64) -> Bson {
    match i32::try_from(n) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

fn has_numeric_segment(p: &FieldPath) -> bool {
    p.segments().iter().any(|s| numeric_segment(s))
}

/// A field tree as a `$project`/`$addFields` document of dotted paths
/// (`{"a.b": ...}` means the same as `{a: {b: ...}}` to the server).
fn tree(t: &FieldTree) -> Result<Document, PipelineBsonError> {
    let mut d = Document::new();
    for (path, node) in t.leaves() {
        let v = match node {
            FieldNode::Include => Bson::Int32(1),
            FieldNode::Exclude => Bson::Int32(0),
            FieldNode::Set(e) => expr(e)?,
            // `leaves` never yields a nested node.
            FieldNode::Nested(_) => continue,
        };
        d.insert(path, v);
    }
    Ok(d)
}

/// An expression as BSON.
fn expr(e: &Expr) -> Result<Bson, PipelineBsonError> {
    Ok(match e {
        Expr::Literal(v) => Bson::Document(doc! {"$literal": value(v)?}),
        Expr::Path(p) => Bson::String(format!("${}", p.as_str())),
        Expr::Var(var, segs) => {
            let mut s = match var {
                Var::Root => "$$ROOT".to_owned(),
                Var::Current => "$$CURRENT".to_owned(),
                Var::User(name) => format!("$${name}"),
            };
            for seg in segs {
                s.push('.');
                s.push_str(seg);
            }
            Bson::String(s)
        }
        Expr::Array(items) => Bson::Array(items.iter().map(expr).collect::<Result<_, _>>()?),
        Expr::Object(fields) => {
            let mut d = Document::new();
            for (k, x) in fields {
                d.insert(k.clone(), expr(x)?);
            }
            Bson::Document(d)
        }
        Expr::Op(op, args) => {
            let args: Vec<Bson> = args.iter().map(expr).collect::<Result<_, _>>()?;
            let mut d = Document::new();
            d.insert(op.name(), args);
            Bson::Document(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_core::{DocId, Document as ArcaDocument, SystemFields, Tenant};
    use serde_json::json;

    fn scope(tenant: &str, filter: serde_json::Value) -> Scope {
        let f = Filter::parse(&filter).expect("filter");
        // Tests stand in for the gateway, which makes scopes after the
        // access check.
        #[allow(clippy::disallowed_methods)]
        Scope::authorized(Tenant::parse(tenant).expect("tenant"), f)
    }

    fn all(_: &str) -> Option<Filter> {
        Some(Filter::all())
    }

    fn translate(p: serde_json::Value) -> Result<Vec<Document>, PipelineBsonError> {
        let p = Pipeline::parse(&p).expect("pipeline");
        pipeline_to_bson(&p, &scope("t1", json!({})), &all, 10)
    }

    #[test]
    fn the_scope_and_the_client_view_come_first_and_the_limit_last() {
        let p =
            Pipeline::parse(&json!([{"$match": {"_id": "a"}}, {"$match": {"n": 1}}, {"$skip": 1}]))
                .expect("pipeline");
        let out =
            pipeline_to_bson(&p, &scope("t1", json!({"_owner": "u"})), &all, 10).expect("bson");
        assert_eq!(
            out,
            vec![
                doc! {"$match": {"$and": [
                    {"_tenant": "t1"},
                    {"_owner": {"$eq": "u"}},
                    {"_id.i": {"$eq": "a"}},
                    {"n": {"$eq": 1}},
                ]}},
                doc! {"$sort": {"_id.i": 1}},
                doc! {"$set": {"_id": "$_id.i"}},
                doc! {"$unset": ["_tenant"]},
                doc! {"$skip": 1},
                doc! {"$limit": 11},
            ]
        );
    }

    #[test]
    fn the_internal_fields_are_every_stored_name_clients_do_not_see() {
        let doc = ArcaDocument {
            system: SystemFields {
                id: DocId::parse("a").expect("id"),
                rev: 1,
                created_at: "c".into(),
                updated_at: "u".into(),
                owner: "o".into(),
            },
            body: serde_json::Map::new(),
        };
        let stored =
            super::super::value::to_stored(&doc, &Tenant::parse("t").expect("t")).expect("stored");
        let hidden: Vec<&str> = stored
            .keys()
            .map(String::as_str)
            .filter(|k| !CLIENT_SYSTEM_FIELDS.contains(k))
            .collect();
        assert_eq!(hidden, internal_fields());
        assert!(!internal_fields().is_empty());
    }

    #[test]
    fn every_lookup_gets_the_tenant_and_its_targets_read_filter_at_any_depth() {
        let p = Pipeline::parse(&json!([
            {"$lookup": {"from": "b", "localField": "x", "foreignField": "_id", "let": {"v": "$y"},
                "pipeline": [
                    {"$match": {"k": 1}},
                    {"$lookup": {"from": "c", "pipeline": [{"$set": {"w": "$$v"}}], "as": "cs"}}
                ], "as": "bs"}}
        ]))
        .expect("pipeline");
        let read = |name: &str| match name {
            "b" => Some(Filter::parse(&json!({"team": "x"})).expect("f")),
            "c" => Some(Filter::parse(&json!({"_owner": "me"})).expect("f")),
            _ => None,
        };
        let out = pipeline_to_bson(&p, &scope("t9", json!({})), &read, 5).expect("bson");
        let client_view = [
            doc! {"$sort": {"_id.i": 1}},
            doc! {"$set": {"_id": "$_id.i"}},
            doc! {"$unset": ["_tenant"]},
        ];
        let c = doc! {"$lookup": {
            "from": "c",
            "pipeline": [
                {"$match": {"$and": [{"_tenant": "t9"}, {"_owner": {"$eq": "me"}}]}},
                client_view[0].clone(), client_view[1].clone(), client_view[2].clone(),
                {"$addFields": {"w": "$$v"}},
            ],
            "as": "cs",
        }};
        let b = doc! {"$lookup": {
            "from": "b",
            "localField": "x",
            "foreignField": "_id.i",
            "let": {"v": "$y"},
            "pipeline": [
                {"$match": {"$and": [{"_tenant": "t9"}, {"team": {"$eq": "x"}}, {"k": {"$eq": 1}}]}},
                client_view[0].clone(), client_view[1].clone(), client_view[2].clone(),
                c,
            ],
            "as": "bs",
        }};
        assert_eq!(
            out,
            vec![
                doc! {"$match": {"_tenant": "t9"}},
                client_view[0].clone(),
                client_view[1].clone(),
                client_view[2].clone(),
                b,
                doc! {"$limit": 6},
            ]
        );
        let none = |_: &str| None;
        assert_eq!(
            pipeline_to_bson(&p, &scope("t9", json!({})), &none, 5),
            Err(PipelineBsonError::UnknownCollection("b".into()))
        );
    }

    #[test]
    fn a_join_on_the_tenant_field_reaches_nothing_internal() {
        let out = translate(json!([{"$lookup": {"from": "b", "localField": "t", "foreignField": "_tenant", "as": "j"}}]))
            .expect("bson");
        let lookup = out[4].get_document("$lookup").expect("lookup");
        assert_eq!(lookup.get_str("foreignField").ok(), Some("_id.i._tenant"));
    }

    #[test]
    fn stages_render_from_the_ast_with_literals_marked() {
        let out = translate(json!([
            {"$project": {"a": 1, "b.c": "$x", "n": {"$literal": 5.5}, "t": 5.5, "s": "lit"}},
            {"$addFields": {"o": {"p": {"$add": ["$a", 1]}}}},
            {"$unset": ["a", "o.q"]},
            {"$group": {"_id": {"k": "$b"}, "n": {"$count": {}}, "s": {"$sum": "$$ROOT.v"}}},
            {"$sort": {"_id.k": -1}},
            {"$limit": 18446744073709551615_u64},
            {"$unwind": {"path": "$a.b", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true}},
            {"$count": "n"},
            {"$match": {"_id": 3}}
        ]))
        .expect("bson");
        assert_eq!(
            &out[4..],
            &[
                doc! {"$project": {"a": 1, "b.c": "$x", "n": {"$literal": 5.5}, "t": 1, "s": {"$literal": "lit"}, "_id": 1}},
                doc! {"$addFields": {"o.p": {"$add": ["$a", {"$literal": 1}]}}},
                doc! {"$unset": ["a", "o.q"]},
                doc! {"$group": {"_id": {"k": "$b"}, "n": {"$count": {}}, "s": {"$sum": "$$ROOT.v"}}},
                doc! {"$sort": {"_id.k": -1}},
                doc! {"$limit": i64::MAX},
                doc! {"$unwind": {"path": "$a.b", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true}},
                doc! {"$count": "n"},
                doc! {"$match": {"_id": {"$eq": 3}}},
                doc! {"$limit": 11},
            ]
        );
    }

    #[test]
    fn inexact_filters_are_refused_naming_where() {
        let e = translate(json!([{"$match": {"name": {"$regex": "^a"}}}])).expect_err("regex");
        assert!(e.to_string().contains("stage 0 ($match)"), "{e}");
        let e = translate(json!([{"$skip": 0}, {"$match": {"n": {"$type": "int"}}}]))
            .expect_err("type");
        assert!(e.to_string().contains("stage 1 ($match)"), "{e}");
        let p = Pipeline::parse(&json!([{"$lookup": {"from": "b", "localField": "a.0", "foreignField": "x", "as": "j"}}]))
            .expect("pipeline");
        let e = pipeline_to_bson(&p, &scope("t", json!({})), &all, 1).expect_err("numeric");
        assert!(e.to_string().contains("localField"), "{e}");
        let inexact = |_: &str| Some(Filter::parse(&json!({"name": {"$regex": "x"}})).expect("f"));
        let p = Pipeline::parse(&json!([{"$lookup": {"from": "b", "pipeline": [], "as": "j"}}]))
            .expect("p");
        let e = pipeline_to_bson(&p, &scope("t", json!({})), &inexact, 1).expect_err("read filter");
        assert!(e.to_string().contains("into b: the read filter"), "{e}");
        let p = Pipeline::parse(&json!([])).expect("p");
        let e = pipeline_to_bson(&p, &scope("t", json!({"a": {"$regex": "x"}})), &all, 1)
            .expect_err("scope");
        assert!(
            e.to_string().contains("the pipeline: the read filter"),
            "{e}"
        );
    }
}
