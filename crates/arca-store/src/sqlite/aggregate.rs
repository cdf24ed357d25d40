//! Aggregations on the embedded engine.
//!
//! The pipeline's leading `$match` stages, with the caller's scope, go
//! through the listing planner (`candidate_sql`, so a declared index
//! serves them); the rows stream from SQLite into the reference evaluator
//! (`arca_core::pipeline`) on a reader thread, never on the async workers,
//! as a long read (it counts against the readers listings may hold, and is
//! paced like them). Every `$lookup` target is read on the same connection
//! and in the same read transaction, within its own scope (the caller's
//! tenant, that collection's read filter), once per evaluation.
//!
//! Budgets: the reader's check (the aggregation's own deadline,
//! `AggregateLimits::max_time`, and whether its request went away) runs
//! inside SQLite's steps (the progress handler) and between the
//! evaluator's steps; the evaluator reports what each stage holds, checked
//! against `max_memory`, and a `$lookup` target larger than that is refused
//! while it is read, before it is held whole.

use std::collections::HashMap;

use arca_core::pipeline::{Cost, EvalEnv, Pipeline, PipelineError};
use arca_core::query::{Filter, Node};
use arca_core::{CollectionName, Scope};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, params_from_iter};
use serde_json::Value;

use super::SqliteStore;
use super::scan::{Body, scan};
use super::sql;
use super::writer::map_err;
use crate::{AggregateLimits, LookupScopes, StoreError};

/// The evaluator's steps between two calls of the reader's check (each is
/// a clock read and a few atomics; a step is a document entering a stage).
const STEPS_PER_CHECK: u64 = 64;

/// The query that reads one collection's documents for an aggregation.
struct Source {
    sql: String,
    params: Vec<Sql>,
    /// The whole filter (scope and leading `$match`): the SQL selects
    /// candidates, this decides.
    filter: Filter,
}

impl SqliteStore {
    /// `Store::aggregate` (see the module comment).
    pub(super) async fn aggregate_docs(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &Pipeline,
        lookups: &LookupScopes,
        limits: &AggregateLimits,
    ) -> Result<Vec<Value>, StoreError> {
        let mut targets = HashMap::new();
        for name in pipeline.lookup_targets() {
            let Some(target_scope) = lookups.get(name.as_str()) else {
                return Err(StoreError::Pipeline(PipelineError::Invalid(format!(
                    "$lookup: unknown collection {name}"
                ))));
            };
            targets.insert(
                name.as_str().to_owned(),
                self.source(name, target_scope, Filter::all()),
            );
        }
        let (leading, rest) = pipeline.split_leading_match();
        let input = self.source(coll, scope, leading);
        let limits = *limits;
        self.readers
            .run_checked(false, Some(limits.max_time), move |conn, stop| {
                let mut env = Env {
                    conn,
                    targets,
                    stop,
                    limits,
                    steps: 0,
                    failed: None,
                };
                let out = run(conn, &input, &rest, &mut env);
                // A `$lookup` whose read failed: the store's error, not
                // the pipeline's.
                match env.failed {
                    Some(e) => Err(e),
                    None => out,
                }
            })
            .await
    }

    /// The query for `coll`'s documents within `scope` that match `filter`
    /// (`None` in `sql` when the scope excludes everything).
    fn source(&self, coll: &CollectionName, scope: &Scope, filter: Filter) -> Option<Source> {
        let filter = scope.filter().clone().and(filter);
        if matches!(filter.root(), Node::Nothing) {
            return None;
        }
        let (sql, params) = self.candidate_sql(coll, scope, &filter, None);
        Some(Source {
            sql,
            params,
            filter,
        })
    }

    /// `EXPLAIN QUERY PLAN` of the query an aggregation of `pipeline` reads
    /// its input with (tests and diagnostics: the leading `$match` stages
    /// use the collection's indexes).
    pub async fn explain_aggregate(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &Pipeline,
    ) -> Result<Vec<String>, StoreError> {
        let (leading, _) = pipeline.split_leading_match();
        let Some(src) = self.source(coll, scope, leading) else {
            return Ok(Vec::new());
        };
        self.read(move |c| {
            let mut st = c
                .prepare(&format!("EXPLAIN QUERY PLAN {}", src.sql))
                .map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(src.params.iter()), |r| {
                    r.get::<_, String>(3)
                })
                .map_err(map_err)?;
            rows.map(|r| r.map_err(map_err)).collect()
        })
        .await
    }
}

/// Evaluates `rest` over the rows of `input` (on the reader thread).
fn run(
    conn: &Connection,
    input: &Option<Source>,
    rest: &Pipeline,
    env: &mut Env<'_>,
) -> Result<Vec<Value>, StoreError> {
    let Some(input) = input else {
        return rest.evaluate(std::iter::empty(), env).map_err(pipeline_err);
    };
    // A pipeline that reads only some fields of its input (a `$group`, a
    // `$count`) gets documents holding only those and what the filter
    // reads: parsing whole documents was most of a `$group`'s time.
    let keys = rest.input_fields().map(|mut keys| {
        input.filter.top_level_fields(&mut keys);
        keys
    });
    let mut st = conn.prepare_cached(&input.sql).map_err(map_err)?;
    let mut rows = st
        .query(params_from_iter(input.params.iter()))
        .map_err(map_err)?;
    // A failed read (interrupted, or an I/O error) ends the input; the
    // error is returned instead of what the stages made of a partial input.
    let mut failed: Option<StoreError> = None;
    let docs = std::iter::from_fn(|| {
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => {
                    failed = Some(map_err(e));
                    return None;
                }
            };
            let decoded = match &keys {
                Some(keys) => sql::decode_document_fields(row, keys),
                None => sql::decode_document(row),
            };
            match decoded {
                Ok(Ok(doc)) if input.filter.matches_document(&doc) => return Some(doc.into_json()),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    failed = Some(e);
                    return None;
                }
                Err(e) => {
                    failed = Some(map_err(e));
                    return None;
                }
            }
        }
    });
    let out = rest.evaluate(docs, env);
    if let Some(e) = failed {
        return Err(e);
    }
    out.map_err(pipeline_err)
}

/// A pipeline error as the store reports it (the time limit is `Timeout`,
/// whoever noticed it).
fn pipeline_err(e: PipelineError) -> StoreError {
    match e {
        PipelineError::TimedOut => StoreError::Timeout,
        other => StoreError::Pipeline(other),
    }
}

/// The evaluator's environment on a reader thread.
struct Env<'a> {
    conn: &'a Connection,
    targets: HashMap<String, Option<Source>>,
    stop: &'a dyn Fn() -> bool,
    limits: AggregateLimits,
    steps: u64,
    /// A `$lookup` target's read failed with this.
    failed: Option<StoreError>,
}

impl EvalEnv for Env<'_> {
    fn lookup(&mut self, collection: &str) -> Result<Vec<Value>, PipelineError> {
        let Some(source) = self.targets.get(collection) else {
            return Err(PipelineError::Invalid(format!(
                "$lookup: unknown collection {collection}"
            )));
        };
        let Some(source) = source else {
            // Its scope excludes every document.
            return Ok(Vec::new());
        };
        let (max, mut held, mut over) = (self.limits.max_memory, 0u64, false);
        let mut out = Vec::new();
        let read = scan(
            self.conn,
            &source.sql,
            &source.params,
            &source.filter,
            &Body::Full,
            |found| {
                held = held.saturating_add(found.bytes as u64);
                if held > max {
                    over = true;
                    return false;
                }
                out.push(found.doc.into_json());
                true
            },
        );
        match read {
            Err(StoreError::Timeout) => return Err(PipelineError::TimedOut),
            Err(StoreError::CollectionMissing) => {
                return Err(PipelineError::Invalid(format!(
                    "$lookup: unknown collection {collection}"
                )));
            }
            Err(e) => {
                self.failed = Some(e);
                return Err(PipelineError::Runtime(format!(
                    "$lookup: reading {collection} failed"
                )));
            }
            Ok(()) => {}
        }
        if over {
            return Err(PipelineError::TooMuchMemory { limit: max });
        }
        Ok(out)
    }

    fn check(&mut self, cost: Cost) -> Result<(), PipelineError> {
        match cost {
            Cost::Step => {
                self.steps += 1;
                if self.steps.is_multiple_of(STEPS_PER_CHECK) && (self.stop)() {
                    return Err(PipelineError::TimedOut);
                }
            }
            Cost::Held { bytes, .. } => {
                if bytes > self.limits.max_memory {
                    return Err(PipelineError::TooMuchMemory {
                        limit: self.limits.max_memory,
                    });
                }
            }
        }
        Ok(())
    }

    fn max_results(&self) -> usize {
        self.limits.max_results
    }
}
