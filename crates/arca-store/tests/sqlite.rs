//! The embedded engine on real SQLite files: the conformance suite every
//! engine passes, and what only this engine has (its query planner's index
//! use, persistence across reopen, the WAL folded back on close).

mod conformance;

use std::sync::Arc;

use arca_core::query::Filter;
use arca_core::{CollectionName, Scope};
use arca_store::{CollectionSpec, SqliteOptions, SqliteStore, Store};
use conformance::{Engine, Fresh, Opts, T0, define, doc, id, people, tenant_scope};
use serde_json::{Map, Value, json};

/// SQLite files in a temporary folder.
struct Sqlite;

fn open_at(dir: &std::path::Path, opts: Opts) -> SqliteStore {
    SqliteStore::open(&SqliteOptions {
        path: dir.join("arca.db"),
        synchronous_full: false,
        readers: 2,
        read_timeout: opts.read_timeout,
        reader_cache_kib: 2000,
    })
    .expect("open")
}

impl Engine for Sqlite {
    async fn open(opts: Opts) -> Fresh {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open_at(dir.path(), opts);
        Fresh {
            store: Arc::new(store),
            keep: Box::new(dir),
        }
    }

    const SLOW_SCAN_DOCS: usize = 3000;
    const PROPERTY_CASES: u32 = 256;
}

conformance_suite!(Sqlite);

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

/// `docs` in `things`, indexed as the suite's property tests index it.
async fn load(docs: &[Map<String, Value>]) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open_at(dir.path(), Opts::default());
    store
        .put_collection(CollectionSpec {
            name: &coll(),
            schema: &json!({"type": "object"}),
            indexes: &conformance::properties::indexes(),
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
    (dir, store)
}

#[test]
fn an_aggregations_leading_match_uses_the_declared_index() {
    rt().block_on(async {
        let docs: Vec<Map<String, Value>> = (0..50)
            .map(|i| {
                json!({"a": {"b": i}, "n": i})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let (_dir, store) = load(&docs).await;
        let scope = conformance::tenant_scope("");
        let pipeline = arca_core::pipeline::Pipeline::parse(&json!([
            {"$match": {"n": {"$gte": 10, "$lt": 20}}},
            {"$match": {"a.b": {"$ne": 12}}},
            {"$group": {"_id": null, "total": {"$sum": "$n"}}}
        ]))
        .expect("pipeline");
        let plan = store
            .explain_aggregate(&coll(), &scope, &pipeline)
            .await
            .expect("explain")
            .join("\n");
        assert!(plan.contains("INDEX ix_things_"), "{plan}");
        assert!(!plan.contains("SCAN c_things"), "no full scan: {plan}");
        // And the result is the evaluator's.
        let got = arca_store::Store::aggregate(
            &store,
            &coll(),
            &scope,
            &pipeline,
            &Default::default(),
            &conformance::aggregate::roomy(),
        )
        .await
        .expect("aggregate");
        assert_eq!(Value::Array(got), json!([{"_id": null, "total": 133}]));
        // Without a leading $match, every document of the tenant is read.
        let all = arca_core::pipeline::Pipeline::parse(&json!([{"$count": "n"}])).expect("p");
        let plan = store
            .explain_aggregate(&coll(), &scope, &all)
            .await
            .expect("explain")
            .join("\n");
        assert!(!plan.contains("INDEX ix_things_"), "{plan}");
    });
}

#[test]
fn the_planner_uses_the_declared_index_for_equality_and_ranges() {
    rt().block_on(async {
        let docs: Vec<Map<String, Value>> = (0..50)
            .map(|i| {
                json!({"a": {"b": i}, "n": i})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let (_dir, store) = load(&docs).await;
        let scope = conformance::tenant_scope("");
        for f in [
            json!({"n": 3}),
            json!({"n": {"$gt": 40}}),
            json!({"a.b": {"$in": [1, 2]}}),
            json!({"n": {"$gte": 1, "$lt": 5}, "t": null}),
        ] {
            let plan = store
                .explain(&coll(), &scope, &Filter::parse(&f).expect("filter"))
                .await
                .expect("explain")
                .join("\n");
            assert!(
                plan.contains("INDEX ix_things_"),
                "{f}: the declared index is used: {plan}"
            );
            assert!(
                plan.contains("INDEX ixa_things_"),
                "{f}: the array-on-path index is used too: {plan}"
            );
            assert!(!plan.contains("SCAN c_things"), "{f}: no full scan: {plan}");
            assert!(
                !plan.contains("sqlite_autoindex_c_things_1 (tenant=?)"),
                "{f}: no scan of the tenant's rows: {plan}"
            );
        }
        // An equality page runs in `_id` order off the indexes: no sort, so it
        // stops at the page end whatever the collection's size.
        let plan = store
            .explain(
                &coll(),
                &scope,
                &Filter::parse(&json!({"n": 7})).expect("f"),
            )
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        assert!(
            plan.contains("INDEX ix_things_") && plan.contains("INDEX ixa_things_"),
            "{plan}"
        );
        // An unindexed field scans the tenant's rows (by primary key).
        let plan = store
            .explain(
                &coll(),
                &scope,
                &Filter::parse(&json!({"t": 1})).expect("f"),
            )
            .await
            .expect("explain");
        assert!(!plan.join(" ").contains("ix_things_"));
    });
}

#[tokio::test]
async fn documents_survive_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let body =
        json!({"i": 9223372036854775807_i64, "f": 1.0, "nested": {"a": [1, 2.5, "x", null, true]}});
    {
        let store = open_at(dir.path(), Opts::default());
        define(&store, &[]).await.expect("define");
        store
            .insert(&people(), &tenant_scope(""), &doc("keep", body.clone()))
            .await
            .expect("insert");
    }
    let store = open_at(dir.path(), Opts::default());
    let got = store
        .get(&people(), &tenant_scope(""), &id("keep"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(Value::Object(got.body.clone()), body);
    assert!(got.body["f"].is_f64() && got.body["i"].is_i64());
}

/// After the store is dropped (a server stopping, `arca import` ending),
/// the database file alone holds every commit: a copy of `arca.db`
/// without its WAL has all the documents.
#[tokio::test]
async fn a_closed_store_leaves_every_commit_in_the_database_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open_at(dir.path(), Opts::default());
    define(&store, &[]).await.expect("define");
    let s: Scope = tenant_scope("");
    // Few enough commits that SQLite's automatic checkpoint never runs.
    for i in 0..200 {
        store
            .insert(&people(), &s, &doc(&format!("d{i}"), json!({"n": i})))
            .await
            .expect("insert");
    }
    assert_eq!(store.count(&people(), &s, &Filter::all()).await, Ok(200));
    drop(store);
    let copy = tempfile::tempdir().expect("tmp");
    std::fs::copy(dir.path().join("arca.db"), copy.path().join("arca.db")).expect("copy");
    let reopened = open_at(copy.path(), Opts::default());
    assert_eq!(reopened.count(&people(), &s, &Filter::all()).await, Ok(200));
}

/// Two stores on one file (two processes): a definition changed through
/// one moves the generation the other reads.
#[tokio::test]
async fn a_second_store_on_the_file_sees_the_catalogue_generation_move() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = open_at(dir.path(), Opts::default());
    let b = open_at(dir.path(), Opts::default());
    let before = b.catalog_generation().await.expect("generation");
    define(&a, &[]).await.expect("define");
    assert!(b.catalog_generation().await.expect("generation") > before);
    let seen = b.collections().await.expect("collections");
    assert_eq!(seen.len(), 1);
}
