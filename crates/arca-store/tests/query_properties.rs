//! Property tests of the embedded engine's query path against the
//! reference evaluator: random documents (arrays on paths included) and
//! random filters give exactly the evaluator's matches through the SQL
//! prefilter; cursor walks over random data, sorts and page sizes visit
//! every document exactly once; and the planner uses the declared index.

use arca_core::query::{Cursor, Filter, Sort};
use arca_core::{CollectionName, DocId, IndexDef, Scope, Tenant};
use arca_store::{NewDocument, Query, SqliteOptions, SqliteStore, Store, TextPage};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

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

async fn load(
    docs: &[Map<String, Value>],
    indexes: &[IndexDef],
) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = SqliteStore::open(&SqliteOptions {
        path: dir.path().join("p.db"),
        synchronous_full: false,
        readers: 2,
        read_timeout: std::time::Duration::from_secs(30),
        reader_cache_kib: 2000,
    })
    .expect("open");
    store
        .put_collection(&coll(), &json!({"type": "object"}), indexes, &json!({}))
        .await
        .expect("define");
    let scope = Scope::tenant(Tenant::None);
    for (i, body) in docs.iter().enumerate() {
        let doc = NewDocument {
            id: Some(DocId::parse(&format!("d{i:03}")).expect("id")),
            owner: "o".into(),
            body: body.clone(),
        };
        store.insert(&coll(), &scope, doc).await.expect("insert");
    }
    // A document of another tenant that matches nearly everything must never leak.
    let other = Scope::tenant(Tenant::parse("other").expect("tenant"));
    for body in docs.iter().take(3) {
        let doc = NewDocument {
            id: None,
            owner: "o".into(),
            body: body.clone(),
        };
        store
            .insert(&coll(), &other, doc)
            .await
            .expect("insert other");
    }
    (dir, store)
}

fn indexes() -> Vec<IndexDef> {
    vec![
        IndexDef {
            fields: vec![("a".into(), 1)],
            unique: false,
            sparse: false,
        },
        IndexDef {
            fields: vec![("a.b".into(), 1)],
            unique: false,
            sparse: false,
        },
        IndexDef {
            fields: vec![("n".into(), -1)],
            unique: false,
            sparse: false,
        },
        IndexDef {
            fields: vec![("a.0".into(), 1)],
            unique: false,
            sparse: false,
        },
    ]
}

proptest! {
    // Enough cases to reach the rarer plans (an equality page over a
    // document with an array on the path) reliably.
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn sql_path_returns_exactly_the_evaluators_matches(
        docs in proptest::collection::vec(document(), 1..25),
        filters in proptest::collection::vec(filter(), 1..8),
    ) {
        rt().block_on(async {
            let (_dir, store) = load(&docs, &indexes()).await;
            let scope = Scope::tenant(Tenant::None);
            let all = store
                .find(&coll(), &scope, &Query { filter: Filter::all(), sort: Sort::by_id(), after: None, limit: 1000 })
                .await
                .expect("all");
            for fv in &filters {
                let f = Filter::parse(fv).expect("generated filters are valid");
                let expected: Vec<String> = all
                    .iter()
                    .filter(|d| f.matches(&d.to_json()))
                    .map(|d| d.system.id.to_string())
                    .collect();
                let query = Query { filter: f.clone(), sort: Sort::by_id(), after: None, limit: 1000 };
                let found = store.find(&coll(), &scope, &query).await.expect("find");
                let got: Vec<String> = found.iter().map(|d| d.system.id.to_string()).collect();
                prop_assert_eq!(&got, &expected, "filter {}", fv);
                // The text listing (partial parse for the filter) finds the
                // same documents and sends them byte for byte as parsed.
                let text_docs = store
                    .find_text(&coll(), &scope, &query)
                    .await
                    .expect("find_text");
                let texts: Vec<Vec<u8>> = text_docs.iter().map(|t| t.to_json_bytes()).collect();
                // The engine's written page is the default one (written
                // from `find_text`), at a page size that splits the result.
                let page = store
                    .find_page(&coll(), &scope, &query, 3)
                    .await
                    .expect("find_page");
                prop_assert_eq!(page, TextPage::of(text_docs, 3), "written page of {}", fv);
                let parsed: Vec<Vec<u8>> =
                    found.iter().map(|d| serde_json::to_vec(d).expect("json")).collect();
                prop_assert_eq!(texts, parsed, "text listing of {}", fv);
                let n = store.count(&coll(), &scope, &f).await.expect("count");
                prop_assert_eq!(n as usize, expected.len(), "count of {}", fv);
            }
            Ok(())
        })?;
    }

    #[test]
    fn cursor_walks_visit_every_document_once(
        docs in proptest::collection::vec(document(), 0..30),
        sort in prop_oneof![Just("a"), Just("-a"), Just("n,-a.b"), Just("-n"), Just("t,_id"), Just("-_id"), Just("_id")],
        page in 1usize..7,
    ) {
        rt().block_on(async {
            let (_dir, store) = load(&docs, &[]).await;
            let scope = Scope::tenant(Tenant::None);
            let sort = Sort::parse(sort).expect("sort");
            let mut seen: Vec<String> = Vec::new();
            let mut after: Option<Cursor> = None;
            loop {
                let q = Query { filter: Filter::all(), sort: sort.clone(), after: after.clone(), limit: page };
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
                after = Some(Cursor { key: sort.key(&last.to_json()).0, id: last.system.id.to_string() });
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), seen.len(), "no document twice");
            prop_assert_eq!(seen.len(), docs.len(), "every document once");
            Ok(())
        })?;
    }
}

#[test]
fn equality_pages_find_documents_through_arrays() {
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
        let (_dir, store) = load(&docs, &indexes()).await;
        let scope = Scope::tenant(Tenant::None);
        let ids = |f: Value, limit: usize| {
            let store = &store;
            let scope = &scope;
            async move {
                let q = Query {
                    filter: Filter::parse(&f).expect("filter"),
                    sort: Sort::by_id(),
                    after: None,
                    limit,
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
        let (_dir, store) = load(&docs, &indexes()).await;
        let scope = Scope::tenant(Tenant::None);
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
