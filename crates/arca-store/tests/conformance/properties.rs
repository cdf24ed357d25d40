//! Property tests of an engine's query path against the reference
//! evaluator: random documents (arrays on paths included) and random
//! filters give exactly the evaluator's matches, through whatever the
//! engine pushes down; cursor walks over random data, sorts and page sizes
//! visit every document exactly once.

use arca_core::query::{Cursor, Filter, Sort};
use arca_core::{CollectionName, IndexDef};
use arca_store::{CollectionSpec, Query};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn coll() -> CollectionName {
    CollectionName::parse("things").expect("name")
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-1.5), Just(2.0), Just(3.0)].prop_map(Value::from),
        prop_oneof![Just("a"), Just("b"), Just("B"), Just("2"), Just("")].prop_map(Value::from),
    ]
}

fn object_with_b() -> impl Strategy<Value = Value> {
    (scalar(), proptest::option::of(scalar())).prop_map(|(b, c)| {
        let mut m = Map::new();
        m.insert("b".into(), b);
        if let Some(c) = c {
            m.insert("c".into(), c);
        }
        Value::Object(m)
    })
}

/// A value for field `a`: scalars, arrays of scalars, objects with `b`,
/// arrays of such objects — the shapes where array traversal matters.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => scalar(),
        1 => proptest::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        2 => object_with_b(),
        1 => proptest::collection::vec(object_with_b(), 0..3).prop_map(Value::Array),
    ]
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    (
        proptest::option::of(field_value()),
        proptest::option::of(scalar()),
        proptest::option::of(field_value()),
    )
        .prop_map(|(a, n, t)| {
            let mut m = Map::new();
            if let Some(a) = a {
                m.insert("a".into(), a);
            }
            if let Some(n) = n {
                m.insert("n".into(), n);
            }
            if let Some(t) = t {
                m.insert("t".into(), t);
            }
            m
        })
}

fn condition() -> impl Strategy<Value = Value> {
    let path = prop_oneof![
        Just("a"),
        Just("a.b"),
        Just("a.0"),
        Just("a.0.b"),
        Just("n"),
        Just("t"),
        Just("_id")
    ];
    let op = prop_oneof![
        scalar().prop_map(|v| v),
        scalar().prop_map(|v| json!({"$eq": v})),
        scalar().prop_map(|v| json!({"$ne": v})),
        scalar().prop_map(|v| json!({"$gt": v})),
        scalar().prop_map(|v| json!({"$gte": v})),
        scalar().prop_map(|v| json!({"$lt": v})),
        scalar().prop_map(|v| json!({"$lte": v})),
        proptest::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$in": v})),
        proptest::collection::vec(scalar(), 0..3).prop_map(|v| json!({"$nin": v})),
        any::<bool>().prop_map(|b| json!({"$exists": b})),
        (0u64..3).prop_map(|n| json!({"$size": n})),
        prop_oneof![
            Just("string"),
            Just("number"),
            Just("array"),
            Just("null"),
            Just("object")
        ]
        .prop_map(|t| json!({"$type": t})),
        scalar().prop_map(|v| json!({"$elemMatch": {"$gte": v}})),
        scalar().prop_map(|v| json!({"$not": {"$gt": v}})),
    ];
    (path, op).prop_map(|(p, o)| {
        let mut m = Map::new();
        m.insert(p.to_owned(), o);
        Value::Object(m)
    })
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => condition(),
        1 => proptest::collection::vec(condition(), 1..3).prop_map(|c| json!({"$and": c})),
        1 => proptest::collection::vec(condition(), 1..3).prop_map(|c| json!({"$or": c})),
        1 => (condition(), condition()).prop_map(|(x, y)| {
            let mut m = x.as_object().cloned().unwrap_or_default();
            m.extend(y.as_object().cloned().unwrap_or_default());
            Value::Object(m)
        }),
    ]
}

/// A fresh store of `E` holding `docs` (ids `d000`...) in the untenanted
/// space, and three of them again in another tenant that must never leak.
async fn load<E: Engine>(docs: &[Map<String, Value>], indexes: &[IndexDef]) -> Fresh {
    let fresh = E::open(Opts::default()).await;
    let store = fresh.store.as_ref();
    store
        .put_collection(CollectionSpec {
            name: &coll(),
            schema: &json!({"type": "object"}),
            indexes,
            access: &json!({}),
            at: T0,
            created_at: None,
        })
        .await
        .expect("define");
    let scope = tenant_scope("");
    for (i, body) in docs.iter().enumerate() {
        let d = doc(&format!("d{i:03}"), Value::Object(body.clone()));
        store.insert(&coll(), &scope, &d).await.expect("insert");
    }
    let other = tenant_scope("other");
    for (i, body) in docs.iter().take(3).enumerate() {
        let d = doc(&format!("o{i:03}"), Value::Object(body.clone()));
        store
            .insert(&coll(), &other, &d)
            .await
            .expect("insert other");
    }
    fresh
}

/// Indexes on the generated paths, so engines use their index paths.
pub fn indexes() -> Vec<IndexDef> {
    ["a", "a.b", "a.0"]
        .into_iter()
        .map(|p| index(p, false, false))
        .chain([IndexDef {
            fields: vec![("n".into(), -1)],
            unique: false,
            sparse: false,
        }])
        .collect()
}

pub fn listings_return_exactly_the_evaluators_matches<E: Engine>() {
    let mut runner = TestRunner::new(Config {
        cases: E::PROPERTY_CASES,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(document(), 1..25),
        proptest::collection::vec(filter(), 1..8),
    );
    // Cases proptest once shrank failures to, run first every time.
    let known = [
        (json!([{"a": 3}]), json!([{"$and": [{"a": {"$gte": 3.0}}]}])),
        (json!([{"a": [-1]}]), json!([{"a": -1}])),
    ];
    for (docs, filters) in known {
        let docs: Vec<Map<String, Value>> = docs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_object().cloned())
            .collect();
        let filters = filters.as_array().cloned().unwrap_or_default();
        rt().block_on(check_listings::<E>(&docs, &filters))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    runner
        .run(&strategy, |(docs, filters)| {
            rt().block_on(check_listings::<E>(&docs, &filters))
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every filter of `filters` over `docs`: `find`, `find_text`, a page and
/// `count` agree with the evaluator.
async fn check_listings<E: Engine>(
    docs: &[Map<String, Value>],
    filters: &[Value],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let fresh = load::<E>(docs, &indexes()).await;
    let store = fresh.store.as_ref();
    let scope = tenant_scope("");
    let everything = Query {
        filter: Filter::all(),
        sort: Sort::by_id(),
        after: None,
        limit: 1000,
        max_bytes: None,
    };
    let all = store.find(&coll(), &scope, &everything).await.expect("all");
    prop_assert_eq!(
        all.len(),
        docs.len(),
        "every document and no other tenant's"
    );
    for fv in filters {
        let f = Filter::parse(fv).expect("generated filters are valid");
        let expected: Vec<String> = all
            .iter()
            .filter(|d| f.matches(&d.to_json()))
            .map(|d| d.system.id.to_string())
            .collect();
        let query = Query {
            filter: f.clone(),
            sort: Sort::by_id(),
            after: None,
            limit: 1000,
            max_bytes: None,
        };
        let found = store.find(&coll(), &scope, &query).await.expect("find");
        let got: Vec<String> = found.iter().map(|d| d.system.id.to_string()).collect();
        prop_assert_eq!(&got, &expected, "filter {}", fv);
        // The text listing finds the same documents and sends
        // them byte for byte as parsed.
        let text_docs = store
            .find_text(&coll(), &scope, &query)
            .await
            .expect("find_text");
        let texts: Vec<Vec<u8>> = text_docs.iter().map(|t| t.to_json_bytes()).collect();
        let parsed: Vec<Vec<u8>> = found
            .iter()
            .map(|d| serde_json::to_vec(d).expect("json"))
            .collect();
        prop_assert_eq!(texts, parsed, "text listing of {}", fv);
        // A page that splits the result stops at its limit.
        let page = store
            .find(
                &coll(),
                &scope,
                &Query {
                    limit: 3,
                    ..query.clone()
                },
            )
            .await
            .expect("page");
        let page_ids: Vec<String> = page.iter().map(|d| d.system.id.to_string()).collect();
        prop_assert_eq!(
            &page_ids[..],
            &expected[..expected.len().min(3)],
            "page of {}",
            fv
        );
        let n = store.count(&coll(), &scope, &f).await.expect("count");
        prop_assert_eq!(n as usize, expected.len(), "count of {}", fv);
    }
    Ok(())
}

pub fn cursor_walks_visit_every_document_once<E: Engine>() {
    let mut runner = TestRunner::new(Config {
        cases: E::PROPERTY_CASES,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(document(), 0..30),
        prop_oneof![
            Just("a"),
            Just("-a"),
            Just("n,-a.b"),
            Just("-n"),
            Just("t,_id"),
            Just("-_id"),
            Just("_id")
        ],
        1usize..7,
    );
    runner
        .run(&strategy, |(docs, sort, page)| {
            rt().block_on(async {
                let fresh = load::<E>(&docs, &[]).await;
                let store = fresh.store.as_ref();
                let scope = tenant_scope("");
                let sort = Sort::parse(sort).expect("sort");
                let mut seen: Vec<String> = Vec::new();
                let mut after: Option<Cursor> = None;
                loop {
                    let q = Query {
                        filter: Filter::all(),
                        sort: sort.clone(),
                        after: after.clone(),
                        limit: page,
                        max_bytes: None,
                    };
                    let batch = store.find(&coll(), &scope, &q).await.expect("page");
                    let text_ids: Vec<String> = store
                        .find_text(&coll(), &scope, &q)
                        .await
                        .expect("text page")
                        .iter()
                        .map(|t| t.system.id.to_string())
                        .collect();
                    let ids: Vec<String> = batch.iter().map(|d| d.system.id.to_string()).collect();
                    prop_assert_eq!(text_ids, ids, "the text page sorts the same");
                    for d in &batch {
                        seen.push(d.system.id.to_string());
                    }
                    if batch.len() < page {
                        break;
                    }
                    let last = batch.last().expect("non-empty");
                    after = Some(Cursor {
                        key: sort.key(&last.to_json()).0,
                        id: last.system.id.to_string(),
                    });
                }
                // In the evaluator's order, each document once.
                let mut expected: Vec<(String, Value)> = docs
                    .iter()
                    .enumerate()
                    .map(|(i, body)| {
                        let mut whole = Value::Object(body.clone());
                        whole["_id"] = json!(format!("d{i:03}"));
                        (format!("d{i:03}"), whole)
                    })
                    .collect();
                expected.sort_by(|(a_id, a), (b_id, b)| {
                    sort.compare(&sort.key(a), a_id, &sort.key(b), b_id)
                });
                let expected: Vec<String> = expected.into_iter().map(|(i, _)| i).collect();
                prop_assert_eq!(seen, expected, "every document once, in order");
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

pub fn equality_pages_find_documents_through_arrays<E: Engine>() {
    rt().block_on(async {
        let docs: Vec<Map<String, Value>> = [
            json!({"a": "x"}),
            json!({"a": ["y", "x"]}),
            json!({"a": [{"b": "x"}]}),
            json!({"a": {"b": "x"}}),
            json!({"a": "z"}),
        ]
        .iter()
        .map(|v| v.as_object().cloned().unwrap_or_default())
        .collect();
        let fresh = load::<E>(&docs, &indexes()).await;
        let store = fresh.store.as_ref();
        let scope = tenant_scope("");
        let ids = |f: Value, limit: usize| {
            let scope = &scope;
            async move {
                let q = Query {
                    filter: Filter::parse(&f).expect("filter"),
                    sort: Sort::by_id(),
                    after: None,
                    limit,
                    max_bytes: None,
                };
                store
                    .find(&coll(), scope, &q)
                    .await
                    .expect("find")
                    .iter()
                    .map(|d| d.system.id.to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(ids(json!({"a": "x"}), 10).await, ["d000", "d001"]);
        assert_eq!(ids(json!({"a.b": "x"}), 10).await, ["d002", "d003"]);
        assert_eq!(
            ids(json!({"a": "x"}), 1).await,
            ["d000"],
            "the page stops at its limit"
        );
    });
}

/// A path the pipeline stages read.
fn stage_path() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("a.b"), Just("n"), Just("t"), Just("_id")]
}

/// An expression over the generated fields (runtime errors included).
fn stage_expr() -> impl Strategy<Value = Value> {
    prop_oneof![
        stage_path().prop_map(|p| Value::from(format!("${p}"))),
        scalar(),
        (stage_path(), scalar()).prop_map(|(p, v)| json!({"$add": [format!("${p}"), v]})),
        (stage_path(), scalar()).prop_map(|(p, v)| json!({"$ifNull": [format!("${p}"), v]})),
        (stage_path(), scalar()).prop_map(|(p, v)| json!({"$gt": [format!("${p}"), v]})),
        stage_path().prop_map(|p| json!({"$size": format!("${p}")})),
        (stage_path(), stage_path())
            .prop_map(|(p, q)| json!({"$divide": [format!("${p}"), format!("${q}")]})),
        (stage_path(), scalar(), scalar())
            .prop_map(|(p, x, y)| json!({"$cond": [{"$eq": [format!("${p}"), x]}, y, "$t"]})),
    ]
}

/// A valid stage of the contract's allow-list over the generated fields.
fn stage() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => filter().prop_map(|f| json!({"$match": f})),
        2 => (stage_path(), prop_oneof![Just(1), Just(-1)])
            .prop_map(|(p, d)| json!({"$sort": {p: d}})),
        1 => (0u64..5).prop_map(|n| json!({"$limit": n})),
        1 => (0u64..3).prop_map(|n| json!({"$skip": n})),
        1 => stage_path().prop_map(|p| json!({"$project": {p: 1, "n": 1}})),
        1 => stage_path().prop_map(|p| json!({"$project": {p: 0}})),
        2 => stage_expr().prop_map(|e| json!({"$addFields": {"x": e}})),
        1 => stage_path().prop_map(|p| json!({"$unset": p})),
        2 => (stage_expr(), stage_path()).prop_map(|(id, p)| json!({"$group": {
            "_id": id, "c": {"$sum": 1}, "s": {"$sum": format!("${p}")},
            "lo": {"$min": format!("${p}")}, "hi": {"$max": format!("${p}")},
            "av": {"$avg": format!("${p}")}, "all": {"$push": format!("${p}")},
            "set": {"$addToSet": format!("${p}")}, "f": {"$first": "$t"}, "l": {"$last": "$t"}}})),
        1 => (stage_path(), any::<bool>()).prop_map(|(p, keep)| json!({"$unwind": {
            "path": format!("${p}"), "includeArrayIndex": "i", "preserveNullAndEmptyArrays": keep}})),
        1 => Just(json!({"$count": "k"})),
        1 => (stage_path(), stage_path()).prop_map(|(l, f)| json!({"$lookup": {
            "from": "things", "localField": l, "foreignField": f, "as": "j"}})),
        1 => filter().prop_map(|f| json!({"$lookup": {
            "from": "things", "pipeline": [{"$match": f}, {"$project": {"n": 1}}], "as": "j"}})),
    ]
}

/// Random pipelines of allowed stages over random documents: the engine's
/// result (or error) is the reference evaluator's over the same documents
/// as clients see them, in `_id` order (another tenant's are never seen).
pub fn random_pipelines_give_the_evaluators_results<E: Engine>() {
    let mut runner = TestRunner::new(Config {
        cases: E::PROPERTY_CASES,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(document(), 0..12),
        proptest::collection::vec(stage(), 1..5),
    );
    runner
        .run(&strategy, |(docs, stages)| {
            rt().block_on(check_pipeline::<E>(&docs, Value::Array(stages)))
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn check_pipeline<E: Engine>(
    docs: &[Map<String, Value>],
    stages: Value,
) -> Result<(), TestCaseError> {
    use arca_core::pipeline::{InMemoryEnv, Pipeline};
    let Ok(pipeline) = Pipeline::parse(&stages) else {
        // Only allowed stages are generated, but a combination can still
        // be refused (a $sort on a path and its prefix...): nothing to run.
        return Ok(());
    };
    let fresh = load::<E>(docs, &indexes()).await;
    let store = fresh.store.as_ref();
    let scope = tenant_scope("");
    let all = Query {
        filter: Filter::all(),
        sort: Sort::by_id(),
        after: None,
        limit: 1000,
        max_bytes: None,
    };
    let views: Vec<Value> = store
        .find(&coll(), &scope, &all)
        .await
        .expect("find")
        .iter()
        .map(|d| d.to_json())
        .collect();
    let mut env = InMemoryEnv::new();
    env.collections.insert("things".into(), views.clone());
    let want = pipeline.evaluate(views.into_iter(), &mut env);
    let mut lookups = arca_store::LookupScopes::new();
    lookups.insert("things".into(), scope.clone());
    let got = store
        .aggregate(
            &coll(),
            &scope,
            &pipeline,
            &lookups,
            &super::aggregate::roomy(),
        )
        .await;
    match (got, want) {
        (Ok(got), Ok(want)) => prop_assert_eq!(
            serde_json::to_string(&got).expect("json"),
            serde_json::to_string(&want).expect("json"),
            "{}",
            stages
        ),
        (Err(arca_store::StoreError::Pipeline(got)), Err(want)) => {
            prop_assert_eq!(got, want, "{}", stages)
        }
        (got, want) => prop_assert!(false, "{stages}: got {got:?}, the evaluator {want:?}"),
    }
    Ok(())
}
