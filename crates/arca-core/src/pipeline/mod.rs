//! Aggregation pipelines: MongoDB's `{"pipeline": [...]}` parsed into a
//! typed `Pipeline` (stages, expressions and accumulators of the
//! contract's allow-list, with limits), and the reference evaluator that
//! defines what a pipeline means in Arca, with MongoDB's semantics.
//!
//! This module owns the meaning of a pipeline; it does no I/O. The storage
//! engines run pipelines (the embedded one by pushing leading `$match`
//! stages into its planner and evaluating the rest here; the MongoDB one by
//! translating the parsed pipeline to BSON, see `arca-store`'s
//! `mongodb::pipeline`), and the conformance and differential tests hold
//! them to this evaluator.
//!
//! # What is allowed
//!
//! Stages: `$match` (the filter language of `query::Filter`, so `$expr`,
//! `$where` and the like are refused as in listings), `$project`,
//! `$addFields`/`$set`, `$unset`, `$group`, `$sort`, `$limit`, `$skip`,
//! `$unwind`, `$count`, `$lookup` (equality form `{from, localField,
//! foreignField, as}`, pipeline form `{from, let, pipeline, as}`, and
//! MongoDB 5's concise form with both). Stages that write or run code
//! (`$out`, `$merge`), that reach other data outside a `$lookup`'s checks
//! (`$unionWith`, `$graphLookup`), `$facet`, and every other stage are
//! refused by name (`PipelineError::Invalid`, a `400`). Expressions and
//! accumulators: see `expr.rs` and `group.rs`.
//!
//! # Limits (each refusal names its limit)
//!
//! `MAX_STAGES` stages in each pipeline (a `$lookup`'s own included),
//! `$lookup` nesting `MAX_LOOKUP_DEPTH` deep, expressions nesting
//! `MAX_EXPRESSION_DEPTH` deep, `MAX_NODES` JSON values in the whole
//! specification, `MAX_SORT_KEYS` keys per `$sort`. While running, no
//! document a stage produces may exceed `MAX_DOCUMENT_BYTES` or nest deeper
//! than `MAX_VALUE_DEPTH`, and no expression may build more than
//! `MAX_DOCUMENT_BYTES` for one document (runtime errors, `400`).
//!
//! # Scope: tenant, access rules and internal fields
//!
//! The evaluator sees documents only as clients see them (`_id`, `_rev`,
//! `_created_at`, `_updated_at`, `_owner` and the user's fields), both the
//! input (already confined by the caller to the tenant and the read
//! filter: the scope is applied before the first stage) and every `$lookup`
//! target, which it asks of `EvalEnv::lookup` by collection name, at any
//! depth: the caller answers with that collection's documents confined to
//! the same tenant and to that collection's own read filter. So no path,
//! `$$ROOT`, `$lookup` or `$project` can reach the tenant or anything an
//! engine adds: they are not in the documents. `Pipeline::lookup_targets`
//! lists every collection a pipeline joins, at every depth, so the caller
//! can refuse unknown ones (`400`) and ones the caller may not read (`403`)
//! before anything runs.
//!
//! The MongoDB engine runs the pipeline on the server instead; there the
//! stored documents do hold internal fields (`{_id: {t, i}, _tenant, ...}`).
//! Its translation (`arca_store::mongodb::pipeline`) keeps them out the
//! same way: the pipeline it sends starts with a `$match` on `_tenant` and
//! the scope, then a stage that rewrites each document into the client
//! view (`_id` := `_id.i`, `_tenant` and every other internal field
//! removed) before any user stage; every `$lookup` becomes the pipeline
//! form on its target with the same two leading stages (the same tenant,
//! the target's read filter), recursively. A user stage therefore never
//! sees an internal field, and a `$match` on `_tenant` finds nothing.
//!
//! # Running
//!
//! `Pipeline::evaluate` streams documents through the stages (a `$limit`
//! stops reading the input); `$group`, `$sort` and `$count` hold what they
//! need until the input ends. It calls `EvalEnv::check` once per document
//! per stage (`Cost::Step`) and whenever a stage's held memory grows
//! (`Cost::Held`), so the caller enforces its time and memory budgets
//! cooperatively; the results count as held memory too. Where MongoDB
//! leaves an order unspecified (`$group` output, `$addToSet` members, ties
//! in `$sort`), the evaluator keeps arrival order (a stable sort).

mod arith;
mod expr;
mod group;
mod parse;
mod project;
mod run;
mod values;

use std::collections::HashMap;

use serde_json::Value;

use crate::name::CollectionName;
use crate::query::{FieldPath, Filter};

pub use expr::{Expr, Op, Var};
pub use group::{AccOp, Accumulator, Group};
pub use project::{FieldNode, FieldTree, Project};

/// Most stages in one pipeline (each `$lookup` pipeline counts apart).
pub const MAX_STAGES: usize = 50;
/// Deepest `$lookup` nesting: a `$lookup` at the top is depth 1, one inside
/// its pipeline depth 2, and so on.
pub const MAX_LOOKUP_DEPTH: usize = 4;
/// Deepest expression nesting (operators, arrays and objects of
/// expressions).
pub const MAX_EXPRESSION_DEPTH: usize = 64;
/// Most JSON values (objects, arrays and scalars, at any depth) in a whole
/// pipeline specification.
pub const MAX_NODES: usize = 10_000;
/// Most keys in one `$sort` (MongoDB's limit).
pub const MAX_SORT_KEYS: usize = 32;
/// Largest document a stage may produce, and most bytes an expression may
/// build for one document: 16 MiB, MongoDB's document limit (sizes are
/// estimated as BSON).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Deepest nesting of objects and arrays in a document a stage produces
/// (the top-level document is level 1). Stored documents nest at most 100
/// levels; the margin leaves room for `$lookup` results, and stays below
/// the 128 levels JSON parsers (serde_json's default) and the MongoDB
/// engine's converter accept.
pub const MAX_VALUE_DEPTH: usize = 120;

/// Why a pipeline could not be parsed or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline is malformed, uses something not allowed, or exceeds a
    /// limit (`400`); the message names what.
    #[error("{0}")]
    Invalid(String),
    /// An error that depends on the data (`400`), with MongoDB's reason
    /// (`can't $divide by zero`, `$add only supports numeric or date
    /// types, not string`...).
    #[error("{0}")]
    Runtime(String),
    /// A stage held more memory than the caller's budget (`400`).
    #[error("a pipeline stage needed more than {limit} bytes of memory")]
    TooMuchMemory {
        /// The budget in bytes.
        limit: u64,
    },
    /// The caller's time budget ran out (`503`).
    #[error("the aggregation ran past its time limit")]
    TimedOut,
    /// More results than the caller allows (`400`: add a `$limit`).
    #[error("the aggregation has more than {limit} results (add a $limit)")]
    TooManyResults {
        /// The most results allowed.
        limit: usize,
    },
}

/// What the evaluator reports to `EvalEnv::check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// One document entered a stage (or was examined by a `$lookup`): a
    /// unit of work, to check the time budget against.
    Step,
    /// A stage now holds `bytes` (estimated) in total: `$group` (keys and
    /// accumulated values), `$sort` (the documents), `$lookup` (the joined
    /// collections' documents), `results` (the output so far).
    Held {
        /// The stage name (`$group`, `$sort`, `$lookup`, `results`).
        stage: &'static str,
        /// Bytes held by that stage now.
        bytes: u64,
    },
}

/// What the evaluator needs from its caller.
pub trait EvalEnv {
    /// The documents of `collection` that the caller may read, as clients
    /// see them (system fields and user fields, nothing internal), confined
    /// to the caller's tenant and to that collection's read filter. Called
    /// at most once per collection per evaluation.
    fn lookup(&mut self, collection: &str) -> Result<Vec<Value>, PipelineError>;

    /// Called cooperatively as work is done and memory is held; an error
    /// (`TimedOut`, `TooMuchMemory`) stops the evaluation at once.
    fn check(&mut self, cost: Cost) -> Result<(), PipelineError>;

    /// The most results the evaluation may return (`TooManyResults`
    /// beyond).
    fn max_results(&self) -> usize;
}

/// An `EvalEnv` over collections held in memory, with a memory budget per
/// stage and a budget of steps (for tests, tools, and callers that have
/// already loaded and scoped the data).
#[derive(Debug, Clone)]
pub struct InMemoryEnv {
    /// The documents of each collection a `$lookup` may join (already
    /// scoped by whoever filled this).
    pub collections: HashMap<String, Vec<Value>>,
    /// `EvalEnv::max_results`.
    pub max_results: usize,
    /// Most bytes one stage may hold.
    pub max_memory: u64,
    /// Most steps before `TimedOut` (`u64::MAX`: no limit).
    pub max_steps: u64,
    /// Steps taken so far.
    pub steps: u64,
}

impl InMemoryEnv {
    /// No collections, 10,000 results, 100 MiB per stage, no step limit.
    pub fn new() -> Self {
        Self {
            collections: HashMap::new(),
            max_results: 10_000,
            max_memory: 100 * 1024 * 1024,
            max_steps: u64::MAX,
            steps: 0,
        }
    }
}

impl Default for InMemoryEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl EvalEnv for InMemoryEnv {
    fn lookup(&mut self, collection: &str) -> Result<Vec<Value>, PipelineError> {
        self.collections.get(collection).cloned().ok_or_else(|| {
            PipelineError::Invalid(format!("$lookup: unknown collection {collection}"))
        })
    }

    fn check(&mut self, cost: Cost) -> Result<(), PipelineError> {
        match cost {
            Cost::Step => {
                self.steps += 1;
                if self.steps > self.max_steps {
                    return Err(PipelineError::TimedOut);
                }
            }
            Cost::Held { bytes, .. } => {
                if bytes > self.max_memory {
                    return Err(PipelineError::TooMuchMemory {
                        limit: self.max_memory,
                    });
                }
            }
        }
        Ok(())
    }

    fn max_results(&self) -> usize {
        self.max_results
    }
}

/// `$unwind`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwind {
    /// The array field (a dotted path through objects).
    pub path: FieldPath,
    /// Where to write the element's index (`null` when the value was not
    /// an array).
    pub include_array_index: Option<FieldPath>,
    /// Keep documents whose field is null, missing or an empty array.
    pub preserve_null_and_empty_arrays: bool,
}

/// The equality part of a `$lookup` (`localField`/`foreignField`).
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The path in the input document (its values, array elements each,
    /// are matched; missing counts as null).
    pub local_field: FieldPath,
    /// The path in the joined collection's documents, matched with query
    /// equality (arrays match by element; null matches missing).
    pub foreign_field: FieldPath,
}

/// A parsed `$lookup`.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The joined collection.
    pub from: CollectionName,
    /// The equality condition, if any.
    pub join: Option<Join>,
    /// `let` variables (name, expression over the input document).
    pub lets: Vec<(String, Expr)>,
    /// The pipeline run over the joined documents, if any.
    pub pipeline: Option<Pipeline>,
    /// The output array field.
    pub as_field: FieldPath,
}

/// One stage.
#[derive(Debug, Clone)]
pub enum Stage {
    /// `$match`.
    Match(Filter),
    /// `$project`.
    Project(Project),
    /// `$addFields` or `$set` (the same stage).
    AddFields(FieldTree),
    /// `$unset` (a tree of exclusions).
    Unset(FieldTree),
    /// `$group`.
    Group(Group),
    /// `$sort`: paths and whether each is descending.
    Sort(Vec<(FieldPath, bool)>),
    /// `$limit` (at least 1).
    Limit(u64),
    /// `$skip`.
    Skip(u64),
    /// `$unwind`.
    Unwind(Unwind),
    /// `$count`: the output field name.
    Count(String),
    /// `$lookup`.
    Lookup(Lookup),
}

impl Stage {
    /// The stage's name (`$match`...).
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Match(_) => "$match",
            Stage::Project(_) => "$project",
            Stage::AddFields(_) => "$addFields",
            Stage::Unset(_) => "$unset",
            Stage::Group(_) => "$group",
            Stage::Sort(_) => "$sort",
            Stage::Limit(_) => "$limit",
            Stage::Skip(_) => "$skip",
            Stage::Unwind(_) => "$unwind",
            Stage::Count(_) => "$count",
            Stage::Lookup(_) => "$lookup",
        }
    }
}

/// A parsed, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Parses an aggregate body `{"pipeline": [...]}` (no other member),
    /// or the stage array itself.
    pub fn parse(body: &Value) -> Result<Pipeline, PipelineError> {
        parse::parse_body(body)
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Every collection a `$lookup` joins, at any depth, each once, in the
    /// order they first appear.
    pub fn lookup_targets(&self) -> Vec<&CollectionName> {
        let mut out: Vec<&CollectionName> = Vec::new();
        self.collect_targets(&mut out);
        out
    }

    fn collect_targets<'a>(&'a self, out: &mut Vec<&'a CollectionName>) {
        for s in &self.stages {
            if let Stage::Lookup(l) = s {
                if !out.contains(&&l.from) {
                    out.push(&l.from);
                }
                if let Some(p) = &l.pipeline {
                    p.collect_targets(out);
                }
            }
        }
    }

    /// The leading `$match` stages as one filter (matches everything when
    /// there are none), and the pipeline of the stages after them: an
    /// engine can run the filter through its query planner (with the
    /// scope) and evaluate the rest.
    pub fn split_leading_match(&self) -> (Filter, Pipeline) {
        let mut filter = Filter::all();
        let mut rest = self.stages.as_slice();
        while let Some((Stage::Match(f), tail)) = rest.split_first() {
            filter = filter.and(f.clone());
            rest = tail;
        }
        (
            filter,
            Pipeline {
                stages: rest.to_vec(),
            },
        )
    }

    /// The top-level fields of its input documents the pipeline reads,
    /// when that is only some of them: its first stage is `$group` (the
    /// fields its key and accumulators name), `$count` (none) or an
    /// inclusion `$project` (the fields it names or computes from). `None`
    /// when a stage passes whole documents on or reads `$$ROOT`. An engine
    /// may then parse only those fields of each input document (the
    /// system fields are always there): the result is the same.
    pub fn input_fields(&self) -> Option<Vec<&str>> {
        let mut out = Vec::new();
        match self.stages.first()? {
            Stage::Count(_) => Some(out),
            Stage::Project(p) if !p.is_exclusion() => {
                p.tree().add_top_level(&mut out).then_some(out)
            }
            Stage::Group(g) => {
                let exprs = std::iter::once(&g.id).chain(g.accumulators.iter().map(|a| &a.arg));
                for e in exprs {
                    if !e.add_top_level(&mut out) {
                        return None;
                    }
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// Runs the pipeline over `input` (documents as clients see them,
    /// already confined to the caller's scope) with MongoDB's semantics.
    pub fn evaluate(
        &self,
        input: impl Iterator<Item = Value>,
        env: &mut dyn EvalEnv,
    ) -> Result<Vec<Value>, PipelineError> {
        run::run(&self.stages, input, env)
    }
}

#[cfg(test)]
mod tests;
