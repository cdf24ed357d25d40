//! The pipeline table: each case names the MongoDB rule it checks and the
//! exact output (or the runtime error) the reference evaluator must give,
//! over three small collections full of missing fields, nulls, arrays,
//! mixed numeric kinds and mixed types. The same table
//! (`pipeline_cases.json`) runs through the MongoDB translation against a
//! MongoDB-compatible server in `arca-store`'s `mongo_pipeline` test.
//!
//! Documents are compared as JSON text, so field order and number kinds
//! (`2` against `2.0`) count. The one normalisation: a case may list
//! `unordered` fields, whose arrays are compared as multisets, where
//! MongoDB leaves the order unspecified (`$addToSet`).

use arca_core::pipeline::{InMemoryEnv, Pipeline, PipelineError};
use serde_json::{Map, Value};

fn table() -> Value {
    serde_json::from_str(include_str!("pipeline_cases.json")).expect("table")
}

/// A table document as clients see it: `_id`, the system fields (the
/// table's defaults unless the document gives its own), then the body.
fn client_view(doc: &Value, defaults: &Value) -> Value {
    let mut out = Map::new();
    out.insert("_id".into(), doc["_id"].clone());
    for (k, v) in defaults.as_object().expect("defaults") {
        out.insert(k.clone(), doc.get(k).unwrap_or(v).clone());
    }
    for (k, v) in doc.as_object().expect("document") {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// A client-view document with only its system fields and `keys`.
fn prune(doc: &Value, keys: &[&str]) -> Value {
    let system = ["_id", "_rev", "_created_at", "_updated_at", "_owner"];
    let kept = doc
        .as_object()
        .expect("document")
        .iter()
        .filter(|(k, _)| system.contains(&k.as_str()) || keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

/// Sorts the arrays of the `unordered` fields (by their JSON text).
fn normalise(docs: &mut [Value], unordered: &[Value]) {
    for d in docs {
        for f in unordered.iter().filter_map(Value::as_str) {
            if let Some(Value::Array(items)) = d.get_mut(f) {
                items.sort_by_key(|v| serde_json::to_string(v).unwrap_or_default());
            }
        }
    }
}

#[test]
fn every_case_of_the_table_gives_its_expected_output() {
    let table = table();
    let defaults = &table["defaults"];
    let mut env = InMemoryEnv::new();
    for (name, docs) in table["collections"].as_object().expect("collections") {
        let docs = docs
            .as_array()
            .expect("documents")
            .iter()
            .map(|d| client_view(d, defaults))
            .collect();
        env.collections.insert(name.clone(), docs);
    }
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut pruned_cases = 0;
    for case in cases {
        let rule = case["rule"].as_str().expect("rule");
        let collection = case["collection"].as_str().unwrap_or("people");
        let pipeline = Pipeline::parse(&case["pipeline"]).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let input = env.collections[collection].clone();
        if let Some(keys) = pipeline.input_fields() {
            // An engine may parse only the fields the pipeline reads (and
            // the system fields): the output must not change.
            pruned_cases += 1;
            let pruned: Vec<Value> = input.iter().map(|d| prune(d, &keys)).collect();
            let whole = pipeline.evaluate(input.clone().into_iter(), &mut env);
            let part = pipeline.evaluate(pruned.into_iter(), &mut env);
            if format!("{whole:?}") != format!("{part:?}") {
                failures.push(format!(
                    "{rule}: over only {keys:?}:\n   got {part:?}\n  want {whole:?}"
                ));
            }
        }
        let got = pipeline.evaluate(input.into_iter(), &mut env);
        let unordered = case["unordered"].as_array().cloned().unwrap_or_default();
        match (got, case.get("error")) {
            (Ok(mut docs), None) => {
                let mut want = case["expect"].as_array().expect("expect").clone();
                normalise(&mut docs, &unordered);
                normalise(&mut want, &unordered);
                let (got, want) = (
                    serde_json::to_string(&docs).expect("json"),
                    serde_json::to_string(&want).expect("json"),
                );
                if got != want {
                    failures.push(format!("{rule}:\n   got {got}\n  want {want}"));
                }
            }
            (Err(PipelineError::Runtime(m)), Some(want)) => {
                let want = want.as_str().expect("error text");
                if !m.contains(want) {
                    failures.push(format!("{rule}: error \"{m}\", want one with \"{want}\""));
                }
            }
            (other, want) => failures.push(format!("{rule}: got {other:?}, want {want:?}")),
        }
    }
    assert!(
        pruned_cases >= 15,
        "only {pruned_cases} cases read some fields"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_stage_accumulator_and_operator_appears_in_the_table() {
    let text = include_str!("pipeline_cases.json");
    for name in [
        "$match",
        "$project",
        "$addFields",
        "\"$set\"",
        "$unset",
        "$group",
        "$sort",
        "$limit",
        "$skip",
        "$unwind",
        "\"$count\"",
        "$lookup",
        "$sum",
        "$avg",
        "$min",
        "$max",
        "$first",
        "$last",
        "$push",
        "$addToSet",
        "$add\"",
        "$subtract",
        "$multiply",
        "$divide",
        "$mod",
        "$concat",
        "$toLower",
        "$toUpper",
        "$cond",
        "$ifNull",
        "$size",
        "$eq",
        "$ne",
        "$gt\"",
        "$gte",
        "$lt\"",
        "$lte",
        "$and",
        "$or",
        "$not",
        "$in\"",
        "$literal",
        "$$ROOT",
        "$$CURRENT",
        "\"let\"",
        "includeArrayIndex",
        "preserveNullAndEmptyArrays",
    ] {
        assert!(text.contains(name), "no case uses {name}");
    }
}
