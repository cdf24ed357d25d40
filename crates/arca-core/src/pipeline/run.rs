//! Running a pipeline: documents are pushed through the stages one at a
//! time (a `$limit` that is satisfied stops the input), blocking stages
//! (`$group`, `$sort`, `$count`) hold what they need and pass it on when
//! the input ends, and `$lookup` runs its own pipeline per input document
//! over the joined collection, which is fetched once per evaluation (and,
//! for the equality form, indexed once by the foreign field).
//!
//! Stage semantics that live here (MongoDB's manual, and its server code
//! where the manual is terse):
//!
//! - `$sort`: BSON order across types, missing sorts as null; a path
//!   through arrays offers every value it reaches (an array at the end
//!   offers its elements, an object element without the field offers
//!   null, a numeric segment on an array is a position); ascending takes
//!   the smallest, descending the largest; an empty array sorts below
//!   null. Ties keep their input order (MongoDB's `$sort` is not stable:
//!   engines may differ on ties, so tests sort on unique keys).
//! - `$unwind`: the path goes through objects only; a non-empty array
//!   gives one document per element (with the index as an integer when
//!   `includeArrayIndex` is set); null, missing and `[]` drop the document
//!   unless `preserveNullAndEmptyArrays`, which keeps it (with the empty
//!   array's field removed, and a null index); any other value passes
//!   unchanged with a null index.
//! - `$count`: one document `{name: n}`, none when no document arrived.
//! - `$lookup` equality: the input's values at `localField` (each element
//!   of an array, none becoming null) are matched like `$in` in a query
//!   against the joined documents' `foreignField` (an array there matches
//!   by any element or as a whole; null matches null and missing); the
//!   joined documents keep their collection's order. With a pipeline, the
//!   `let` variables are evaluated against the input document and the
//!   pipeline runs over the (equality-matched) joined documents. The
//!   joined documents of one input document may not exceed 16 MiB.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::query::FieldPath;
use crate::query::eval::resolve;
use crate::query::sort::{compare_sort, sort_key};

use super::expr::Env;
use super::group::GroupRun;
use super::project::{add_fields, exclude};
use super::values::{
    Budget, check_document, equality_key, measure, nested_field, remove_path, set_path,
};
use super::{Cost, EvalEnv, Lookup, MAX_DOCUMENT_BYTES, PipelineError, Stage, Unwind};

/// Runs `stages` over `input`.
pub(crate) fn run(
    stages: &[Stage],
    input: impl Iterator<Item = Value>,
    env: &mut dyn EvalEnv,
) -> Result<Vec<Value>, PipelineError> {
    let max = env.max_results();
    let mut shared = Shared::default();
    let mut cx = Cx {
        env,
        shared: &mut shared,
    };
    let mut top = Run::new(stages, Vec::new(), Sink::Results { max });
    for doc in input {
        if !doc.is_object() {
            return Err(PipelineError::Runtime(
                "an input document is not a JSON object".into(),
            ));
        }
        if top.push(0, doc, &mut cx)? == Flow::Stop {
            break;
        }
    }
    top.finish(&mut cx)?;
    Ok(top.results)
}

/// Whether upstream should keep sending documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    Stop,
}

/// The caller's environment and what one evaluation shares across all its
/// `$lookup`s, at every depth.
struct Cx<'c> {
    env: &'c mut dyn EvalEnv,
    shared: &'c mut Shared,
}

/// A join index: equality key -> positions of the joined documents.
type JoinIndex = HashMap<String, Vec<usize>>;

/// Joined collections and their indexes, fetched or built once.
#[derive(Default)]
struct Shared {
    collections: HashMap<String, Rc<Vec<Value>>>,
    indexes: HashMap<(String, String), Rc<JoinIndex>>,
    held: u64,
}

impl Cx<'_> {
    fn collection(&mut self, name: &str) -> Result<Rc<Vec<Value>>, PipelineError> {
        if let Some(c) = self.shared.collections.get(name) {
            return Ok(Rc::clone(c));
        }
        let docs = self.env.lookup(name)?;
        for d in &docs {
            if !d.is_object() {
                return Err(PipelineError::Runtime(format!(
                    "$lookup: a document of {name} is not a JSON object"
                )));
            }
            self.shared.held += measure(d).bytes as u64;
        }
        self.env.check(Cost::Held {
            stage: "$lookup",
            bytes: self.shared.held,
        })?;
        let docs = Rc::new(docs);
        self.shared
            .collections
            .insert(name.to_owned(), Rc::clone(&docs));
        Ok(docs)
    }

    fn join_index(
        &mut self,
        name: &str,
        path: &FieldPath,
        docs: &[Value],
    ) -> Result<Rc<JoinIndex>, PipelineError> {
        let key = (name.to_owned(), path.as_str().to_owned());
        if let Some(i) = self.shared.indexes.get(&key) {
            return Ok(Rc::clone(i));
        }
        let mut index = JoinIndex::new();
        let mut keys = HashSet::new();
        for (i, d) in docs.iter().enumerate() {
            self.env.check(Cost::Step)?;
            keys.clear();
            for v in resolve(d, path) {
                match v {
                    None => {
                        keys.insert(equality_key(&Value::Null));
                    }
                    Some(v) => {
                        keys.insert(equality_key(v));
                        if let Value::Array(items) = v {
                            keys.extend(items.iter().map(equality_key));
                        }
                    }
                }
            }
            for k in keys.drain() {
                self.shared.held += (k.len() + 16) as u64;
                index.entry(k).or_default().push(i);
            }
        }
        self.env.check(Cost::Held {
            stage: "$lookup",
            bytes: self.shared.held,
        })?;
        let index = Rc::new(index);
        self.shared.indexes.insert(key, Rc::clone(&index));
        Ok(index)
    }
}

/// Where a pipeline's output goes: the evaluation's results, or a
/// `$lookup`'s joined array.
#[derive(Debug, Clone, Copy)]
enum Sink {
    Results { max: usize },
    Joined,
}

/// A document held by `$sort`, with its sort key.
struct Sorted {
    key: Vec<Option<Value>>,
    doc: Value,
}

/// The running state of one stage.
enum State {
    Stateless,
    Limit(u64),
    Skip(u64),
    Group(GroupRun),
    Sort(Vec<Sorted>, u64),
    Count(u64),
    Done,
}

/// One running pipeline (the top one, or a `$lookup`'s for one input
/// document).
struct Run<'p> {
    stages: &'p [Stage],
    states: Vec<State>,
    vars: Vec<(String, Option<Value>)>,
    results: Vec<Value>,
    held: u64,
    sink: Sink,
}

impl<'p> Run<'p> {
    fn new(stages: &'p [Stage], vars: Vec<(String, Option<Value>)>, sink: Sink) -> Self {
        let states = stages
            .iter()
            .map(|s| match s {
                Stage::Limit(n) => State::Limit(*n),
                Stage::Skip(n) => State::Skip(*n),
                Stage::Group(_) => State::Group(GroupRun::default()),
                Stage::Sort(_) => State::Sort(Vec::new(), 0),
                Stage::Count(_) => State::Count(0),
                _ => State::Stateless,
            })
            .collect();
        Self {
            stages,
            states,
            vars,
            results: Vec::new(),
            held: 0,
            sink,
        }
    }

    /// Offers a borrowed document: leading `$match` stages are checked
    /// before it is copied.
    fn feed(&mut self, doc: &Value, cx: &mut Cx<'_>) -> Result<Flow, PipelineError> {
        let stages = self.stages;
        let mut i = 0;
        while let Some(Stage::Match(f)) = stages.get(i) {
            cx.env.check(Cost::Step)?;
            if !f.matches(doc) {
                return Ok(Flow::More);
            }
            i += 1;
        }
        self.push(i, doc.clone(), cx)
    }

    /// Sends `doc` into stage `i` (past the last stage: the output).
    fn push(&mut self, i: usize, doc: Value, cx: &mut Cx<'_>) -> Result<Flow, PipelineError> {
        let stages = self.stages;
        let Some(stage) = stages.get(i) else {
            return self.emit(doc, cx);
        };
        cx.env.check(Cost::Step)?;
        let Value::Object(map) = &doc else {
            return Err(PipelineError::Runtime(
                "a document between stages is not an object".into(),
            ));
        };
        match stage {
            Stage::Match(f) => {
                if f.matches(&doc) {
                    self.push(i + 1, doc, cx)
                } else {
                    Ok(Flow::More)
                }
            }
            Stage::Project(p) => {
                let mut budget = Budget::new();
                let env = Env {
                    root: &doc,
                    vars: &self.vars,
                };
                let out = Value::Object(p.apply(map, env, &mut budget)?);
                check_document(&out, "$project")?;
                self.push(i + 1, out, cx)
            }
            Stage::AddFields(tree) => {
                let mut budget = Budget::new();
                let env = Env {
                    root: &doc,
                    vars: &self.vars,
                };
                let out = Value::Object(add_fields(map, tree, env, &mut budget)?);
                check_document(&out, "$addFields")?;
                self.push(i + 1, out, cx)
            }
            Stage::Unset(tree) => {
                let out = Value::Object(exclude(map, tree));
                self.push(i + 1, out, cx)
            }
            Stage::Group(g) => {
                let Some(State::Group(run)) = self.states.get_mut(i) else {
                    return Ok(Flow::More);
                };
                let mut budget = Budget::new();
                let env = Env {
                    root: &doc,
                    vars: &self.vars,
                };
                run.add(g, env, &mut budget)?;
                cx.env.check(Cost::Held {
                    stage: "$group",
                    bytes: run.held(),
                })?;
                Ok(Flow::More)
            }
            Stage::Sort(keys) => {
                let Some(State::Sort(buffer, held)) = self.states.get_mut(i) else {
                    return Ok(Flow::More);
                };
                let key: Vec<Option<Value>> = keys
                    .iter()
                    .map(|(path, desc)| sort_key(&doc, path.segments(), *desc))
                    .collect();
                *held += measure(&doc).bytes as u64
                    + key
                        .iter()
                        .map(|k| k.as_ref().map_or(1, |v| measure(v).bytes as u64))
                        .sum::<u64>()
                    + 32;
                buffer.push(Sorted { key, doc });
                cx.env.check(Cost::Held {
                    stage: "$sort",
                    bytes: *held,
                })?;
                Ok(Flow::More)
            }
            Stage::Count(_) => {
                if let Some(State::Count(n)) = self.states.get_mut(i) {
                    *n += 1;
                }
                Ok(Flow::More)
            }
            Stage::Limit(_) => {
                let Some(State::Limit(left)) = self.states.get_mut(i) else {
                    return Ok(Flow::Stop);
                };
                if *left == 0 {
                    return Ok(Flow::Stop);
                }
                *left -= 1;
                let last = *left == 0;
                let flow = self.push(i + 1, doc, cx)?;
                Ok(if last { Flow::Stop } else { flow })
            }
            Stage::Skip(_) => {
                if let Some(State::Skip(left)) = self.states.get_mut(i)
                    && *left > 0
                {
                    *left -= 1;
                    return Ok(Flow::More);
                }
                self.push(i + 1, doc, cx)
            }
            Stage::Unwind(u) => self.unwind(i, u, doc, cx),
            Stage::Lookup(l) => {
                let out = self.lookup(l, doc, cx)?;
                self.push(i + 1, out, cx)
            }
        }
    }

    fn emit(&mut self, doc: Value, cx: &mut Cx<'_>) -> Result<Flow, PipelineError> {
        self.held += measure(&doc).bytes as u64;
        match self.sink {
            Sink::Results { max } => {
                if self.results.len() >= max {
                    return Err(PipelineError::TooManyResults { limit: max });
                }
                cx.env.check(Cost::Held {
                    stage: "results",
                    bytes: self.held,
                })?;
            }
            Sink::Joined => {
                if self.held > MAX_DOCUMENT_BYTES as u64 {
                    return Err(joined_too_big());
                }
            }
        }
        self.results.push(doc);
        Ok(Flow::More)
    }

    /// Passes on what the blocking stages hold, in stage order.
    fn finish(&mut self, cx: &mut Cx<'_>) -> Result<(), PipelineError> {
        let stages = self.stages;
        for (i, stage) in stages.iter().enumerate() {
            let Some(slot) = self.states.get_mut(i) else {
                break;
            };
            let state = std::mem::replace(slot, State::Done);
            match (stage, state) {
                (Stage::Group(g), State::Group(run)) => {
                    for out in run.outputs(g) {
                        let out = out?;
                        check_document(&out, "$group")?;
                        if self.push(i + 1, out, cx)? == Flow::Stop {
                            break;
                        }
                    }
                }
                (Stage::Sort(keys), State::Sort(mut buffer, _)) => {
                    buffer.sort_by(|a, b| compare_keys(&a.key, &b.key, keys));
                    for s in buffer {
                        if self.push(i + 1, s.doc, cx)? == Flow::Stop {
                            break;
                        }
                    }
                }
                (Stage::Count(name), State::Count(n)) => {
                    if n > 0 {
                        let mut m = Map::new();
                        m.insert(name.clone(), Value::from(n));
                        self.push(i + 1, Value::Object(m), cx)?;
                    }
                }
                (_, other) => {
                    if let Some(slot) = self.states.get_mut(i) {
                        *slot = other;
                    }
                }
            }
        }
        Ok(())
    }

    fn unwind(
        &mut self,
        i: usize,
        u: &Unwind,
        doc: Value,
        cx: &mut Cx<'_>,
    ) -> Result<Flow, PipelineError> {
        let Value::Object(mut m) = doc else {
            return Ok(Flow::More);
        };
        let segs = u.path.segments();
        let set_index = |m: &mut Map<String, Value>, v: Value| {
            if let Some(p) = &u.include_array_index {
                set_path(m, p.segments(), v);
            }
        };
        match nested_field(&m, segs) {
            Some(Value::Array(items)) if !items.is_empty() => {
                let items = take_nested(&mut m, segs);
                for (n, elem) in items.into_iter().enumerate() {
                    let mut out = m.clone();
                    set_path(&mut out, segs, elem);
                    set_index(&mut out, Value::from(n));
                    if self.push(i + 1, Value::Object(out), cx)? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                }
                Ok(Flow::More)
            }
            Some(Value::Array(_)) | Some(Value::Null) | None => {
                if !u.preserve_null_and_empty_arrays {
                    return Ok(Flow::More);
                }
                if matches!(nested_field(&m, segs), Some(Value::Array(_))) {
                    remove_path(&mut m, segs);
                }
                set_index(&mut m, Value::Null);
                self.push(i + 1, Value::Object(m), cx)
            }
            Some(_) => {
                set_index(&mut m, Value::Null);
                self.push(i + 1, Value::Object(m), cx)
            }
        }
    }

    fn lookup(
        &mut self,
        l: &'p Lookup,
        doc: Value,
        cx: &mut Cx<'_>,
    ) -> Result<Value, PipelineError> {
        let foreign = cx.collection(l.from.as_str())?;
        let candidates: Vec<usize> = match &l.join {
            Some(j) => {
                let index = cx.join_index(l.from.as_str(), &j.foreign_field, &foreign)?;
                let mut found = Vec::new();
                for key in local_keys(&doc, &j.local_field) {
                    if let Some(list) = index.get(&key) {
                        found.extend_from_slice(list);
                    }
                }
                found.sort_unstable();
                found.dedup();
                found
            }
            None => (0..foreign.len()).collect(),
        };
        let joined = match &l.pipeline {
            None => {
                let mut out = Vec::with_capacity(candidates.len());
                let mut bytes = 0u64;
                for d in candidates.iter().filter_map(|i| foreign.get(*i)) {
                    cx.env.check(Cost::Step)?;
                    bytes += measure(d).bytes as u64;
                    if bytes > MAX_DOCUMENT_BYTES as u64 {
                        return Err(joined_too_big());
                    }
                    out.push(d.clone());
                }
                out
            }
            Some(p) => {
                let mut vars = self.vars.clone();
                let mut budget = Budget::new();
                for (name, e) in &l.lets {
                    let env = Env {
                        root: &doc,
                        vars: &self.vars,
                    };
                    let v = e.eval(env, &mut budget)?.map(Cow::into_owned);
                    vars.push((name.clone(), v));
                }
                let mut inner = Run::new(p.stages(), vars, Sink::Joined);
                for d in candidates.iter().filter_map(|i| foreign.get(*i)) {
                    if inner.feed(d, cx)? == Flow::Stop {
                        break;
                    }
                }
                inner.finish(cx)?;
                inner.results
            }
        };
        let Value::Object(mut m) = doc else {
            return Err(PipelineError::Runtime(
                "a document between stages is not an object".into(),
            ));
        };
        set_path(&mut m, l.as_field.segments(), Value::Array(joined));
        let out = Value::Object(m);
        check_document(&out, "$lookup")?;
        Ok(out)
    }
}

fn joined_too_big() -> PipelineError {
    PipelineError::Runtime(format!(
        "$lookup: the documents joined to one document exceed {MAX_DOCUMENT_BYTES} bytes (16 MiB, MongoDB's document limit)"
    ))
}

/// Takes the array at `segs` out of `m` (leaving null in its place, so the
/// field keeps its position).
fn take_nested(m: &mut Map<String, Value>, segs: &[String]) -> Vec<Value> {
    let Some((first, rest)) = segs.split_first() else {
        return Vec::new();
    };
    match m.get_mut(first) {
        Some(v) if rest.is_empty() => match std::mem::take(v) {
            Value::Array(items) => items,
            other => {
                *v = other;
                Vec::new()
            }
        },
        Some(Value::Object(sub)) => take_nested(sub, rest),
        _ => Vec::new(),
    }
}

/// The equality keys of a `$lookup`'s local values: every value the path
/// reaches, an array's elements each, null when there are none.
fn local_keys(doc: &Value, path: &FieldPath) -> Vec<String> {
    let mut out = Vec::new();
    for v in resolve(doc, path).into_iter().flatten() {
        match v {
            Value::Array(items) => out.extend(items.iter().map(equality_key)),
            other => out.push(equality_key(other)),
        }
    }
    if out.is_empty() {
        out.push(equality_key(&Value::Null));
    }
    out
}

fn compare_keys(a: &[Option<Value>], b: &[Option<Value>], spec: &[(FieldPath, bool)]) -> Ordering {
    for ((x, y), (_, desc)) in a.iter().zip(b).zip(spec) {
        let o = compare_sort(x.as_ref(), y.as_ref());
        let o = if *desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}
