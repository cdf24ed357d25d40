//! `Store::aggregate` in the conformance suite: the pipeline table of
//! arca-core (`pipeline_cases.json`, whose results the reference evaluator
//! gives) through the engine, the scope before the first stage and in
//! every `$lookup`, and the limits.

use std::time::Duration;

use arca_core::pipeline::{Pipeline, PipelineError};
use arca_core::{CollectionName, DocId, Document, SystemFields};
use arca_store::{AggregateLimits, LookupScopes, StoreError};
use serde_json::{Value, json};

use super::{Engine, Opts, define_at, doc, filtered_scope, people, tenant_scope};

/// A result, shortened for a failure message.
fn short(r: &Result<Vec<Value>, StoreError>) -> String {
    let text = format!("{r:?}");
    match text.char_indices().nth(300) {
        Some((i, _)) => format!(
            "{}... ({} results)",
            &text[..i],
            r.as_ref().map_or(0, Vec::len)
        ),
        None => text,
    }
}

/// Generous limits.
pub fn roomy() -> AggregateLimits {
    AggregateLimits {
        max_time: Duration::from_secs(30),
        max_memory: 100 << 20,
        max_results: 10_000,
    }
}

fn table() -> Value {
    serde_json::from_str(include_str!("../../../arca-core/tests/pipeline_cases.json"))
        .expect("table")
}

fn name(n: &str) -> CollectionName {
    CollectionName::parse(n).expect("name")
}

/// A table document as the engine stores it: its system fields from the
/// table's defaults (or its own), the rest as the body.
fn table_document(d: &Value, defaults: &Value) -> Document {
    let d = d.as_object().expect("object");
    // Built in order (removing from a map would reorder it).
    let body: serde_json::Map<String, Value> = d
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let id = d.get("_id").expect("_id");
    let take = |k: &str| d.get(k).unwrap_or(&defaults[k]).clone();
    let rev = take("_rev").as_u64().expect("_rev");
    let created_at = take("_created_at").as_str().expect("time").to_owned();
    let updated_at = take("_updated_at").as_str().expect("time").to_owned();
    let owner = take("_owner").as_str().expect("owner").to_owned();
    Document {
        system: SystemFields {
            id: DocId::parse(id.as_str().expect("string id")).expect("id"),
            rev,
            created_at,
            updated_at,
            owner,
        },
        body,
    }
}

/// Arrays of the `unordered` fields sorted, then the whole as JSON text.
fn normalise(mut docs: Vec<Value>, unordered: &[Value]) -> String {
    for d in &mut docs {
        for f in unordered.iter().filter_map(Value::as_str) {
            if let Some(Value::Array(items)) = d.get_mut(f) {
                items.sort_by_key(|v| serde_json::to_string(v).unwrap_or_default());
            }
        }
    }
    serde_json::to_string(&docs).expect("json")
}

/// Every collection of the table in every tenant the whole store can see.
fn whole_tenant_lookups(tenant: &str) -> LookupScopes {
    ["people", "orders", "cities"]
        .into_iter()
        .map(|n| (n.to_owned(), tenant_scope(tenant)))
        .collect()
}

/// Every case of the pipeline table gives the evaluator's result (or its
/// error) through the engine: the table's collections in tenant `t1`, the
/// same documents marked as another tenant's in `t2` (never seen).
pub async fn the_pipeline_table_gives_the_evaluators_results<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let table = table();
    let defaults = &table["defaults"];
    for (coll, docs) in table["collections"].as_object().expect("collections") {
        let coll = name(coll);
        define_at(store, &coll, &[], super::T0)
            .await
            .expect("define");
        for d in docs.as_array().expect("documents") {
            let mine = table_document(d, defaults);
            store
                .insert(&coll, &tenant_scope("t1"), &mine)
                .await
                .expect("insert");
            let mut theirs = mine.clone();
            theirs.body.insert("secret".into(), json!("t2"));
            store
                .insert(&coll, &tenant_scope("t2"), &theirs)
                .await
                .expect("insert t2");
        }
    }
    let lookups = whole_tenant_lookups("t1");
    let mut failures = Vec::new();
    for case in table["cases"].as_array().expect("cases") {
        let rule = case["rule"].as_str().expect("rule");
        let coll = name(case["collection"].as_str().unwrap_or("people"));
        let pipeline = Pipeline::parse(&case["pipeline"]).expect("pipeline");
        let got = store
            .aggregate(&coll, &tenant_scope("t1"), &pipeline, &lookups, &roomy())
            .await;
        let unordered = case["unordered"].as_array().cloned().unwrap_or_default();
        match (got, case.get("error")) {
            (Ok(docs), None) => {
                let want = case["expect"].as_array().expect("expect").clone();
                if normalise(docs.clone(), &unordered) != normalise(want.clone(), &unordered) {
                    failures.push(format!(
                        "{rule}: got {}, expected {}",
                        Value::Array(docs),
                        Value::Array(want)
                    ));
                }
            }
            (Err(StoreError::Pipeline(e)), Some(want)) => {
                // The engine gives the evaluator's reason, whoever ran it.
                let want = want.as_str().unwrap_or_default();
                if !e.to_string().contains(want) {
                    failures.push(format!("{rule}: error {e:?}, expected one saying {want:?}"));
                }
            }
            (got, want) => failures.push(format!("{rule}: got {}, expected {want:?}", short(&got))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The read filter and the tenant apply before the first stage and to
/// every `$lookup` target with its own filter; an internal field is never
/// reachable; a `$lookup` target not given is refused.
pub async fn aggregations_see_only_the_scope_at_every_depth<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let orders = name("orders");
    define_at(store, &people(), &[], super::T0)
        .await
        .expect("define");
    define_at(store, &orders, &[], super::T0)
        .await
        .expect("define");
    let t1 = tenant_scope("t1");
    for (id, team) in [("a", "x"), ("b", "y"), ("c", "x")] {
        store
            .insert(&people(), &t1, &doc(id, json!({"team": team})))
            .await
            .expect("insert");
        store
            .insert(
                &people(),
                &tenant_scope("t2"),
                &doc(id, json!({"team": team, "secret": true})),
            )
            .await
            .expect("insert t2");
    }
    for (id, who, amount, public) in [
        ("o1", "a", 10, true),
        ("o2", "a", 5, false),
        ("o3", "c", 7, true),
    ] {
        store
            .insert(
                &orders,
                &t1,
                &doc(id, json!({"who": who, "amount": amount, "public": public})),
            )
            .await
            .expect("insert");
        store
            .insert(
                &orders,
                &tenant_scope("t2"),
                &doc(id, json!({"who": who, "amount": 1000})),
            )
            .await
            .expect("insert t2");
    }
    // The caller reads team x only; of the orders, the public ones.
    let scope = filtered_scope("t1", json!({"team": "x"}));
    let mut lookups = LookupScopes::new();
    lookups.insert(
        "orders".into(),
        filtered_scope("t1", json!({"public": true})),
    );
    let p = Pipeline::parse(&json!([
        {"$lookup": {"from": "orders", "localField": "_id", "foreignField": "who", "as": "o"}},
        {"$project": {"_id": 1, "amounts": "$o.amount", "n": {"$size": "$o"},
                      "t": "$_tenant", "all": "$$ROOT._tenant"}},
        {"$sort": {"_id": 1}}
    ]))
    .expect("pipeline");
    let got = store
        .aggregate(&people(), &scope, &p, &lookups, &roomy())
        .await
        .expect("aggregate");
    assert_eq!(
        Value::Array(got),
        json!([{"_id": "a", "amounts": [10], "n": 1}, {"_id": "c", "amounts": [7], "n": 1}])
    );
    // A $lookup pipeline that matches on the tenant finds nothing.
    let p = Pipeline::parse(&json!([
        {"$lookup": {"from": "orders", "pipeline": [{"$match": {"_tenant": "t2"}}], "as": "o"}},
        {"$project": {"_id": 1, "n": {"$size": "$o"}}},
        {"$sort": {"_id": 1}}
    ]))
    .expect("pipeline");
    let got = store
        .aggregate(&people(), &scope, &p, &lookups, &roomy())
        .await
        .expect("aggregate");
    assert_eq!(
        Value::Array(got),
        json!([{"_id": "a", "n": 0}, {"_id": "c", "n": 0}])
    );
    // A whole-tenant group: t1's numbers only.
    let p = Pipeline::parse(
        &json!([{"$group": {"_id": null, "sum": {"$sum": "$amount"}, "n": {"$sum": 1}}}]),
    )
    .expect("pipeline");
    let got = store
        .aggregate(&orders, &t1, &p, &LookupScopes::new(), &roomy())
        .await
        .expect("aggregate");
    assert_eq!(Value::Array(got), json!([{"_id": null, "sum": 22, "n": 3}]));
    // A $lookup whose target the caller was not given.
    let p = Pipeline::parse(&json!([{"$lookup": {"from": "orders", "localField": "_id", "foreignField": "who", "as": "o"}}]))
        .expect("pipeline");
    let e = store
        .aggregate(&people(), &scope, &p, &LookupScopes::new(), &roomy())
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, StoreError::Pipeline(PipelineError::Invalid(m)) if m.contains("orders")),
        "{e:?}"
    );
    // A scope that excludes everything: no input ($count of nothing
    // gives no document, as in MongoDB); a $group of nothing neither.
    let nothing = filtered_scope("t1", json!({"team": "nobody's"}));
    for p in [
        json!([{"$count": "n"}]),
        json!([{"$group": {"_id": null, "n": {"$sum": 1}}}]),
    ] {
        let p = Pipeline::parse(&p).expect("pipeline");
        let got = store
            .aggregate(&people(), &nothing, &p, &LookupScopes::new(), &roomy())
            .await
            .expect("aggregate");
        assert!(got.is_empty(), "{got:?}");
    }
}

/// More results than allowed, a stage over its memory, a run past its
/// time, and a runtime error that depends on the data: each is its own
/// error, never a partial result.
pub async fn aggregation_limits_are_enforced<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define_at(store, &people(), &[], super::T0)
        .await
        .expect("define");
    let s = tenant_scope("");
    let filler = "x".repeat(1000);
    for i in 0..E::SLOW_SCAN_DOCS.min(3_000) {
        store
            .insert(
                &people(),
                &s,
                &doc(
                    &format!("d{i:05}"),
                    json!({"n": i, "k": i % 7, "zero": 0, "pad": filler}),
                ),
            )
            .await
            .expect("insert");
    }
    let none = LookupScopes::new();
    let run = |p: Value, limits: AggregateLimits| {
        let pipeline = Pipeline::parse(&p).expect("pipeline");
        let s = s.clone();
        let none = none.clone();
        async move {
            store
                .aggregate(&people(), &s, &pipeline, &none, &limits)
                .await
        }
    };
    let got = run(
        json!([{"$project": {"n": 1}}]),
        AggregateLimits {
            max_results: 10,
            ..roomy()
        },
    )
    .await;
    assert!(
        matches!(
            got,
            Err(StoreError::Pipeline(PipelineError::TooManyResults {
                limit: 10
            }))
        ),
        "{}",
        short(&got)
    );
    // Exactly the limit is fine.
    let got = run(
        json!([{"$limit": 10}, {"$project": {"n": 1}}]),
        AggregateLimits {
            max_results: 10,
            ..roomy()
        },
    )
    .await;
    assert_eq!(got.expect("ten").len(), 10);
    // A $push of every document into one group: megabytes held.
    let got = run(
        json!([{"$group": {"_id": null, "all": {"$push": "$$ROOT"}}}]),
        AggregateLimits {
            max_memory: 64 << 10,
            ..roomy()
        },
    )
    .await;
    assert!(
        matches!(
            got,
            Err(StoreError::Pipeline(PipelineError::TooMuchMemory { .. }))
        ),
        "{}",
        short(&got)
    );
    // A runtime error of the data: MongoDB's reason.
    let got = run(
        json!([{"$project": {"q": {"$divide": ["$n", "$zero"]}}}]),
        roomy(),
    )
    .await;
    assert!(
        matches!(&got, Err(StoreError::Pipeline(PipelineError::Runtime(m))) if m.contains("divide by zero")),
        "{}",
        short(&got)
    );
    // Past the time limit: Timeout (every document joined to every other).
    let mut with_self = LookupScopes::new();
    with_self.insert("people".into(), s.clone());
    let pipeline = Pipeline::parse(&json!([
        {"$lookup": {"from": "people", "pipeline": [{"$sort": {"pad": 1, "n": -1}}], "as": "all"}},
        {"$unwind": "$all"},
        {"$group": {"_id": "$all.k", "n": {"$sum": 1}}}
    ]))
    .expect("pipeline");
    let got = store
        .aggregate(
            &people(),
            &s,
            &pipeline,
            &with_self,
            &AggregateLimits {
                max_time: Duration::from_millis(1),
                max_memory: 1 << 30,
                ..roomy()
            },
        )
        .await;
    assert!(matches!(got, Err(StoreError::Timeout)), "{}", short(&got));
    // The store still answers at once afterwards.
    let got = run(json!([{"$count": "n"}]), roomy()).await.expect("count");
    assert_eq!(got.len(), 1);
}
