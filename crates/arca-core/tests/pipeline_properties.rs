//! Property tests of pipelines: random small pipelines (valid and invalid
//! stages, operators, accumulators, paths and literals of every JSON type,
//! extreme numbers included) over random documents never panic; they
//! either parse and evaluate, or fail with a typed error; a successful
//! evaluation returns objects, at most `max_results` of them, and is
//! deterministic. Arbitrary JSON as a pipeline never panics the parser.

use arca_core::pipeline::{InMemoryEnv, Pipeline, PipelineError};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn field() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just("a.b"),
        Just("a.0"),
        Just("_id"),
        Just("_rev")
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(7),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::from(i32::MAX) + 1),
            any::<i64>()
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just(0.0f64),
            Just(-0.0),
            Just(2.5),
            Just(1e308),
            Just(-1e308),
            Just(5e-324)
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just("x"),
            Just("Ab"),
            Just(""),
            Just("É"),
            Just("$a"),
            Just("$$ROOT")
        ]
        .prop_map(Value::from),
    ]
}

fn doc_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((field(), inner), 0..3).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .filter(|(k, _)| !k.contains('.'))
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        (prop_oneof![Just("a"), Just("b"), Just("c")], doc_value()),
        0..4,
    )
    .prop_map(|kv| {
        let mut m = Map::new();
        for (k, v) in kv {
            m.insert(k.to_owned(), v);
        }
        Value::Object(m)
    })
}

fn op_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("$add"),
        Just("$subtract"),
        Just("$multiply"),
        Just("$divide"),
        Just("$mod"),
        Just("$concat"),
        Just("$toLower"),
        Just("$toUpper"),
        Just("$cond"),
        Just("$ifNull"),
        Just("$size"),
        Just("$eq"),
        Just("$ne"),
        Just("$gt"),
        Just("$gte"),
        Just("$lt"),
        Just("$lte"),
        Just("$and"),
        Just("$or"),
        Just("$not"),
        Just("$in"),
        Just("$literal"),
        Just("$function"),
        Just("$nope")
    ]
}

fn expr() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => scalar(),
        3 => field().prop_map(|f| Value::from(format!("${f}"))),
        1 => prop_oneof![Just("$$ROOT"), Just("$$CURRENT.a"), Just("$$NOW"), Just("$$v")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            4 => (op_name(), proptest::collection::vec(inner.clone(), 0..4)).prop_map(|(op, args)| {
                let mut m = Map::new();
                m.insert(op.to_owned(), Value::Array(args));
                Value::Object(m)
            }),
            1 => (op_name(), inner.clone()).prop_map(|(op, arg)| {
                let mut m = Map::new();
                m.insert(op.to_owned(), arg);
                Value::Object(m)
            }),
            1 => proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            1 => proptest::collection::vec((prop_oneof![Just("x"), Just("y")], inner), 0..3).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn accumulator() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("$sum"),
            Just("$avg"),
            Just("$min"),
            Just("$max"),
            Just("$first"),
            Just("$last"),
            Just("$push"),
            Just("$addToSet"),
            Just("$count"),
            Just("$accumulator")
        ],
        expr(),
    )
        .prop_map(|(name, arg)| {
            let arg = if name == "$count" { json!({}) } else { arg };
            let mut m = Map::new();
            m.insert(name.to_owned(), arg);
            Value::Object(m)
        })
}

fn stage(inner: Option<BoxedStrategy<Value>>) -> BoxedStrategy<Value> {
    let mut options: Vec<BoxedStrategy<Value>> = vec![
        (field(), scalar())
            .prop_map(|(f, v)| json!({"$match": {f: v}}))
            .boxed(),
        (field(), scalar())
            .prop_map(|(f, v)| json!({"$match": {f: {"$gt": v}}}))
            .boxed(),
        (field(), expr())
            .prop_map(|(f, e)| json!({"$project": {f: e}}))
            .boxed(),
        (field(), prop_oneof![Just(0), Just(1)])
            .prop_map(|(f, v)| json!({"$project": {f: v, "c": 1}}))
            .boxed(),
        (field(), expr())
            .prop_map(|(f, e)| json!({"$set": {f: e}}))
            .boxed(),
        (field(), expr())
            .prop_map(|(f, e)| json!({"$addFields": {f: e, "z": "$a"}}))
            .boxed(),
        field().prop_map(|f| json!({"$unset": f})).boxed(),
        (expr(), accumulator(), accumulator())
            .prop_map(|(id, a, b)| json!({"$group": {"_id": id, "p": a, "q": b}}))
            .boxed(),
        (field(), prop_oneof![Just(1), Just(-1), Just(2)])
            .prop_map(|(f, d)| json!({"$sort": {f: d, "b": 1}}))
            .boxed(),
        prop_oneof![Just(json!(0)), Just(json!(1)), Just(json!(3)), Just(json!(u64::MAX)), Just(json!(-1))]
            .prop_map(|n| json!({"$limit": n}))
            .boxed(),
        prop_oneof![Just(json!(0)), Just(json!(2)), Just(json!(u64::MAX)), Just(json!(1.5))]
            .prop_map(|n| json!({"$skip": n}))
            .boxed(),
        (field(), any::<bool>())
            .prop_map(|(f, keep)| {
                json!({"$unwind": {"path": format!("${f}"), "includeArrayIndex": "i", "preserveNullAndEmptyArrays": keep}})
            })
            .boxed(),
        field().prop_map(|f| json!({"$unwind": format!("${f}")})).boxed(),
        prop_oneof![Just("n"), Just(""), Just("$x")]
            .prop_map(|n| json!({"$count": n}))
            .boxed(),
        (field(), field())
            .prop_map(|(l, f)| json!({"$lookup": {"from": "b", "localField": l, "foreignField": f, "as": "j"}}))
            .boxed(),
        prop_oneof![Just("$out"), Just("$facet"), Just("$unionWith"), Just("$graphLookup"), Just("$bucket")]
            .prop_map(|s| json!({s: {}}))
            .boxed(),
    ];
    if let Some(inner) = inner {
        options.push(
            (expr(), proptest::collection::vec(inner, 0..3))
                .prop_map(|(e, p)| {
                    json!({"$lookup": {"from": "b", "let": {"v": e}, "pipeline": p, "as": "j"}})
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

fn pipeline() -> impl Strategy<Value = Value> {
    let inner = stage(None);
    proptest::collection::vec(stage(Some(inner)), 0..5).prop_map(Value::Array)
}

fn env(docs: &[Value]) -> InMemoryEnv {
    let mut env = InMemoryEnv::new();
    env.collections.insert("b".into(), docs.to_vec());
    env.max_results = 50;
    env.max_memory = 1 << 20;
    env.max_steps = 100_000;
    env
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn random_pipelines_evaluate_or_fail_with_a_typed_error(
        p in pipeline(),
        docs in proptest::collection::vec(document(), 0..8),
    ) {
        let Ok(parsed) = Pipeline::parse(&p) else {
            return Ok(());
        };
        let first = parsed.evaluate(docs.clone().into_iter(), &mut env(&docs));
        match &first {
            Ok(out) => {
                prop_assert!(out.len() <= 50);
                prop_assert!(out.iter().all(Value::is_object));
            }
            Err(PipelineError::Invalid(m)) => {
                // Only an unknown $lookup target is found while running.
                prop_assert!(m.contains("$lookup"), "{m}");
            }
            Err(_) => {}
        }
        let second = parsed.evaluate(docs.clone().into_iter(), &mut env(&docs));
        prop_assert_eq!(first, second);
    }

    #[test]
    fn arbitrary_json_never_panics_the_parser(v in any_json()) {
        let _ = Pipeline::parse(&v);
        let _ = Pipeline::parse(&json!({"pipeline": v}));
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        scalar(),
        ".{0,6}".prop_map(Value::from),
        prop_oneof![
            Just("$match"),
            Just("$group"),
            Just("$lookup"),
            Just("$$x"),
            Just("$")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("$match"),
                        Just("$project"),
                        Just("$group"),
                        Just("$lookup"),
                        Just("$unwind"),
                        Just("_id"),
                        Just("pipeline"),
                        Just("from"),
                        Just("as"),
                        Just("let"),
                        Just("path"),
                        Just("$sum"),
                        Just("$add"),
                        Just("$cond"),
                        Just("a"),
                        Just("a.b"),
                        Just("")
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}
