//! Aggregations on the MongoDB engine.
//!
//! The scoped pipeline (`mongodb::pipeline::pipeline_to_bson`: the tenant
//! and read filter first, the client view before any user stage, the same
//! at every `$lookup` depth, `$limit` of `max_results + 1`) runs on the
//! server with `maxTimeMS` and `allowDiskUse: false`, so the database does
//! the work ("share the processing").
//!
//! The reference evaluator has the last word on what a pipeline means, so
//! the engine runs the evaluator itself, on a blocking thread fed by a
//! cursor of the scoped input, when the server's answer could differ or
//! cannot be shown:
//! - a filter (read filter or `$match`) whose translation is not exact
//!   (`PipelineBsonError::Inexact`), or `store.mongodb.verify_matches`;
//! - the server refused the pipeline for a reason that depends on the data
//!   (`$divide` by zero, a type error...): the server's text is never shown
//!   to clients, the evaluator then gives its own reason (MongoDB's words),
//!   or the result if it finds none.
//!
//! At most one evaluation per CPU runs at once in a process (others wait):
//! the blocking threads are bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_core::pipeline::{Cost, EvalEnv, Pipeline, PipelineError};
use arca_core::query::{Filter, Node};
use arca_core::{CollectionName, Scope};
use futures_util::TryStreamExt;
use mongodb::bson::{Document as BsonDoc, RawDocumentBuf};
use mongodb::{Collection, Cursor};
use serde_json::Value;

use super::{MongoStore, map_err, next_stored, server_code, unavailable};
use crate::mongodb::pipeline::{PipelineBsonError, pipeline_to_bson};
use crate::mongodb::value;
use crate::{AggregateLimits, LookupScopes, StoreError};

/// Server error codes that say nothing about the pipeline (the server or
/// the network failed): the driver's retryable-read codes, and
/// authorisation, interruption and lock failures.
const INFRASTRUCTURE_CODES: &[i32] = &[
    6, 7, 13, 18, 24, 43, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11601, 11602, 13435, 13436,
];

/// Server error codes for a stage over its memory limit without disk use.
const MEMORY_CODES: &[i32] = &[292, 16819, 16945, 146];

/// The evaluator's steps between two looks at the clock.
const STEPS_PER_CHECK: u64 = 64;

/// Why the server's run gave no result.
enum ServerRun {
    /// The store's own error (time, availability).
    Store(StoreError),
    /// The server refused the pipeline for a reason of the data: the
    /// evaluator gives the answer.
    Refused,
}

impl MongoStore {
    /// `Store::aggregate` (see the module comment).
    pub(super) async fn aggregate_docs(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &Pipeline,
        lookups: &LookupScopes,
        limits: &AggregateLimits,
    ) -> Result<Vec<Value>, StoreError> {
        let started = Instant::now();
        self.known(coll).await?;
        for name in pipeline.lookup_targets() {
            if !lookups.contains_key(name.as_str()) {
                return Err(unknown(name.as_str()));
            }
        }
        if !self.verify {
            let read_filter = |name: &str| lookups.get(name).map(|s| s.filter().clone());
            match pipeline_to_bson(pipeline, scope, &read_filter, limits.max_results as u64) {
                Ok(stages) => match self.on_server(coll, stages, limits).await {
                    Ok(out) => return Ok(out),
                    Err(ServerRun::Store(e)) => return Err(e),
                    Err(ServerRun::Refused) => {}
                },
                Err(PipelineBsonError::Inexact(why)) => {
                    tracing::debug!(%why, "aggregation evaluated by Arca");
                }
                Err(PipelineBsonError::UnknownCollection(name)) => return Err(unknown(&name)),
                Err(PipelineBsonError::Value(why)) => {
                    return Err(StoreError::Pipeline(PipelineError::Invalid(why)));
                }
            }
        }
        let left = limits.max_time.saturating_sub(started.elapsed());
        self.evaluate_here(coll, scope, pipeline, lookups, limits, left)
            .await
    }

    /// Runs the scoped pipeline on the server.
    async fn on_server(
        &self,
        coll: &CollectionName,
        stages: Vec<BsonDoc>,
        limits: &AggregateLimits,
    ) -> Result<Vec<Value>, ServerRun> {
        let started = Instant::now();
        let run = async {
            let mut cursor = self
                .coll(coll)
                .aggregate(stages)
                .max_time(limits.max_time)
                .allow_disk_use(false)
                .with_type::<RawDocumentBuf>()
                .await
                .map_err(server_refusal)?;
            let (mut out, mut held) = (Vec::new(), 0u64);
            while let Some(raw) = cursor.try_next().await.map_err(server_refusal)? {
                if started.elapsed() > limits.max_time {
                    return Err(ServerRun::Store(StoreError::Timeout));
                }
                // Its BSON size stands for what it holds.
                held = held.saturating_add(raw.as_bytes().len() as u64);
                if held > limits.max_memory {
                    return Err(ServerRun::Store(StoreError::Pipeline(
                        PipelineError::TooMuchMemory {
                            limit: limits.max_memory,
                        },
                    )));
                }
                if out.len() == limits.max_results {
                    return Err(ServerRun::Store(StoreError::Pipeline(
                        PipelineError::TooManyResults {
                            limit: limits.max_results,
                        },
                    )));
                }
                let doc = BsonDoc::try_from(raw)
                    .map_err(|e| ServerRun::Store(unavailable(format!("a result: {e}"))))?;
                let json = value::document_to_json(&doc)
                    .map_err(|e| ServerRun::Store(unavailable(format!("a result: {e:?}"))))?;
                out.push(Value::Object(json));
            }
            Ok(out)
        };
        // The server stops at `maxTimeMS`; this bounds the wait for it.
        tokio::time::timeout(limits.max_time + self.timeout, run)
            .await
            .unwrap_or(Err(ServerRun::Store(StoreError::Timeout)))
    }

    /// Runs the reference evaluator over a cursor of the scoped input, on
    /// a blocking thread, within `time` (see the module comment).
    async fn evaluate_here(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        pipeline: &Pipeline,
        lookups: &LookupScopes,
        limits: &AggregateLimits,
        time: Duration,
    ) -> Result<Vec<Value>, StoreError> {
        let deadline = Instant::now() + time;
        let _place = tokio::time::timeout(time, self.evaluators.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|_| unavailable("the evaluators stopped"))?;
        let (leading, rest) = pipeline.split_leading_match();
        let input = match self.source(coll, scope, leading) {
            Some(src) => Some(src.open(time).await?),
            None => None,
        };
        let mut targets = HashMap::new();
        for name in pipeline.lookup_targets() {
            let target_scope = lookups
                .get(name.as_str())
                .ok_or_else(|| unknown(name.as_str()))?;
            targets.insert(
                name.as_str().to_owned(),
                self.source(name, target_scope, Filter::all()),
            );
        }
        let gone = Arc::new(AtomicBool::new(false));
        let _abandon = Abandon(gone.clone());
        let handle = tokio::runtime::Handle::current();
        let limits = *limits;
        tokio::task::spawn_blocking(move || {
            let mut env = Env {
                handle: handle.clone(),
                targets,
                deadline,
                gone,
                limits,
                steps: 0,
                failed: None,
            };
            let out = match input {
                None => rest.evaluate(std::iter::empty(), &mut env),
                Some((mut cursor, filter, exact)) => {
                    let mut failed: Option<StoreError> = None;
                    let docs = std::iter::from_fn(|| {
                        loop {
                            match handle.block_on(next_stored(&mut cursor)) {
                                Ok(Some((doc, _))) if exact || filter.matches_document(&doc) => {
                                    return Some(doc.into_json());
                                }
                                Ok(Some(_)) => continue,
                                Ok(None) => return None,
                                Err(e) => {
                                    failed = Some(e);
                                    return None;
                                }
                            }
                        }
                    });
                    let out = rest.evaluate(docs, &mut env);
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    out
                }
            };
            if let Some(e) = env.failed {
                return Err(e);
            }
            out.map_err(|e| match e {
                PipelineError::TimedOut => StoreError::Timeout,
                other => StoreError::Pipeline(other),
            })
        })
        .await
        .map_err(|_| unavailable("the aggregation's evaluator failed"))?
    }

    /// What reads `coll`'s documents within `scope` that match `filter`
    /// (`None` when the scope excludes everything).
    fn source(&self, coll: &CollectionName, scope: &Scope, filter: Filter) -> Option<Source> {
        let filter = scope.filter().clone().and(filter);
        if matches!(filter.root(), Node::Nothing) {
            return None;
        }
        let (candidates, exact) = self.candidates(scope, &filter);
        Some(Source {
            coll: self.coll(coll),
            candidates,
            filter,
            exact,
        })
    }
}

/// `$lookup` into a collection the caller was not given.
fn unknown(name: &str) -> StoreError {
    StoreError::Pipeline(PipelineError::Invalid(format!(
        "$lookup: unknown collection {name}"
    )))
}

/// Sorts a server error: time, memory, infrastructure, or the pipeline's
/// own (refused: the evaluator answers).
fn server_refusal(e: mongodb::error::Error) -> ServerRun {
    match server_code(&e) {
        Some(50) => ServerRun::Store(StoreError::Timeout),
        Some(code) if MEMORY_CODES.contains(&code) => {
            ServerRun::Store(StoreError::Pipeline(PipelineError::TooMuchMemory {
                // The server's own per-stage limit (100 MiB by default).
                limit: 100 * 1024 * 1024,
            }))
        }
        Some(code) if !INFRASTRUCTURE_CODES.contains(&code) => {
            tracing::debug!(code, "the server refused an aggregation; Arca evaluates it");
            ServerRun::Refused
        }
        _ => ServerRun::Store(map_err(e)),
    }
}

/// A query over one collection, for the evaluator.
struct Source {
    coll: Collection<BsonDoc>,
    candidates: BsonDoc,
    /// The whole filter (scope and leading `$match`).
    filter: Filter,
    /// `candidates` selects exactly the matches.
    exact: bool,
}

impl Source {
    /// Opens the cursor.
    async fn open(self, time: Duration) -> Result<(Cursor<BsonDoc>, Filter, bool), StoreError> {
        let cursor = self
            .coll
            .find(self.candidates)
            // `_id` order, as everywhere (see `pipeline_to_bson`).
            .sort(mongodb::bson::doc! {"_id.i": 1})
            .max_time(time)
            .batch_size(1000)
            .await
            .map_err(map_err)?;
        Ok((cursor, self.filter, self.exact))
    }
}

/// Marks the evaluation abandoned when the request goes away.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The evaluator's environment on the blocking thread.
struct Env {
    handle: tokio::runtime::Handle,
    targets: HashMap<String, Option<Source>>,
    deadline: Instant,
    gone: Arc<AtomicBool>,
    limits: AggregateLimits,
    steps: u64,
    /// A `$lookup` target's read failed with this.
    failed: Option<StoreError>,
}

impl Env {
    fn must_stop(&self) -> bool {
        Instant::now() > self.deadline || self.gone.load(Ordering::Relaxed)
    }
}

impl EvalEnv for Env {
    fn lookup(&mut self, collection: &str) -> Result<Vec<Value>, PipelineError> {
        let Some(source) = self.targets.remove(collection) else {
            return Err(PipelineError::Invalid(format!(
                "$lookup: unknown collection {collection}"
            )));
        };
        let Some(source) = source else {
            return Ok(Vec::new());
        };
        let time = self.deadline.saturating_duration_since(Instant::now());
        let (max, handle) = (self.limits.max_memory, self.handle.clone());
        let read = handle.block_on(async {
            let (mut cursor, filter, exact) = source.open(time).await?;
            let (mut out, mut held) = (Vec::new(), 0u64);
            while let Some((doc, bytes)) = next_stored(&mut cursor).await? {
                if self.must_stop() {
                    return Ok(Err(PipelineError::TimedOut));
                }
                if exact || filter.matches_document(&doc) {
                    held = held.saturating_add(bytes as u64);
                    if held > max {
                        return Ok(Err(PipelineError::TooMuchMemory { limit: max }));
                    }
                    out.push(doc.into_json());
                }
            }
            Ok::<_, StoreError>(Ok(out))
        });
        match read {
            Ok(out) => out,
            Err(StoreError::Timeout) => Err(PipelineError::TimedOut),
            Err(e) => {
                self.failed = Some(e);
                Err(PipelineError::Runtime(format!(
                    "$lookup: reading {collection} failed"
                )))
            }
        }
    }

    fn check(&mut self, cost: Cost) -> Result<(), PipelineError> {
        match cost {
            Cost::Step => {
                self.steps += 1;
                if self.steps.is_multiple_of(STEPS_PER_CHECK) && self.must_stop() {
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
