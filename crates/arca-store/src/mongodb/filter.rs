//! `Filter` -> a MongoDB filter document, plus sort and projection
//! documents, for the stored layout of `value.rs`.
//!
//! The reference evaluator (`arca_core::query::eval`) defines what a filter
//! means. MongoDB matches the same set for most filters, but not all: the
//! translation therefore promises only that the server returns a SUPERSET
//! of the evaluator's matches, and says with `exact` when the two sets are
//! known to be equal (the engine runs the evaluator over every candidate
//! otherwise).
//!
//! How: every piece is translated to a pair of MongoDB conditions, an
//! over-approximation (matches at least what the evaluator matches) and an
//! under-approximation (matches at most that), equal when the piece is
//! exact. `$and`/`$or` combine overs with overs and unders with unders; a
//! negation (`$nor`, `$not`, `$ne`, `$nin`) takes the NEGATED UNDER as its
//! over and the negated over as its under, so widening never narrows a
//! result. Where nothing better is known, the over is "anything" and the
//! under "nothing". The root's over is the filter sent.
//!
//! Where the server and the evaluator differ, and what the translation
//! does about it. Sources: the MongoDB manual where it speaks; otherwise
//! the server's own matcher tests (`jstests/core/match_numeric_components.js`,
//! `array_match2.js`, `null_query_semantics.js`) and matcher
//! (`src/mongo/db/matcher/expression_array.cpp`), read, not copied:
//!
//! - Numeric path segments (`tags.0`): the server does not expand an array
//!   reached by position at the end of a path (`{"a.0": 42}` does not match
//!   `{a: [[42]]}`; the evaluator does), and compares the segment with the
//!   array index as text (`"01"`, `"+1"` are no index to it, but are to the
//!   evaluator). A path with a segment of digits (or one Rust's `usize`
//!   parse accepts) is inexact: anything / nothing.
//! - Null equality through arrays (`{"a.b": null}`, also `$in` with null,
//!   `$gte`/`$lte: null`, `$all` with null): the evaluator treats an array
//!   at `a` holding no object (`[]`, `[1, 2]`, `[[...]]`) as a missing
//!   `a.b`, so null matches; the server does not match it. Inexact for
//!   paths of two or more user segments: the over adds "some proper prefix
//!   is an array", the under requires that none is.
//! - `$elemMatch` with a query (`{items: {$elemMatch: {sku: "x"}}}`): the
//!   server also tries elements that are arrays, the evaluator only
//!   objects. The server's set is a superset: inexact (the under excludes
//!   documents with an array element there). With an empty query it is
//!   exactly `{$elemMatch: {$type: "object"}}`.
//! - `$elemMatch` with operators (`{$elemMatch: {$gt: 1}}`): the server
//!   applies each operator to an element as one value; the evaluator
//!   expands an element that is itself an array (so `{$elemMatch: {$eq:
//!   3}}` matches `[[3]]` for it, not for the server). Exact only when
//!   every operator treats an array element alike on both sides (`$exists`,
//!   `$size`, `$type: "array"`, a nested exact `$elemMatch`); otherwise the
//!   over adds "an element is an array" and the under excludes it.
//! - `$regex`: arca-core compiles with Rust's `regex` crate and keeps only
//!   the compiled `Regex`, whose flags (`i m s x`) cannot be read back, so
//!   no pattern can be proven equivalent under PCRE. Never sent: the over
//!   is `{$type: "string"}` (a regex only matches strings), the under
//!   nothing.
//! - Comparisons with an array operand (`{$gt: ["a"]}`): undocumented on
//!   the server side; anything / nothing. With an object operand: the
//!   manual says embedded documents compare in BSON order, as the evaluator
//!   does, but the stand-in does not implement it; the over is `{$type:
//!   "object"}`, inexact. With `null`: `$gt`/`$lt` match nothing and
//!   `$gte`/`$lte` are equality with null, in the evaluator's own terms,
//!   so they are translated as such instead of relying on the server.
//! - `$type`: `int`/`long` follow rule 1 of `value.rs` (Int32 when it
//!   fits), matching the evaluator's `TypeName`, except on `_rev`, stored
//!   as Int64 whatever its size: `int`/`long` there are inexact. BSON-only
//!   type names (`date`, `objectId`...) never match in the evaluator and
//!   are dropped (a list of only those matches nothing).
//! - A literal the stored data cannot hold (an integer beyond i64, an
//!   object key starting with `$`, holding `.` or NUL): anything / nothing.
//! - `$size` beyond i32: no array is that long; nothing, exactly.
//!
//! Paths: a filter's top-level `_id` is the Arca id, stored at `_id.i`
//! (`_id.x` becomes `_id.i.x`, missing on both sides as `_id.i` is a
//! string); `_rev`, `_created_at`, `_updated_at`, `_owner` keep their
//! names; any other top-level name starting with `_` (`_tenant`...) is
//! missing for the evaluator (the body holds no such field) and is sent as
//! a path under `_id.i`, where nothing ever exists, so `_tenant` cannot be
//! probed and `{_tenant: {$exists: false}}` still matches every document.
//! Inside `$elemMatch` paths are relative to array elements, which are the
//! client's own objects: `_id` there is a plain member name (nested keys
//! may start with `_`) and is NOT mapped.
//!
//! Exactness is stated for documents written through the API (JSON types,
//! numbers stored by rule 1). A document written around the API with other
//! BSON types (a `NumberLong(5)`, a date) may match differently.

use arca_core::query::Sort;
use arca_core::query::filter::{Cond, ElemMatch, FieldPath, Filter, Node, TypeName};
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;

use super::value::json_to_bson;

/// A translated filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The filter to send: matches a superset of the evaluator's matches.
    pub filter: Document,
    /// Whether the server is known to match exactly the evaluator's set
    /// (then the engine may skip the evaluator and push limits down).
    pub exact: bool,
}

/// A filter document that matches no document (an empty `$in` on `_id`).
pub fn match_nothing() -> Document {
    doc! {"_id": {"$in": []}}
}

/// Translates a filter (see the module doc for the rules).
pub fn filter_to_bson(filter: &Filter) -> Translated {
    let a = node(filter.root(), true);
    Translated {
        filter: a.over.render(),
        exact: a.exact,
    }
}

thread_local! {
    /// Set while `filter_to_bson_loose` translates.
    static LOOSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn loose_brackets() -> bool {
    LOOSE.with(std::cell::Cell::get)
}

/// `filter_to_bson` for a server whose comparison operators may match
/// across type brackets (a MongoDB-compatible server that is not MongoDB,
/// such as the test stand-in): comparisons are only over-approximations,
/// so their negations widen instead of narrowing. The result is a
/// superset there too, never exact where a comparison is involved; the
/// caller checks every candidate with the evaluator. (A thread-local flag
/// rather than a parameter through every translating function: the
/// translation is synchronous and the flag is scoped to this call.)
pub fn filter_to_bson_loose(filter: &Filter) -> Translated {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            LOOSE.with(|l| l.set(self.0));
        }
    }
    let _reset = Reset(LOOSE.with(|l| l.replace(true)));
    filter_to_bson(filter)
}

thread_local! {
    /// Set while `filter_to_bson_client_view` translates.
    static CLIENT_VIEW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn client_view() -> bool {
    CLIENT_VIEW.with(std::cell::Cell::get)
}

/// `filter_to_bson` for documents in the client view rather than the
/// stored layout: a `$match` stage of an aggregation pipeline after the
/// stage that turned stored documents into what clients see (`_id` a plain
/// field, no `_tenant`), and after stages that may have computed any value.
/// So paths are sent as written (`_id` is not mapped, `_tenant` is simply
/// missing), a name starting with `_` may hold arrays like any other (null
/// equality through arrays is handled as for user fields), and `$type`
/// `int`/`long` is never exact: a computed integer's BSON kind on the
/// server (an `$add` with an Int64 operand is Int64 however small) is not
/// known to the evaluator. Same flag pattern as `filter_to_bson_loose`.
pub fn filter_to_bson_client_view(filter: &Filter) -> Translated {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CLIENT_VIEW.with(|l| l.set(self.0));
        }
    }
    let _reset = Reset(CLIENT_VIEW.with(|l| l.replace(true)));
    filter_to_bson(filter)
}

/// The sort document: each field ascending (1) or descending (-1), then
/// `_id` ascending unless the sort already names `_id`.
///
/// `_id` is sorted as the whole stored `{t, i}`: every query carries its
/// tenant, so `t` is the same in all results and the order is that of `i`,
/// the Arca id. Other paths are mapped as in filters. A path holding NUL
/// cannot name a stored field (it sorts as missing, i.e. equal, for every
/// document) and is left out.
///
/// The server sorts as the evaluator does (arrays by their smallest element
/// ascending and largest descending, type brackets) except: an empty array
/// sorts before null and missing on the server (manual, "Comparison/Sort
/// Order") but as null in the evaluator; numeric path segments (see the
/// module doc); BSON-only values. (Manual, "Comparison/Sort Order",
/// Arrays; the empty-array case is also shown in MongoDB's DOCS-2760.)
pub fn sort_to_bson(sort: &Sort) -> Document {
    let mut out = Document::new();
    for (path, desc) in sort.fields() {
        let key = if path.as_str() == "_id" {
            "_id".to_owned()
        } else if path.as_str().contains('\0') {
            continue;
        } else {
            top_path(path)
        };
        out.insert(key, if *desc { -1 } else { 1 });
    }
    if !out.contains_key("_id") {
        out.insert("_id", 1);
    }
    out
}

/// The projection document for an inclusion of `paths` (dotted, as
/// `arca_core::query::Projection::parse` accepts them, which refuses a path
/// together with its prefix, as the server does): every system field a
/// `Document` is built from, then each user path. Paths starting with `_`
/// are left out (system fields are there already; nothing else with `_`
/// is in a body), and so are paths holding NUL (no stored field has one).
pub fn projection_to_bson<'a>(paths: impl IntoIterator<Item = &'a str>) -> Document {
    let mut out = Document::new();
    for f in super::value::SYSTEM_FIELDS {
        out.insert(*f, 1);
    }
    for p in paths {
        if p.starts_with('_') || p.contains('\0') || p.is_empty() {
            continue;
        }
        out.insert(p, 1);
    }
    out
}

/// A condition as MongoDB sees it: everything, nothing, or a document.
#[derive(Debug, Clone, PartialEq)]
enum Q {
    All,
    None,
    Doc(Document),
}

impl Q {
    fn render(self) -> Document {
        match self {
            Q::All => Document::new(),
            Q::None => match_nothing(),
            Q::Doc(d) => d,
        }
    }

    fn field(path: &str, ops: Document) -> Q {
        let mut d = Document::new();
        d.insert(path, ops);
        Q::Doc(d)
    }

    /// Conjunction, flattening nested `$and`s, written as one document
    /// (`{a: {$gt: 1, $lt: 5}, b: ...}`, the same conjunction) unless two
    /// parts use the same operator on the same path or the same top-level
    /// operator (then `$and`). One document also suits the stand-in, which
    /// refuses a `$and` at the top of an `$elemMatch` query.
    fn and(parts: Vec<Q>) -> Q {
        match Q::combine(parts, "$and", Q::None, Q::All) {
            Q::Doc(d) => Q::Doc(merge_conjunction(&d).unwrap_or(d)),
            other => other,
        }
    }

    /// Disjunction, flattening nested `$or`s.
    fn or(parts: Vec<Q>) -> Q {
        Q::combine(parts, "$or", Q::All, Q::None)
    }

    /// `absorbing` wins outright; `neutral` is dropped.
    fn combine(parts: Vec<Q>, op: &str, absorbing: Q, neutral: Q) -> Q {
        let mut docs: Vec<Bson> = Vec::with_capacity(parts.len());
        for p in parts {
            match p {
                Q::Doc(d) => {
                    if d.len() == 1
                        && let Some(Bson::Array(inner)) = d.get(op)
                    {
                        for x in inner {
                            if !docs.contains(x) {
                                docs.push(x.clone());
                            }
                        }
                    } else if !docs.iter().any(|x| x.as_document() == Some(&d)) {
                        docs.push(Bson::Document(d));
                    }
                }
                q if q == absorbing => return absorbing,
                _ => {}
            }
        }
        match docs.len() {
            0 => neutral,
            1 => match docs.pop() {
                Some(Bson::Document(d)) => Q::Doc(d),
                _ => neutral,
            },
            _ => {
                let mut d = Document::new();
                d.insert(op, docs);
                Q::Doc(d)
            }
        }
    }

    /// Negation.
    fn not(self) -> Q {
        match self {
            Q::All => Q::None,
            Q::None => Q::All,
            Q::Doc(d) => Q::Doc(doc! {"$nor": [d]}),
        }
    }
}

/// `{$and: [d1, d2...]}` as one document, when no key collides.
fn merge_conjunction(d: &Document) -> Option<Document> {
    let Some(Bson::Array(parts)) = d.get("$and") else {
        return None;
    };
    if d.len() != 1 {
        return None;
    }
    let mut out = Document::new();
    for part in parts {
        for (k, v) in part.as_document()? {
            match (out.get_mut(k), v) {
                (None, _) => {
                    out.insert(k.clone(), v.clone());
                }
                (Some(Bson::Document(ops)), Bson::Document(more)) if !k.starts_with('$') => {
                    for (op, x) in more {
                        if !op.starts_with('$') || ops.contains_key(op) {
                            return None;
                        }
                        ops.insert(op.clone(), x.clone());
                    }
                }
                _ => return None,
            }
        }
    }
    Some(out)
}

/// A piece of a filter: what to send when widening (over) and when
/// narrowing (under), and whether both equal the evaluator's set.
#[derive(Debug, Clone)]
struct Approx {
    over: Q,
    under: Q,
    exact: bool,
}

impl Approx {
    fn exact(q: Q) -> Self {
        Self {
            over: q.clone(),
            under: q,
            exact: true,
        }
    }

    /// Nothing known: anything when widening, nothing when narrowing.
    fn unknown() -> Self {
        Self::over(Q::All)
    }

    /// Only a superset known.
    fn over(over: Q) -> Self {
        Self {
            over,
            under: Q::None,
            exact: false,
        }
    }

    fn and(parts: Vec<Approx>) -> Self {
        let exact = parts.iter().all(|p| p.exact);
        let (over, under) = parts.into_iter().map(|p| (p.over, p.under)).unzip();
        Self {
            over: Q::and(over),
            under: Q::and(under),
            exact,
        }
    }

    fn or(parts: Vec<Approx>) -> Self {
        let exact = parts.iter().all(|p| p.exact);
        let (over, under) = parts.into_iter().map(|p| (p.over, p.under)).unzip();
        Self {
            over: Q::or(over),
            under: Q::or(under),
            exact,
        }
    }

    /// Negation swaps the roles: the negated under is a superset.
    fn not(self) -> Self {
        Self {
            over: self.under.not(),
            under: self.over.not(),
            exact: self.exact,
        }
    }
}

/// A filter path as stored.
struct MPath {
    /// The dotted path to send.
    mongo: String,
    /// Proper prefixes where an array may sit (where null equality differs).
    array_prefixes: Vec<String>,
    /// The path is `_rev` (stored as Int64 whatever its size).
    is_rev: bool,
}

const KEPT_SYSTEM_FIELDS: &[&str] = &["_rev", "_created_at", "_updated_at", "_owner"];

/// Whether the evaluator or the server may read `seg` as an array index.
pub(crate) fn numeric_segment(seg: &str) -> bool {
    seg.parse::<usize>().is_ok() || (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
}

/// A top-level path as stored, without the numeric or NUL checks.
pub(crate) fn top_path(path: &FieldPath) -> String {
    let segs = path.segments();
    match segs.first().map(String::as_str) {
        Some("_id") => {
            let mut out = String::from("_id.i");
            for s in &segs[1..] {
                out.push('.');
                out.push_str(s);
            }
            out
        }
        Some(f) if KEPT_SYSTEM_FIELDS.contains(&f) => path.as_str().to_owned(),
        // Missing for the evaluator: a path under the string `_id.i`.
        Some(f) if f.starts_with('_') => format!("_id.i.{}", path.as_str()),
        _ => path.as_str().to_owned(),
    }
}

/// The stored path, or `None` when the path's meaning differs between the
/// evaluator and the server (numeric segments) or cannot be sent (NUL).
fn map_path(path: &FieldPath, top: bool) -> Option<MPath> {
    let segs = path.segments();
    if segs.iter().any(|s| numeric_segment(s) || s.contains('\0')) {
        return None;
    }
    let client = client_view();
    let system = top && !client && segs.first().is_some_and(|s| s.starts_with('_'));
    let mongo = if top && !client {
        top_path(path)
    } else {
        path.as_str().to_owned()
    };
    // System fields hold no arrays, and the `_id.i` paths are strings.
    let array_prefixes = if system {
        Vec::new()
    } else {
        (1..segs.len()).map(|n| segs[..n].join(".")).collect()
    };
    Some(MPath {
        mongo,
        array_prefixes,
        // In the client view any value may be a computed integer of
        // unknown BSON kind, as `_rev` always is in the stored layout.
        is_rev: (top && path.as_str() == "_rev") || client,
    })
}

/// A literal as BSON, or `None` when it cannot be compared faithfully: an
/// integer beyond i64, an object key starting with `$` (the server may read
/// an operator), holding `.` or NUL.
fn literal(v: &Value) -> Option<Bson> {
    fn plain(v: &Value) -> bool {
        match v {
            Value::Array(items) => items.iter().all(plain),
            Value::Object(m) => m
                .iter()
                .all(|(k, v)| !k.starts_with('$') && !k.contains(['.', '\0']) && plain(v)),
            _ => true,
        }
    }
    if !plain(v) {
        return None;
    }
    json_to_bson(v).ok()
}

fn node(n: &Node, top: bool) -> Approx {
    match n {
        Node::And(list) => Approx::and(list.iter().map(|c| node(c, top)).collect()),
        Node::Or(list) => Approx::or(list.iter().map(|c| node(c, top)).collect()),
        Node::Nor(list) => Approx::or(list.iter().map(|c| node(c, top)).collect()).not(),
        Node::Nothing => Approx::exact(Q::None),
        Node::Field(path, conds) => match map_path(path, top) {
            Some(p) => Approx::and(conds.iter().map(|c| cond(&p, c)).collect()),
            None => Approx::unknown(),
        },
    }
}

fn op(p: &MPath, name: &str, value: impl Into<Bson>) -> Q {
    let mut ops = Document::new();
    ops.insert(name, value.into());
    Q::field(&p.mongo, ops)
}

/// `{p: null}`: exact unless an array may sit on a proper prefix.
fn null_eq(p: &MPath) -> Approx {
    let base = op(p, "$eq", Bson::Null);
    if p.array_prefixes.is_empty() {
        return Approx::exact(base);
    }
    let arrays = p
        .array_prefixes
        .iter()
        .map(|pre| Q::field(pre, doc! {"$type": "array"}));
    let mut over = vec![base.clone()];
    over.extend(arrays.clone());
    let mut under = vec![base];
    under.extend(arrays.map(Q::not));
    Approx {
        over: Q::or(over),
        under: Q::and(under),
        exact: false,
    }
}

fn eq(p: &MPath, v: &Value) -> Approx {
    if v.is_null() {
        return null_eq(p);
    }
    match literal(v) {
        Some(b) => Approx::exact(op(p, "$eq", b)),
        None => Approx::unknown(),
    }
}

fn in_list(p: &MPath, list: &[Value]) -> Approx {
    if list.is_empty() {
        return Approx::exact(Q::None);
    }
    let Some(values) = list.iter().map(literal).collect::<Option<Vec<Bson>>>() else {
        return Approx::unknown();
    };
    let has_null = list.iter().any(Value::is_null);
    if !has_null || p.array_prefixes.is_empty() {
        return Approx::exact(op(p, "$in", values));
    }
    let rest: Vec<Bson> = values.into_iter().filter(|b| *b != Bson::Null).collect();
    let mut parts = vec![null_eq(p)];
    if !rest.is_empty() {
        parts.push(Approx::exact(op(p, "$in", rest)));
    }
    Approx::or(parts)
}

/// Rewrites an exact `{p: {$eq|$in: v}}` negation as `$ne`/`$nin` (the
/// same set per the manual, and what an index planner expects).
fn negate_simple(a: Approx, p: &MPath, from: &str, to: &str) -> Approx {
    if a.exact
        && let Q::Doc(d) = &a.over
        && let Ok(ops) = d.get_document(&p.mongo)
        && d.len() == 1
        && ops.len() == 1
        && let Some(v) = ops.get(from)
    {
        return Approx::exact(op(p, to, v.clone()));
    }
    a.not()
}

fn comparison(p: &MPath, name: &str, v: &Value) -> Approx {
    match v {
        Value::Null => match name {
            "$gte" | "$lte" => null_eq(p),
            _ => Approx::exact(Q::None),
        },
        Value::Array(_) => Approx::unknown(),
        Value::Object(_) => Approx::over(op(p, "$type", "object")),
        _ => match literal(v) {
            // On a server whose comparisons may cross type brackets (the
            // test stand-in), nothing is known about what it leaves out,
            // so a negation of it must not be trusted to narrow.
            Some(b) if loose_brackets() => Approx::over(op(p, name, b)),
            Some(b) => Approx::exact(op(p, name, b)),
            None => Approx::unknown(),
        },
    }
}

fn type_name(t: TypeName) -> Option<&'static str> {
    Some(match t {
        TypeName::Double => "double",
        TypeName::String => "string",
        TypeName::Object => "object",
        TypeName::Array => "array",
        TypeName::Bool => "bool",
        TypeName::Null => "null",
        TypeName::Int => "int",
        TypeName::Long => "long",
        TypeName::Number => "number",
        TypeName::Other => return None,
    })
}

/// The `$type` operand, or `None` when no listed type can match.
fn type_operand(types: &[TypeName]) -> Option<Bson> {
    let mut names: Vec<Bson> = Vec::new();
    for n in types.iter().filter_map(|t| type_name(*t)) {
        let b = Bson::from(n);
        if !names.contains(&b) {
            names.push(b);
        }
    }
    match names.len() {
        0 => None,
        1 => names.pop(),
        _ => Some(Bson::Array(names)),
    }
}

/// `$size` operand: arrays longer than i32 cannot exist in a 16 MiB
/// document, so a larger size matches nothing.
fn size_operand(n: u64) -> Option<i32> {
    i32::try_from(n).ok()
}

fn cond(p: &MPath, c: &Cond) -> Approx {
    match c {
        Cond::Eq(v) => eq(p, v),
        Cond::Ne(v) => negate_simple(eq(p, v), p, "$eq", "$ne"),
        Cond::Gt(v) => comparison(p, "$gt", v),
        Cond::Gte(v) => comparison(p, "$gte", v),
        Cond::Lt(v) => comparison(p, "$lt", v),
        Cond::Lte(v) => comparison(p, "$lte", v),
        Cond::In(list) => in_list(p, list),
        Cond::Nin(list) => negate_simple(in_list(p, list), p, "$in", "$nin"),
        Cond::Exists(b) => Approx::exact(op(p, "$exists", *b)),
        Cond::Type(types) => {
            if p.is_rev
                && types
                    .iter()
                    .any(|t| matches!(t, TypeName::Int | TypeName::Long))
            {
                return Approx::unknown();
            }
            match type_operand(types) {
                Some(t) => Approx::exact(op(p, "$type", t)),
                None => Approx::exact(Q::None),
            }
        }
        Cond::Regex(_) => Approx::over(op(p, "$type", "string")),
        Cond::Not(inner) => Approx::and(inner.iter().map(|c| cond(p, c)).collect()).not(),
        Cond::Size(n) => match size_operand(*n) {
            Some(n) => Approx::exact(op(p, "$size", n)),
            None => Approx::exact(Q::None),
        },
        Cond::All(list) => {
            if list.is_empty() {
                Approx::exact(Q::None)
            } else {
                Approx::and(list.iter().map(|v| eq(p, v)).collect())
            }
        }
        Cond::ElemMatch(ElemMatch::Ops(ops)) => elem_ops(p, ops),
        Cond::ElemMatch(ElemMatch::Query(q)) => elem_query(p, q),
    }
}

/// `{p: {$elemMatch: {$type: "array"}}}`: some array at `p` has an
/// element that is itself an array.
fn has_array_element(p: &MPath) -> Q {
    op(p, "$elemMatch", doc! {"$type": "array"})
}

fn elem_query(p: &MPath, query: &Node) -> Approx {
    let inner = node(query, false);
    let any_object = || op(p, "$elemMatch", doc! {"$type": "object"});
    let over = match inner.over {
        Q::None => Q::None,
        Q::All => any_object(),
        Q::Doc(d) => op(p, "$elemMatch", d),
    };
    let exact = inner.exact && over == any_object();
    let under = match inner.under {
        Q::None => Q::None,
        Q::All => any_object(),
        Q::Doc(d) => Q::and(vec![op(p, "$elemMatch", d), has_array_element(p).not()]),
    };
    Approx { over, under, exact }
}

fn elem_ops(p: &MPath, ops: &[Cond]) -> Approx {
    let inner = OpApprox::all(ops.iter().map(value_op).collect());
    let wrap = |q: OpQ| match q {
        OpQ::None => Q::None,
        // Only the element's existence is known.
        OpQ::All => op(p, "$elemMatch", doc! {"$exists": true}),
        OpQ::Ops(d) => op(p, "$elemMatch", d),
    };
    if inner.exact && inner.array_safe {
        return Approx::exact(wrap(inner.over));
    }
    Approx {
        over: Q::or(vec![wrap(inner.over), has_array_element(p)]),
        under: Q::and(vec![wrap(inner.under), has_array_element(p).not()]),
        exact: false,
    }
}

/// A conjunction of operators applied to one array element (the value
/// form of `$elemMatch`, which has no `$and`/`$or`).
#[derive(Debug, Clone, PartialEq)]
enum OpQ {
    All,
    None,
    Ops(Document),
}

impl OpQ {
    fn one(name: &str, value: impl Into<Bson>) -> OpQ {
        let mut d = Document::new();
        d.insert(name, value.into());
        OpQ::Ops(d)
    }

    fn not(self) -> OpQ {
        match self {
            OpQ::All => OpQ::None,
            OpQ::None => OpQ::All,
            OpQ::Ops(d) => OpQ::one("$not", d),
        }
    }
}

/// One element operator translated: over, under, exactness, and whether an
/// element that is itself an array is treated alike by the evaluator (which
/// expands it for most operators) and the server (which does not).
#[derive(Debug, Clone)]
struct OpApprox {
    over: OpQ,
    under: OpQ,
    exact: bool,
    array_safe: bool,
}

impl OpApprox {
    fn exact(q: OpQ, array_safe: bool) -> Self {
        Self {
            over: q.clone(),
            under: q,
            exact: true,
            array_safe,
        }
    }

    fn over(over: OpQ) -> Self {
        Self {
            over,
            under: OpQ::None,
            exact: false,
            array_safe: false,
        }
    }

    /// The conjunction. Operator names are unique in the parsed object, so
    /// keys do not collide; if they ever did, the later one is treated as
    /// unknown (dropped from the over, nothing for the under).
    fn all(parts: Vec<OpApprox>) -> Self {
        let mut over = Document::new();
        let mut under = Document::new();
        let (mut over_none, mut under_none) = (false, false);
        let (mut exact, mut array_safe) = (true, true);
        for p in parts {
            exact &= p.exact;
            array_safe &= p.array_safe;
            match p.over {
                OpQ::None => over_none = true,
                OpQ::All => {}
                OpQ::Ops(d) => {
                    for (k, v) in d {
                        if over.contains_key(&k) {
                            exact = false;
                        } else {
                            over.insert(k, v);
                        }
                    }
                }
            }
            match p.under {
                OpQ::None => under_none = true,
                OpQ::All => {}
                OpQ::Ops(d) => {
                    for (k, v) in d {
                        if under.contains_key(&k) {
                            under_none = true;
                            exact = false;
                        } else {
                            under.insert(k, v);
                        }
                    }
                }
            }
        }
        let done = |none: bool, d: Document| {
            if none {
                OpQ::None
            } else if d.is_empty() {
                OpQ::All
            } else {
                OpQ::Ops(d)
            }
        };
        Self {
            over: done(over_none, over),
            under: done(under_none, under),
            exact,
            array_safe,
        }
    }
}

fn unknown_op() -> OpApprox {
    OpApprox::over(OpQ::All)
}

fn value_literal_op(name: &str, v: &Value) -> OpApprox {
    match literal(v) {
        Some(b) => OpApprox::exact(OpQ::one(name, b), false),
        None => unknown_op(),
    }
}

/// One operator of a value-form `$elemMatch`, on a single element.
fn value_op(c: &Cond) -> OpApprox {
    match c {
        Cond::Eq(v) => value_literal_op("$eq", v),
        Cond::Ne(v) => value_literal_op("$ne", v),
        Cond::Gt(v) | Cond::Gte(v) | Cond::Lt(v) | Cond::Lte(v) => {
            let name = match c {
                Cond::Gt(_) => "$gt",
                Cond::Gte(_) => "$gte",
                Cond::Lt(_) => "$lt",
                _ => "$lte",
            };
            match v {
                // Nothing is above or below null in its bracket.
                Value::Null if matches!(c, Cond::Gt(_) | Cond::Lt(_)) => {
                    OpApprox::exact(OpQ::None, true)
                }
                Value::Array(_) => unknown_op(),
                Value::Object(_) => OpApprox::over(OpQ::one("$type", "object")),
                _ if loose_brackets() => match literal(v) {
                    Some(b) => OpApprox::over(OpQ::one(name, b)),
                    None => unknown_op(),
                },
                _ => value_literal_op(name, v),
            }
        }
        Cond::In(list) | Cond::Nin(list) => {
            let is_in = matches!(c, Cond::In(_));
            if list.is_empty() {
                return OpApprox::exact(if is_in { OpQ::None } else { OpQ::All }, true);
            }
            match list.iter().map(literal).collect::<Option<Vec<Bson>>>() {
                Some(values) => {
                    OpApprox::exact(OpQ::one(if is_in { "$in" } else { "$nin" }, values), false)
                }
                None => unknown_op(),
            }
        }
        Cond::Exists(b) => OpApprox::exact(OpQ::one("$exists", *b), true),
        Cond::Type(types)
            if client_view()
                && types
                    .iter()
                    .any(|t| matches!(t, TypeName::Int | TypeName::Long)) =>
        {
            unknown_op()
        }
        Cond::Type(types) => match type_operand(types) {
            Some(t) => {
                let only_array = types
                    .iter()
                    .all(|t| matches!(t, TypeName::Array | TypeName::Other));
                OpApprox::exact(OpQ::one("$type", t), only_array)
            }
            None => OpApprox::exact(OpQ::None, true),
        },
        Cond::Regex(_) => OpApprox::over(OpQ::one("$type", "string")),
        Cond::Not(inner) => {
            let i = OpApprox::all(inner.iter().map(value_op).collect());
            OpApprox {
                over: i.under.not(),
                under: i.over.not(),
                exact: i.exact,
                array_safe: i.array_safe,
            }
        }
        Cond::Size(n) => match size_operand(*n) {
            Some(n) => OpApprox::exact(OpQ::one("$size", n), true),
            None => OpApprox::exact(OpQ::None, true),
        },
        Cond::All(_) => unknown_op(),
        Cond::ElemMatch(ElemMatch::Ops(ops)) => {
            let i = OpApprox::all(ops.iter().map(value_op).collect());
            match (i.exact && i.array_safe, i.over) {
                (_, OpQ::None) => OpApprox::exact(OpQ::None, true),
                (true, OpQ::Ops(d)) => OpApprox::exact(OpQ::one("$elemMatch", d), true),
                (true, OpQ::All) => {
                    OpApprox::exact(OpQ::one("$elemMatch", doc! {"$exists": true}), true)
                }
                // The element must at least be an array.
                (false, _) => OpApprox::over(OpQ::one("$type", "array")),
            }
        }
        Cond::ElemMatch(ElemMatch::Query(q)) => {
            let i = node(q, false);
            let any_object = || OpQ::one("$elemMatch", doc! {"$type": "object"});
            match i.over {
                Q::None => OpApprox::exact(OpQ::None, true),
                Q::All if i.exact => OpApprox::exact(any_object(), true),
                Q::All => OpApprox::over(any_object()),
                Q::Doc(d) => OpApprox::over(OpQ::one("$elemMatch", d)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(f: Value) -> Translated {
        filter_to_bson(&Filter::parse(&f).expect("filter"))
    }

    fn exact(f: Value, want: Document) {
        let got = t(f.clone());
        assert_eq!(got.filter, want, "{f}");
        assert!(got.exact, "{f} should be exact");
    }

    fn inexact(f: Value, want: Document) {
        let got = t(f.clone());
        assert_eq!(got.filter, want, "{f}");
        assert!(!got.exact, "{f} should be inexact");
    }

    #[test]
    fn everything_and_nothing() {
        exact(json!({}), doc! {});
        assert_eq!(
            filter_to_bson(&Filter::all()),
            Translated {
                filter: doc! {},
                exact: true
            }
        );
        assert_eq!(
            filter_to_bson(&Filter::nothing()),
            Translated {
                filter: match_nothing(),
                exact: true
            }
        );
        // Nothing absorbs a conjunction and vanishes from a disjunction.
        assert_eq!(
            filter_to_bson(&Filter::nothing().and(Filter::parse(&json!({"a": 1})).expect("f"))),
            Translated {
                filter: match_nothing(),
                exact: true
            }
        );
        exact(
            json!({"$or": [{"a": {"$in": []}}, {"b": 1}]}),
            doc! {"b": {"$eq": 1}},
        );
        exact(json!({"$nor": [{"a": {"$in": []}}]}), doc! {});
    }

    #[test]
    fn each_plain_condition_is_exact() {
        exact(json!({"name": "Ana"}), doc! {"name": {"$eq": "Ana"}});
        exact(json!({"age": 30}), doc! {"age": {"$eq": 30}});
        exact(json!({"age": 3e9}), doc! {"age": {"$eq": 3e9}});
        exact(
            json!({"big": 3_000_000_000_i64}),
            doc! {"big": {"$eq": 3_000_000_000_i64}},
        );
        exact(json!({"tags": ["a", 1]}), doc! {"tags": {"$eq": ["a", 1]}});
        exact(
            json!({"o": {"x": 1, "a": 2}}),
            doc! {"o": {"$eq": {"x": 1, "a": 2}}},
        );
        exact(json!({"a": {"$ne": "x"}}), doc! {"a": {"$ne": "x"}});
        exact(json!({"a": {"$gt": 1}}), doc! {"a": {"$gt": 1}});
        exact(json!({"a": {"$gte": "m"}}), doc! {"a": {"$gte": "m"}});
        exact(json!({"a": {"$lt": 1.5}}), doc! {"a": {"$lt": 1.5}});
        exact(json!({"a": {"$lte": false}}), doc! {"a": {"$lte": false}});
        exact(
            json!({"a": {"$in": [1, "x", null]}}),
            // A set: sorted in MongoDB's order, duplicates dropped.
            doc! {"a": {"$in": [Bson::Null, 1, "x"]}},
        );
        exact(
            json!({"a": {"$nin": [1, [2]]}}),
            doc! {"a": {"$nin": [1, [2]]}},
        );
        exact(
            json!({"a": {"$exists": false}}),
            doc! {"a": {"$exists": false}},
        );
        exact(json!({"a": {"$type": "int"}}), doc! {"a": {"$type": "int"}});
        exact(
            json!({"a": {"$type": [2, "long", "string"]}}),
            doc! {"a": {"$type": ["string", "long"]}},
        );
        exact(json!({"a": {"$size": 2}}), doc! {"a": {"$size": 2}});
        exact(
            json!({"a": {"$all": ["x", "y"]}}),
            doc! {"$and": [{"a": {"$eq": "x"}}, {"a": {"$eq": "y"}}]},
        );
        exact(
            json!({"a": {"$not": {"$gt": 3}}}),
            doc! {"$nor": [{"a": {"$gt": 3}}]},
        );
        exact(
            json!({"a": {"$gt": 1, "$lt": 5}}),
            doc! {"a": {"$gt": 1, "$lt": 5}},
        );
        exact(
            json!({"$or": [{"a": 1}, {"$and": [{"b": 2}, {"c": 3}]}]}),
            doc! {"$or": [{"a": {"$eq": 1}}, {"b": {"$eq": 2}, "c": {"$eq": 3}}]},
        );
        exact(
            json!({"$nor": [{"a": 1}, {"b": 2}]}),
            doc! {"$nor": [{"$or": [{"a": {"$eq": 1}}, {"b": {"$eq": 2}}]}]},
        );
        // Dotted paths without numeric segments and without null are exact.
        exact(json!({"items.sku": "x"}), doc! {"items.sku": {"$eq": "x"}});
    }

    #[test]
    fn conditions_that_never_match_become_nothing_exactly() {
        exact(json!({"a": {"$in": []}}), match_nothing());
        exact(json!({"a": {"$all": []}}), match_nothing());
        exact(json!({"a": {"$gt": null}}), match_nothing());
        exact(json!({"a": {"$lt": null}}), match_nothing());
        exact(json!({"a": {"$type": "date"}}), match_nothing());
        exact(
            json!({"a": {"$type": ["date", "bool"]}}),
            doc! {"a": {"$type": "bool"}},
        );
        exact(json!({"a": {"$size": 3_000_000_000_u64}}), match_nothing());
        // ... and their negations everything.
        exact(json!({"a": {"$nin": []}}), doc! {});
        exact(json!({"a": {"$not": {"$type": "objectId"}}}), doc! {});
        exact(
            json!({"x": 1, "a": {"$gte": null}}),
            doc! {"x": {"$eq": 1}, "a": {"$eq": Bson::Null}},
        );
    }

    #[test]
    fn system_fields_map_to_the_stored_layout() {
        exact(json!({"_id": "c"}), doc! {"_id.i": {"$eq": "c"}});
        exact(
            json!({"_id": {"$in": ["a", "b"]}}),
            doc! {"_id.i": {"$in": ["a", "b"]}},
        );
        exact(
            json!({"_id.x": null}),
            doc! {"_id.i.x": {"$eq": Bson::Null}},
        );
        exact(json!({"_rev": {"$gte": 2}}), doc! {"_rev": {"$gte": 2}});
        exact(json!({"_owner": "u"}), doc! {"_owner": {"$eq": "u"}});
        exact(
            json!({"_created_at": {"$lt": "2026"}}),
            doc! {"_created_at": {"$lt": "2026"}},
        );
        // Other `_` names are missing for the evaluator: they cannot reach
        // `_tenant`, and missing-field semantics still hold.
        exact(
            json!({"_tenant": "t1"}),
            doc! {"_id.i._tenant": {"$eq": "t1"}},
        );
        exact(
            json!({"_tenant": {"$exists": false}}),
            doc! {"_id.i._tenant": {"$exists": false}},
        );
        // `_rev` is Int64 whatever its size: int/long cannot be decided.
        inexact(json!({"_rev": {"$type": "int"}}), doc! {});
        exact(
            json!({"_rev": {"$type": "number"}}),
            doc! {"_rev": {"$type": "number"}},
        );
        // Inside $elemMatch, `_id` is an element's own member.
        inexact(
            json!({"a": {"$elemMatch": {"_id": 1}}}),
            doc! {"a": {"$elemMatch": {"_id": {"$eq": 1}}}},
        );
    }

    #[test]
    fn null_through_arrays_is_widened_and_narrowed() {
        exact(json!({"a": null}), doc! {"a": {"$eq": Bson::Null}});
        let arrays = doc! {"$or": [{"a.b.c": {"$eq": Bson::Null}}, {"a": {"$type": "array"}}, {"a.b": {"$type": "array"}}]};
        inexact(json!({"a.b.c": null}), arrays.clone());
        inexact(json!({"a.b.c": {"$gte": null}}), arrays.clone());
        inexact(
            json!({"a.b": {"$in": [null, 1]}}),
            doc! {"$or": [{"a.b": {"$eq": Bson::Null}}, {"a": {"$type": "array"}}, {"a.b": {"$in": [1]}}]},
        );
        // A negation uses the narrowed form, so no match is lost.
        inexact(
            json!({"a.b": {"$ne": null}}),
            doc! {"$nor": [{"a.b": {"$eq": Bson::Null}, "$nor": [{"a": {"$type": "array"}}]}]},
        );
        inexact(
            json!({"a.b": {"$nin": [null]}}),
            doc! {"$nor": [{"a.b": {"$eq": Bson::Null}, "$nor": [{"a": {"$type": "array"}}]}]},
        );
    }

    #[test]
    fn uncertain_pieces_widen_inside_and_and_narrow_inside_negations() {
        // Numeric segments: anything inside $and, nothing inside $nor.
        inexact(json!({"tags.0": "x", "b": 1}), doc! {"b": {"$eq": 1}});
        inexact(json!({"$nor": [{"tags.0": "x"}]}), doc! {});
        inexact(json!({"$nor": [{"tags.0": "x", "b": 1}]}), doc! {});
        inexact(json!({"$or": [{"tags.1": "x"}, {"b": 1}]}), doc! {});
        inexact(json!({"a.+1": 1}), doc! {});
        // Array operands of comparisons, literals the store cannot hold.
        inexact(json!({"a": {"$gt": ["x"]}}), doc! {});
        inexact(json!({"a": 18446744073709551615_u64}), doc! {});
        inexact(
            json!({"a": {"$in": [1, 18446744073709551615_u64]}}),
            doc! {},
        );
        inexact(json!({"a": {"x.y": 1}}), doc! {});
        // Object operands: only "an object is there" is sent.
        inexact(json!({"a": {"$gt": {}}}), doc! {"a": {"$type": "object"}});
        inexact(json!({"a": {"$not": {"$gt": {}}}}), doc! {});
    }

    #[test]
    fn regexes_are_never_sent() {
        inexact(
            json!({"name": {"$regex": "^A"}}),
            doc! {"name": {"$type": "string"}},
        );
        inexact(
            json!({"name": {"$regex": "^a", "$options": "i"}}),
            doc! {"name": {"$type": "string"}},
        );
        inexact(json!({"name": {"$not": {"$regex": "a"}}}), doc! {});
        inexact(json!({"$nor": [{"name": {"$regex": "a"}}]}), doc! {});
    }

    #[test]
    fn elem_match_forms() {
        // Query form: widened by the server's array elements.
        inexact(
            json!({"items": {"$elemMatch": {"sku": "x", "qty": {"$gt": 2}}}}),
            doc! {"items": {"$elemMatch": {"sku": {"$eq": "x"}, "qty": {"$gt": 2}}}},
        );
        exact(
            json!({"items": {"$elemMatch": {}}}),
            doc! {"items": {"$elemMatch": {"$type": "object"}}},
        );
        inexact(
            json!({"$nor": [{"items": {"$elemMatch": {"sku": "x"}}}]}),
            doc! {"$nor": [{
                "items": {"$elemMatch": {"sku": {"$eq": "x"}}},
                "$nor": [{"items": {"$elemMatch": {"$type": "array"}}}],
            }]},
        );
        assert_eq!(
            node(
                Filter::parse(&json!({"items": {"$elemMatch": {"sku": "x"}}}))
                    .expect("f")
                    .root(),
                true
            )
            .under,
            Q::Doc(doc! {
                "items": {"$elemMatch": {"sku": {"$eq": "x"}}},
                "$nor": [{"items": {"$elemMatch": {"$type": "array"}}}],
            })
        );
        // Value form: exact only for operators that treat an array element
        // alike on both sides.
        inexact(
            json!({"tags": {"$elemMatch": {"$gt": "p"}}}),
            doc! {"$or": [{"tags": {"$elemMatch": {"$gt": "p"}}}, {"tags": {"$elemMatch": {"$type": "array"}}}]},
        );
        exact(
            json!({"m": {"$elemMatch": {"$size": 2, "$exists": true}}}),
            doc! {"m": {"$elemMatch": {"$size": 2, "$exists": true}}},
        );
        exact(
            json!({"m": {"$elemMatch": {"$elemMatch": {"$size": 1}}}}),
            doc! {"m": {"$elemMatch": {"$elemMatch": {"$size": 1}}}},
        );
        inexact(
            json!({"m": {"$elemMatch": {"$elemMatch": {"$eq": 3}}}}),
            doc! {"m": {"$elemMatch": {"$type": "array"}}},
        );
        inexact(
            json!({"m": {"$elemMatch": {"$not": {"$gt": 3}}}}),
            doc! {"$or": [{"m": {"$elemMatch": {"$not": {"$gt": 3}}}}, {"m": {"$elemMatch": {"$type": "array"}}}]},
        );
        exact(json!({"m": {"$elemMatch": {"$gt": null}}}), match_nothing());
    }

    /// Every case of the filter table: an exact translation's over and
    /// under are the same, and translating never fails.
    #[test]
    fn the_filter_table_translates_with_consistent_pairs() {
        let table: Value =
            serde_json::from_str(include_str!("../../../arca-core/tests/filter_cases.json"))
                .expect("table");
        let mut exact_count = 0;
        for case in table["cases"].as_array().expect("cases") {
            let f = Filter::parse(&case["filter"]).expect("filter");
            let a = node(f.root(), true);
            if a.exact {
                exact_count += 1;
                assert_eq!(a.over, a.under, "{}", case["rule"]);
            }
        }
        assert!(exact_count > 60, "only {exact_count} exact cases");
    }

    /// For a loosely bracketing server, a negated comparison widens: the
    /// candidates are everything (the evaluator decides), never fewer.
    #[test]
    fn loose_translation_never_trusts_a_negated_comparison() {
        let f = Filter::parse(&json!({"a.b": {"$not": {"$gt": 0}}, "c": 1})).expect("f");
        let loose = filter_to_bson_loose(&f);
        assert!(!loose.exact);
        assert_eq!(loose.filter, doc! {"c": {"$eq": 1}});
        let plain = filter_to_bson(&f);
        assert!(plain.exact, "the flag is reset after the call");
        let positive = filter_to_bson_loose(&Filter::parse(&json!({"a": {"$gt": 0}})).expect("f"));
        assert_eq!(positive.filter, doc! {"a": {"$gt": 0}});
        assert!(!positive.exact);
    }

    #[test]
    fn client_view_paths_are_sent_as_written() {
        let cv = |f: Value| filter_to_bson_client_view(&Filter::parse(&f).expect("filter"));
        assert_eq!(
            cv(json!({"_id": "a"})),
            Translated {
                filter: doc! {"_id": {"$eq": "a"}},
                exact: true
            }
        );
        // `_tenant` is not in the client view: sent as is, it finds nothing.
        assert_eq!(
            cv(json!({"_tenant": "t1"})).filter,
            doc! {"_tenant": {"$eq": "t1"}}
        );
        // A computed integer's BSON kind is unknown.
        assert!(!cv(json!({"n": {"$type": "int"}})).exact);
        assert!(!cv(json!({"n": {"$elemMatch": {"$type": "long"}}})).exact);
        assert!(cv(json!({"n": {"$type": "double"}})).exact);
        // Any name may hold arrays there, `_` ones too.
        assert!(!cv(json!({"_x.y": null})).exact);
        assert!(cv(json!({"a": {"$gt": 1}})).exact);
        // The flag is reset after the call.
        assert_eq!(t(json!({"_id": "a"})).filter, doc! {"_id.i": {"$eq": "a"}});
    }

    #[test]
    fn sort_documents_map_paths_and_end_with_id() {
        let s = |text: &str| sort_to_bson(&Sort::parse(text).expect("sort"));
        assert_eq!(s("_id"), doc! {"_id": 1});
        assert_eq!(s("-age,name"), doc! {"age": -1, "name": 1, "_id": 1});
        assert_eq!(s("-_id"), doc! {"_id": -1});
        assert_eq!(s("_rev,_id,x"), doc! {"_rev": 1, "_id": 1, "x": 1});
        assert_eq!(
            s("_id.x,-_tenant"),
            doc! {"_id.i.x": 1, "_id.i._tenant": -1, "_id": 1}
        );
        assert_eq!(s("a.b,-_owner"), doc! {"a.b": 1, "_owner": -1, "_id": 1});
    }

    #[test]
    fn projections_include_system_fields() {
        assert_eq!(
            projection_to_bson(["name", "a.b", "_id", "_tenant", "_rev"]),
            doc! {"_id": 1, "_tenant": 1, "_rev": 1, "_created_at": 1, "_updated_at": 1, "_owner": 1, "name": 1, "a.b": 1}
        );
    }
}
