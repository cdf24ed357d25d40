//! Unit tests of the pipeline as a whole: every refusal names what it
//! refuses, every limit is enforced and named, and the evaluator's edge
//! cases (streaming, budgets, hostile sizes, lookups at depth). The
//! behaviour of each stage, accumulator and expression over a shared data
//! set is in the table (`tests/pipeline_cases.json`).

use std::cell::Cell;

use serde_json::{Value, json};

use super::*;

fn parse(v: Value) -> Result<Pipeline, PipelineError> {
    Pipeline::parse(&v)
}

fn refused(v: Value, needle: &str) {
    match parse(v.clone()) {
        Err(PipelineError::Invalid(m)) => {
            assert!(m.contains(needle), "{v}: \"{m}\" should name {needle}")
        }
        other => panic!("{v} must be refused naming {needle}, got {other:?}"),
    }
}

fn eval_with(
    p: Value,
    docs: Vec<Value>,
    env: &mut InMemoryEnv,
) -> Result<Vec<Value>, PipelineError> {
    parse(p).expect("pipeline").evaluate(docs.into_iter(), env)
}

fn eval(p: Value, docs: Vec<Value>) -> Result<Vec<Value>, PipelineError> {
    eval_with(p, docs, &mut InMemoryEnv::new())
}

#[test]
fn forbidden_and_unknown_stages_are_refused_by_name() {
    refused(json!([{"$out": "x"}]), "$out");
    refused(json!([{"$merge": {"into": "x"}}]), "$merge");
    refused(json!([{"$facet": {}}]), "$facet");
    refused(json!([{"$unionWith": "x"}]), "$unionWith");
    refused(json!([{"$graphLookup": {}}]), "$graphLookup");
    refused(json!([{"$replaceRoot": {"newRoot": "$a"}}]), "$replaceRoot");
    refused(json!([{"$collStats": {}}]), "$collStats");
    refused(json!([{"$match": {"$expr": {"$eq": ["$a", 1]}}}]), "$expr");
    refused(json!([{"$match": {"$where": "1"}}]), "$where");
    refused(json!([{"$match": {"a": {"$function": {}}}}]), "$function");
    refused(
        json!([{"$project": {"a": {"$function": {"body": "x", "args": [], "lang": "js"}}}}]),
        "$function",
    );
    refused(
        json!([{"$group": {"_id": null, "a": {"$accumulator": {}}}}]),
        "$accumulator",
    );
    refused(json!([{"$set": {"a": "$$NOW"}}]), "$$NOW");
    refused(json!([{"$set": {"a": {"$regexMatch": {}}}}]), "$regexMatch");
    refused(json!([{"$match": {}, "$limit": 1}]), "exactly one field");
    refused(json!([1]), "exactly one field");
    refused(
        json!({"pipeline": [], "allowDiskUse": true}),
        "allowDiskUse",
    );
    refused(json!({"pipeline": {}}), "array");
    refused(json!("x"), "pipeline");
    refused(
        json!([{"$lookup": {"from": "b", "as": "j", "pipeline": [{"$out": "c"}]}}]),
        "$out",
    );
    refused(
        json!([{"$lookup": {"from": "b", "as": "j", "pipeline": [{"$unionWith": "c"}]}}]),
        "$unionWith",
    );
    // The stage's position and name lead the message.
    refused(
        json!([{"$limit": 1}, {"$limit": 0}]),
        "stage 1 ($limit): the limit must be positive",
    );
}

#[test]
fn stage_options_are_checked() {
    refused(json!([{"$limit": -1}]), "non-negative");
    refused(json!([{"$limit": 1.5}]), "non-negative");
    refused(json!([{"$skip": "1"}]), "non-negative");
    refused(json!([{"$sort": {}}]), "at least one");
    refused(json!([{"$sort": {"a": 2}}]), "1 (ascending)");
    refused(json!([{"$sort": {"a": {"$meta": "textScore"}}}]), "$meta");
    refused(json!([{"$unwind": "a"}]), "prefixed with a '$'");
    refused(
        json!([{"$unwind": {"path": "$a", "x": 1}}]),
        "unrecognized option x",
    );
    refused(
        json!([{"$unwind": {"path": "$a", "includeArrayIndex": "$i"}}]),
        "includeArrayIndex",
    );
    refused(
        json!([{"$unwind": {"path": "$a", "preserveNullAndEmptyArrays": 1}}]),
        "true or false",
    );
    refused(json!([{"$count": ""}]), "$count");
    refused(json!([{"$count": "a.b"}]), "'.'");
    refused(json!([{"$count": "$n"}]), "'$'");
    refused(json!([{"$lookup": {"from": "b", "as": "j"}}]), "pipeline");
    refused(
        json!([{"$lookup": {"from": "b", "localField": "a", "as": "j"}}]),
        "both",
    );
    refused(
        json!([{"$lookup": {"from": "B!", "localField": "a", "foreignField": "b", "as": "j"}}]),
        "collection name",
    );
    refused(
        json!([{"$lookup": {"from": {"db": "x", "coll": "y"}, "localField": "a", "foreignField": "b", "as": "j"}}]),
        "collection name",
    );
    refused(
        json!([{"$lookup": {"from": "b", "localField": "a", "foreignField": "b", "as": "j", "let": {"x": 1}}}]),
        "let",
    );
    refused(
        json!([{"$lookup": {"from": "b", "let": {"X": 1}, "pipeline": [], "as": "j"}}]),
        "'X'",
    );
    refused(
        json!([{"$lookup": {"from": "b", "pipeline": [], "as": "j", "on": 1}}]),
        "unknown argument to $lookup: on",
    );
    refused(
        json!([{"$lookup": {"from": "b", "pipeline": [{"$set": {"a": "$$x"}}], "as": "j"}}]),
        "undefined variable $$x",
    );
}

#[test]
fn limits_are_enforced_and_named() {
    let stages: Vec<Value> = (0..=MAX_STAGES).map(|_| json!({"$skip": 0})).collect();
    refused(Value::Array(stages), "at most 50 stages");
    let ok: Vec<Value> = (0..MAX_STAGES).map(|_| json!({"$skip": 0})).collect();
    assert!(parse(Value::Array(ok)).is_ok());

    // Lookups nest four deep, not five.
    let nest = |levels: usize| {
        let mut inner = json!([]);
        for _ in 0..levels {
            inner = json!([{"$lookup": {"from": "b", "pipeline": inner, "as": "j"}}]);
        }
        inner
    };
    assert!(parse(nest(MAX_LOOKUP_DEPTH)).is_ok());
    refused(nest(MAX_LOOKUP_DEPTH + 1), "deeper than 4 levels");

    let mut deep = json!("$a");
    for _ in 0..=MAX_EXPRESSION_DEPTH {
        deep = json!({"$toLower": deep});
    }
    refused(json!([{"$set": {"x": deep}}]), "deeper than 64 levels");

    let wide: Vec<Value> = (0..MAX_NODES).map(|i| json!(i)).collect();
    refused(
        json!([{"$set": {"x": {"$literal": wide}}}]),
        "more than 10000 JSON values",
    );

    let keys: serde_json::Map<String, Value> = (0..=MAX_SORT_KEYS)
        .map(|i| (format!("k{i}"), json!(1)))
        .collect();
    refused(json!([{"$sort": keys}]), "at most 32 keys");
}

#[test]
fn hostile_nesting_never_overflows_the_stack() {
    // Built in code, far deeper than any request body can be (serde_json
    // refuses more than 128 levels when parsing).
    let mut v = json!(1);
    for _ in 0..100_000 {
        v = Value::Array(vec![v]);
    }
    let mut literal = serde_json::Map::new();
    literal.insert("$literal".into(), v);
    let mut set = serde_json::Map::new();
    set.insert("x".into(), Value::Object(literal));
    let mut stage = serde_json::Map::new();
    stage.insert("$set".into(), Value::Object(set));
    let mut body = Value::Array(vec![Value::Object(stage)]);
    match Pipeline::parse(&body) {
        Err(PipelineError::Invalid(m)) => assert!(m.contains("512 levels"), "{m}"),
        other => panic!("must be refused: {other:?}"),
    }
    // Dropping such a value recurses in serde_json: take it apart by hand.
    let mut v = body[0]["$set"]["x"]["$literal"].take();
    while let Value::Array(mut items) = v {
        v = items.pop().unwrap_or(Value::Null);
    }
}

#[test]
fn lookup_targets_are_listed_at_every_depth() {
    let p = parse(json!([
        {"$lookup": {"from": "b", "localField": "x", "foreignField": "y", "as": "j"}},
        {"$lookup": {"from": "c", "pipeline": [
            {"$lookup": {"from": "d", "pipeline": [
                {"$lookup": {"from": "b", "localField": "x", "foreignField": "y", "as": "k"}}
            ], "as": "k"}}
        ], "as": "j2"}}
    ]))
    .expect("pipeline");
    let names: Vec<&str> = p.lookup_targets().iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["b", "c", "d"]);
}

#[test]
fn let_variables_are_visible_in_nested_pipelines_only() {
    assert!(
        parse(
            json!([{"$lookup": {"from": "b", "let": {"v": "$a"}, "pipeline": [
        {"$lookup": {"from": "c", "pipeline": [{"$set": {"x": "$$v"}}], "as": "k"}}
    ], "as": "j"}}])
        )
        .is_ok()
    );
    refused(
        json!([
            {"$lookup": {"from": "b", "let": {"v": "$a"}, "pipeline": [], "as": "j"}},
            {"$set": {"x": "$$v"}}
        ]),
        "undefined variable $$v",
    );
}

#[test]
fn leading_matches_split_off() {
    let p = parse(
        json!([{"$match": {"a": 1}}, {"$match": {"b": 2}}, {"$limit": 1}, {"$match": {"c": 3}}]),
    )
    .expect("pipeline");
    let (filter, rest) = p.split_leading_match();
    assert!(filter.matches(&json!({"a": 1, "b": 2})));
    assert!(!filter.matches(&json!({"a": 1})));
    let names: Vec<&str> = rest.stages().iter().map(Stage::name).collect();
    assert_eq!(names, ["$limit", "$match"]);
    let (all, same) = parse(json!([{"$skip": 1}]))
        .expect("p")
        .split_leading_match();
    assert!(all.is_all());
    assert_eq!(same.stages().len(), 1);
}

#[test]
fn a_satisfied_limit_stops_reading_the_input() {
    let read = Cell::new(0);
    let input = (0..1000).map(|i| {
        read.set(read.get() + 1);
        json!({"i": i})
    });
    let p = parse(json!([{"$match": {"i": {"$gte": 5}}}, {"$limit": 3}])).expect("p");
    let out = p.evaluate(input, &mut InMemoryEnv::new()).expect("eval");
    assert_eq!(out, vec![json!({"i": 5}), json!({"i": 6}), json!({"i": 7})]);
    assert_eq!(read.get(), 8);
}

#[test]
fn huge_counts_and_overflowing_arithmetic_are_values_not_panics() {
    let docs = vec![json!({"a": i64::MIN, "b": -1, "c": i64::MAX})];
    let out = eval(
        json!([
            {"$skip": u64::MAX}
        ]),
        docs.clone(),
    )
    .expect("eval");
    assert!(out.is_empty());
    let out = eval(json!([{"$limit": 1e300}, {"$skip": 9.0e18}]), docs.clone()).expect("eval");
    assert!(out.is_empty());
    let out = eval(
        json!([{"$project": {
            "_id": 0,
            "m": {"$mod": ["$a", "$b"]},
            "x": {"$multiply": ["$c", "$c"]},
            "s": {"$subtract": ["$a", "$c"]},
            "n": {"$multiply": ["$a", "$b"]},
            "p": {"$add": ["$c", "$c", "$a"]}
        }}]),
        docs,
    )
    .expect("eval");
    assert_eq!(
        out,
        vec![json!({
            "m": 0,
            "x": 8.507059173023462e37,
            "s": -1.8446744073709552e19,
            "n": 9.223372036854776e18,
            "p": 9.223372036854776e18
        })]
    );
    let e = eval(
        json!([{"$set": {"x": {"$multiply": [1e300, 1e300]}}}]),
        vec![json!({})],
    )
    .expect_err("inf");
    assert!(
        matches!(e, PipelineError::Runtime(ref m) if m.contains("finite")),
        "{e}"
    );
}

#[test]
fn runtime_errors_carry_mongodb_reasons() {
    let e = eval(
        json!([{"$set": {"x": {"$divide": ["$a", 0]}}}]),
        vec![json!({"a": 1})],
    )
    .expect_err("zero");
    assert_eq!(e, PipelineError::Runtime("can't $divide by zero".into()));
    // An error only on some data: documents before it are fine.
    let e = eval(
        json!([{"$set": {"x": {"$size": "$a"}}}]),
        vec![json!({"a": []}), json!({"a": 3})],
    )
    .expect_err("size");
    assert_eq!(
        e,
        PipelineError::Runtime(
            "The argument to $size must be an array. Type of argument was: int".into()
        )
    );
}

#[test]
fn documents_cannot_grow_past_the_limits() {
    // Each stage doubles the document: it must stop at 16 MiB, not run out
    // of memory.
    let stages: Vec<Value> = (0..40)
        .map(|_| json!({"$set": {"a": ["$a", "$a"]}}))
        .collect();
    let e =
        eval(Value::Array(stages), vec![json!({"a": "0123456789abcdef"})]).expect_err("too big");
    assert!(
        matches!(e, PipelineError::Runtime(ref m) if m.contains("16 MiB")),
        "{e}"
    );
    // Each stage nests it one level deeper.
    let stages: Vec<Value> = (0..50)
        .map(|_| json!({"$set": {"a": [[["$a"]]]}}))
        .collect();
    let e = eval(Value::Array(stages), vec![json!({"a": 1})]).expect_err("too deep");
    assert!(
        matches!(e, PipelineError::Runtime(ref m) if m.contains("deeper than 120")),
        "{e}"
    );
    // Unwinding a long array streams: a $count after it holds nothing.
    let big: Vec<Value> = (0..50_000).map(|i| json!(i)).collect();
    let out = eval(
        json!([{"$unwind": "$a"}, {"$count": "n"}]),
        vec![json!({"a": big, "pad": "x".repeat(1000)})],
    )
    .expect("eval");
    assert_eq!(out, vec![json!({"n": 50_000})]);
}

#[test]
fn budgets_stop_the_evaluation() {
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"i": i, "s": "x".repeat(100)}))
        .collect();
    let mut env = InMemoryEnv::new();
    env.max_memory = 10_000;
    let e = eval_with(json!([{"$sort": {"i": -1}}]), docs.clone(), &mut env).expect_err("memory");
    assert_eq!(e, PipelineError::TooMuchMemory { limit: 10_000 });
    let mut env = InMemoryEnv::new();
    env.max_memory = 10_000;
    let e = eval_with(
        json!([{"$group": {"_id": null, "all": {"$push": "$$ROOT"}}}]),
        docs.clone(),
        &mut env,
    )
    .expect_err("memory");
    assert_eq!(e, PipelineError::TooMuchMemory { limit: 10_000 });
    let mut env = InMemoryEnv::new();
    env.max_steps = 50;
    let e = eval_with(json!([{"$match": {}}]), docs.clone(), &mut env).expect_err("time");
    assert_eq!(e, PipelineError::TimedOut);
    let mut env = InMemoryEnv::new();
    env.max_results = 199;
    let e = eval_with(json!([]), docs.clone(), &mut env).expect_err("results");
    assert_eq!(e, PipelineError::TooManyResults { limit: 199 });
    env.max_results = 200;
    assert_eq!(
        eval_with(json!([]), docs, &mut env).expect("eval").len(),
        200
    );
}

#[test]
fn lookups_join_at_depth_with_variables() {
    let mut env = InMemoryEnv::new();
    env.collections.insert(
        "b".into(),
        vec![
            json!({"_id": "b1", "k": 1, "c": "x"}),
            json!({"_id": "b2", "k": [1, 2], "c": "y"}),
            json!({"_id": "b3"}),
        ],
    );
    env.collections.insert(
        "c".into(),
        vec![
            json!({"_id": "c1", "name": "x"}),
            json!({"_id": "c2", "name": "y"}),
        ],
    );
    let out = eval_with(
        json!([
            {"$lookup": {"from": "b", "localField": "k", "foreignField": "k", "let": {"outer": "$_id"},
                "pipeline": [
                    {"$lookup": {"from": "c", "localField": "c", "foreignField": "name", "let": {"mid": "$_id"},
                        "pipeline": [{"$project": {"_id": 0, "o": "$$outer", "m": "$$mid", "n": "$name"}}], "as": "cs"}},
                    {"$project": {"cs": 1}}
                ], "as": "bs"}},
            {"$lookup": {"from": "b", "localField": "nope", "foreignField": "k", "as": "missing"}},
            {"$project": {"bs": 1, "missing._id": 1}}
        ]),
        vec![json!({"_id": "a1", "k": 2}), json!({"_id": "a2", "k": [1]})],
        &mut env,
    )
    .expect("eval");
    assert_eq!(
        out,
        vec![
            json!({"_id": "a1", "bs": [{"_id": "b2", "cs": [{"o": "a1", "m": "b2", "n": "y"}]}], "missing": [{"_id": "b3"}]}),
            json!({"_id": "a2", "bs": [
                {"_id": "b1", "cs": [{"o": "a2", "m": "b1", "n": "x"}]},
                {"_id": "b2", "cs": [{"o": "a2", "m": "b2", "n": "y"}]}
            ], "missing": [{"_id": "b3"}]}),
        ]
    );
    let e = eval_with(
        json!([{"$lookup": {"from": "zzz", "localField": "k", "foreignField": "k", "as": "j"}}]),
        vec![json!({})],
        &mut env,
    )
    .expect_err("unknown");
    assert!(matches!(e, PipelineError::Invalid(ref m) if m.contains("zzz")));
}

#[test]
fn joined_documents_are_bounded_per_input_document() {
    let mut env = InMemoryEnv::new();
    let big: Vec<Value> = (0..40)
        .map(|i| json!({"_id": i, "k": 1, "s": "x".repeat(1 << 19)}))
        .collect();
    env.collections.insert("b".into(), big);
    let e = eval_with(
        json!([{"$lookup": {"from": "b", "localField": "k", "foreignField": "k", "as": "j"}}]),
        vec![json!({"k": 1})],
        &mut env,
    )
    .expect_err("too big");
    assert!(
        matches!(e, PipelineError::Runtime(ref m) if m.contains("16 MiB")),
        "{e}"
    );
    let e = eval_with(
        json!([{"$lookup": {"from": "b", "pipeline": [], "as": "j"}}]),
        vec![json!({"k": 1})],
        &mut env,
    )
    .expect_err("too big");
    assert!(
        matches!(e, PipelineError::Runtime(ref m) if m.contains("16 MiB")),
        "{e}"
    );
}

#[test]
fn inputs_must_be_objects() {
    let e = eval(json!([]), vec![json!([1])]).expect_err("not an object");
    assert!(matches!(e, PipelineError::Runtime(_)));
}

#[test]
fn input_fields_name_what_a_leading_group_or_count_reads() {
    let fields = |v: Value| {
        let (_, rest) = parse(v).expect("pipeline").split_leading_match();
        rest.input_fields()
            .map(|f| f.into_iter().map(str::to_owned).collect::<Vec<_>>())
    };
    assert_eq!(
        fields(json!([{"$match": {"x": 1}},
                      {"$group": {"_id": {"c": "$city.name", "t": "$team"},
                                  "n": {"$sum": {"$multiply": ["$age", "$score", 2]}},
                                  "k": {"$first": "$$CURRENT.kind.a"},
                                  "m": {"$max": "$age"}}}])),
        Some(vec![
            "city".into(),
            "team".into(),
            "age".into(),
            "score".into(),
            "kind".into()
        ])
    );
    assert_eq!(
        fields(json!([{"$count": "n"}, {"$project": {"n": 1}}])),
        Some(vec![])
    );
    assert_eq!(
        fields(json!([{"$group": {"_id": null, "n": {"$count": {}}}}])),
        Some(vec![])
    );
    // Whole documents: `$$ROOT`, or a first stage that passes them on.
    assert_eq!(
        fields(json!([{"$group": {"_id": "$a", "all": {"$push": "$$ROOT"}}}])),
        None
    );
    assert_eq!(fields(json!([{"$group": {"_id": "$$CURRENT"}}])), None);
    assert_eq!(
        fields(json!([{"$sort": {"a": 1}}, {"$group": {"_id": "$a"}}])),
        None
    );
    assert_eq!(
        fields(
            json!([{"$project": {"a.x": 1, "b": {"y": {"$add": ["$c", "$$ROOT.d.e"]}}, "_id": 0}}])
        ),
        Some(vec![
            "a".into(),
            "b".into(),
            "_id".into(),
            "c".into(),
            "d".into()
        ])
    );
    assert_eq!(fields(json!([{"$project": {"a": 0}}])), None);
    assert_eq!(fields(json!([{"$project": {"a": "$$ROOT"}}])), None);
    assert_eq!(fields(json!([])), None);
}
