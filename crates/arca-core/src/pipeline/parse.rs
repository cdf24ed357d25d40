//! Parsing a pipeline specification into stages: the body's shape, the
//! stage allow-list, each stage's options (MongoDB's rules and messages
//! where it has them), and the limits on size and nesting. Expressions,
//! projections and `$group` parse in their own files.

use serde_json::Value;

use crate::name::CollectionName;
use crate::query::{FieldPath, Filter};

use super::expr::{Expr, Scope, check_field_name, check_var_name, parse_path};
use super::group::parse_group;
use super::project::{parse_add_fields, parse_project, parse_unset};
use super::{
    Join, Lookup, MAX_LOOKUP_DEPTH, MAX_NODES, MAX_SORT_KEYS, MAX_STAGES, Pipeline, PipelineError,
    Stage, Unwind,
};

/// Deepest JSON a specification may nest (a guard for values built in
/// code; JSON parsed from a request nests at most 128 levels already).
const MAX_JSON_DEPTH: usize = 512;

const ALLOWED_STAGES: &str =
    "$match $project $addFields $set $unset $group $sort $limit $skip $unwind $count $lookup";

fn invalid<T>(msg: impl Into<String>) -> Result<T, PipelineError> {
    Err(PipelineError::Invalid(msg.into()))
}

/// Parses an aggregate body: `{"pipeline": [...]}` or the array itself.
pub(crate) fn parse_body(body: &Value) -> Result<Pipeline, PipelineError> {
    let stages = match body {
        Value::Array(items) => items,
        Value::Object(m) => {
            if let Some(k) = m.keys().find(|k| k.as_str() != "pipeline") {
                return invalid(format!(
                    "unknown member \"{k}\" in the aggregate body (it is {{\"pipeline\": [stages]}})"
                ));
            }
            match m.get("pipeline") {
                Some(Value::Array(items)) => items,
                Some(_) => return invalid("\"pipeline\" must be an array of stages"),
                None => return invalid("the aggregate body needs \"pipeline\": [stages]"),
            }
        }
        _ => return invalid("an aggregate body is an object {\"pipeline\": [stages]}"),
    };
    count_nodes(body)?;
    let stages = parse_stages(stages, 0, &mut Scope::default())?;
    Ok(Pipeline { stages })
}

/// Counts the JSON values of the whole specification (without recursion,
/// so a hostile nesting cannot exhaust the stack here).
fn count_nodes(root: &Value) -> Result<(), PipelineError> {
    let mut stack: Vec<(&Value, usize)> = vec![(root, 1)];
    let mut n = 0usize;
    while let Some((v, depth)) = stack.pop() {
        n += 1;
        if n > MAX_NODES {
            return invalid(format!(
                "the pipeline has more than {MAX_NODES} JSON values (the limit)"
            ));
        }
        if depth > MAX_JSON_DEPTH {
            return invalid(format!(
                "the pipeline nests deeper than {MAX_JSON_DEPTH} levels of JSON"
            ));
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|x| (x, depth + 1))),
            Value::Object(m) => stack.extend(m.values().map(|x| (x, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Parses the stages of a pipeline at `$lookup` depth `depth` (0 at the
/// top), with the `let` variables of `scope` visible.
fn parse_stages(
    items: &[Value],
    depth: usize,
    scope: &mut Scope,
) -> Result<Vec<super::Stage>, PipelineError> {
    if items.len() > MAX_STAGES {
        return invalid(format!(
            "a pipeline has at most {MAX_STAGES} stages (the limit), this one has {}",
            items.len()
        ));
    }
    let mut stages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object().filter(|m| m.len() == 1) else {
            return invalid(format!(
                "stage {i}: a stage is an object with exactly one field, the stage name"
            ));
        };
        let Some((name, spec)) = obj.iter().next() else {
            return invalid(format!("stage {i}: empty stage"));
        };
        let stage = parse_stage(name, spec, depth, scope)
            .map_err(|e| prefix(e, &format!("stage {i} ({name})")))?;
        stages.push(stage);
    }
    Ok(stages)
}

fn prefix(e: PipelineError, at: &str) -> PipelineError {
    match e {
        PipelineError::Invalid(m) => PipelineError::Invalid(format!("{at}: {m}")),
        other => other,
    }
}

fn parse_stage(
    name: &str,
    spec: &Value,
    depth: usize,
    scope: &mut Scope,
) -> Result<Stage, PipelineError> {
    Ok(match name {
        "$match" => Stage::Match(
            Filter::parse(spec).map_err(|e| PipelineError::Invalid(format!("$match: {}", e.0)))?,
        ),
        "$project" => Stage::Project(parse_project(spec, scope)?),
        "$addFields" | "$set" => Stage::AddFields(parse_add_fields(name, spec, scope)?),
        "$unset" => Stage::Unset(parse_unset(spec)?),
        "$group" => Stage::Group(parse_group(spec, scope)?),
        "$sort" => Stage::Sort(parse_sort(spec)?),
        "$limit" => {
            let n = parse_count_arg("$limit", spec)?;
            if n == 0 {
                return invalid("the limit must be positive");
            }
            Stage::Limit(n)
        }
        "$skip" => Stage::Skip(parse_count_arg("$skip", spec)?),
        "$unwind" => Stage::Unwind(parse_unwind(spec)?),
        "$count" => Stage::Count(parse_count(spec)?),
        "$lookup" => Stage::Lookup(parse_lookup(spec, depth, scope)?),
        "$out" | "$merge" => {
            return invalid(format!("stage {name} writes data and is not allowed"));
        }
        "$facet" | "$unionWith" | "$graphLookup" => {
            return invalid(format!(
                "stage {name} is not allowed (allowed: {ALLOWED_STAGES})"
            ));
        }
        other => {
            return invalid(format!(
                "unknown or unsupported stage {other} (allowed: {ALLOWED_STAGES})"
            ));
        }
    })
}

/// A non-negative integral count (`$limit`, `$skip`): an integer, or a
/// double with no fraction; large values saturate.
fn parse_count_arg(stage: &str, v: &Value) -> Result<u64, PipelineError> {
    let Some(n) = v.as_number() else {
        return invalid(format!("{stage} takes a non-negative integer"));
    };
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.as_i64().is_some() {
        return invalid(format!("{stage} takes a non-negative integer, not {n}"));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as u64),
        _ => invalid(format!("{stage} takes a non-negative integer, not {n}")),
    }
}

fn parse_sort(spec: &Value) -> Result<Vec<(FieldPath, bool)>, PipelineError> {
    let Some(obj) = spec.as_object() else {
        return invalid("$sort takes an object of field: 1 or -1");
    };
    if obj.is_empty() {
        return invalid("$sort needs at least one sort key");
    }
    if obj.len() > MAX_SORT_KEYS {
        return invalid(format!(
            "$sort takes at most {MAX_SORT_KEYS} keys (the limit)"
        ));
    }
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let path = parse_path(k, "$sort")?;
        let desc = match v.as_f64() {
            Some(1.0) => false,
            Some(-1.0) => true,
            _ if v.is_object() => {
                return invalid(format!("$sort: {k}: $meta sort keys are not supported"));
            }
            _ => {
                return invalid(format!(
                    "$sort: {k}: the order must be 1 (ascending) or -1 (descending)"
                ));
            }
        };
        out.push((path, desc));
    }
    Ok(out)
}

fn parse_unwind(spec: &Value) -> Result<Unwind, PipelineError> {
    let mut path = None;
    let mut include_array_index = None;
    let mut preserve_null_and_empty_arrays = false;
    match spec {
        Value::String(s) => path = Some(s.as_str()),
        Value::Object(m) => {
            for (k, v) in m {
                match k.as_str() {
                    "path" => {
                        path = Some(v.as_str().ok_or_else(|| {
                            PipelineError::Invalid("$unwind: path must be a string".into())
                        })?);
                    }
                    "includeArrayIndex" => {
                        let s = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                            PipelineError::Invalid(
                                "$unwind: includeArrayIndex must be a non-empty string".into(),
                            )
                        })?;
                        if s.starts_with('$') {
                            return invalid(format!(
                                "$unwind: includeArrayIndex should not be prefixed with a '$': {s}"
                            ));
                        }
                        include_array_index = Some(parse_path(s, "$unwind includeArrayIndex")?);
                    }
                    "preserveNullAndEmptyArrays" => {
                        preserve_null_and_empty_arrays = v.as_bool().ok_or_else(|| {
                            PipelineError::Invalid(
                                "$unwind: preserveNullAndEmptyArrays must be true or false".into(),
                            )
                        })?;
                    }
                    other => return invalid(format!("$unwind: unrecognized option {other}")),
                }
            }
        }
        _ => return invalid("$unwind takes a field path or an object of options"),
    }
    let Some(path) = path else {
        return invalid("$unwind: no path specified");
    };
    let Some(rest) = path.strip_prefix('$') else {
        return invalid(format!(
            "$unwind: the path must be prefixed with a '$': {path}"
        ));
    };
    Ok(Unwind {
        path: parse_path(rest, "$unwind path")?,
        include_array_index,
        preserve_null_and_empty_arrays,
    })
}

fn parse_count(spec: &Value) -> Result<String, PipelineError> {
    let Some(name) = spec.as_str().filter(|s| !s.is_empty()) else {
        return invalid("$count takes a non-empty field name");
    };
    check_field_name(name).map_err(|e| PipelineError::Invalid(format!("$count: {e}")))?;
    Ok(name.to_owned())
}

fn parse_lookup(spec: &Value, depth: usize, scope: &mut Scope) -> Result<Lookup, PipelineError> {
    let Some(m) = spec.as_object() else {
        return invalid("$lookup takes an object");
    };
    if let Some(k) = m.keys().find(|k| {
        !matches!(
            k.as_str(),
            "from" | "localField" | "foreignField" | "let" | "pipeline" | "as"
        )
    }) {
        return invalid(format!("unknown argument to $lookup: {k}"));
    }
    if depth + 1 > MAX_LOOKUP_DEPTH {
        return invalid(format!(
            "$lookup nests deeper than {MAX_LOOKUP_DEPTH} levels (the limit)"
        ));
    }
    let from = match m.get("from") {
        Some(Value::String(s)) => CollectionName::parse(s).map_err(|e| {
            PipelineError::Invalid(format!(
                "$lookup from: \"{s}\" is not a collection name ({e})"
            ))
        })?,
        Some(_) => return invalid("$lookup from must be a collection name"),
        None => return invalid("$lookup needs from"),
    };
    let as_field = match m.get("as") {
        Some(Value::String(s)) => parse_path(s, "$lookup as")?,
        _ => return invalid("$lookup needs as, a field path"),
    };
    let path_arg = |key: &str| -> Result<Option<FieldPath>, PipelineError> {
        match m.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(parse_path(s, &format!("$lookup {key}"))?)),
            Some(_) => invalid(format!("$lookup {key} must be a field path")),
        }
    };
    let join = match (path_arg("localField")?, path_arg("foreignField")?) {
        (Some(local_field), Some(foreign_field)) => Some(Join {
            local_field,
            foreign_field,
        }),
        (None, None) => None,
        _ => return invalid("$lookup needs both localField and foreignField, or neither"),
    };
    let mut lets = Vec::new();
    if let Some(l) = m.get("let") {
        let Some(obj) = l.as_object() else {
            return invalid("$lookup let must be an object of variable: expression");
        };
        if !m.contains_key("pipeline") {
            return invalid("$lookup with let must also have a pipeline");
        }
        for (name, e) in obj {
            check_var_name(name)
                .map_err(|e| PipelineError::Invalid(format!("$lookup let: {e}")))?;
            // Evaluated against the input document, with the outer scope.
            lets.push((name.clone(), Expr::parse(e, 0, scope)?));
        }
    }
    let pipeline = match m.get("pipeline") {
        None => None,
        Some(Value::Array(items)) => {
            let before = scope.vars.len();
            scope.vars.extend(lets.iter().map(|(n, _)| n.clone()));
            let parsed = parse_stages(items, depth + 1, scope);
            scope.vars.truncate(before);
            Some(Pipeline {
                stages: parsed.map_err(|e| prefix(e, "pipeline"))?,
            })
        }
        Some(_) => return invalid("$lookup pipeline must be an array of stages"),
    };
    if join.is_none() && pipeline.is_none() {
        return invalid("$lookup needs localField and foreignField, or a pipeline");
    }
    Ok(Lookup {
        from,
        join,
        lets,
        pipeline,
        as_field,
    })
}
