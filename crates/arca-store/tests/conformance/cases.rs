//! The suite's cases: one behaviour each, through the `Store` trait only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arca_core::query::{Cursor, Filter, Sort};
use arca_core::{Document, DocumentText, SystemFields};
use arca_store::{PutOutcome, Query, Store, StoreError};
use serde_json::{Value, json};

use super::*;

fn query(filter: Value, sort: &str, after: Option<Cursor>, limit: usize) -> Query {
    Query {
        filter: Filter::parse(&filter).expect("filter"),
        sort: if sort.is_empty() {
            Sort::by_id()
        } else {
            Sort::parse(sort).expect("sort")
        },
        after,
        limit,
        max_bytes: None,
    }
}

fn ids(docs: &[Document]) -> Vec<String> {
    docs.iter().map(|d| d.system.id.to_string()).collect()
}

/// The next revision of `d` with `body`, written at `T1`.
fn next(d: &Document, body: Value) -> Document {
    Document {
        system: d.system.next(T1.into()),
        body: obj(body),
    }
}

pub async fn round_trip_of_every_document_method<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    assert_eq!(define(store, &[]).await, Ok(PutOutcome::Created));
    let s = tenant_scope("");
    let first = doc("ana", json!({"name": "Ana", "n": 1}));
    store.insert(&people(), &s, &first).await.expect("insert");
    let got = store.get(&people(), &s, &id("ana")).await.expect("get");
    assert_eq!(got.as_ref(), Some(&first), "stored exactly as given");
    let second = next(&first, json!({"name": "Bia"}));
    store
        .replace(&people(), &s, &second, 1)
        .await
        .expect("replace");
    let got = store.get(&people(), &s, &id("ana")).await.expect("get");
    let got = got.expect("found");
    assert_eq!(got, second);
    assert_eq!(got.system.rev, 2);
    assert_eq!(got.system.created_at, T0, "creation time kept");
    assert_eq!(got.system.updated_at, T1);
    let removed = store
        .delete(&people(), &s, &id("ana"), Some(2))
        .await
        .expect("delete");
    assert_eq!(removed, second, "a delete returns the document it removed");
    assert_eq!(store.get(&people(), &s, &id("ana")).await, Ok(None));
}

pub async fn conditional_writes_tell_rev_mismatch_from_not_found<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    let d = doc("x", json!({"v": 1}));
    store.insert(&people(), &s, &d).await.expect("insert");
    let stale = next(&d, json!({"v": 2}));
    assert_eq!(
        store.replace(&people(), &s, &stale, 7).await,
        Err(StoreError::RevMismatch)
    );
    assert_eq!(
        store.delete(&people(), &s, &id("x"), Some(7)).await,
        Err(StoreError::RevMismatch)
    );
    // Neither changed anything.
    assert_eq!(
        store.get(&people(), &s, &id("x")).await,
        Ok(Some(d.clone()))
    );
    let ghost = next(&doc("ghost", json!({})), json!({}));
    assert_eq!(
        store.replace(&people(), &s, &ghost, 1).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.delete(&people(), &s, &id("ghost"), None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.delete(&people(), &s, &id("x"), None).await,
        Ok(d),
        "no expected revision: deleted whatever it is"
    );
    assert_eq!(
        store.delete(&people(), &s, &id("x"), None).await,
        Err(StoreError::NotFound)
    );
}

pub async fn a_duplicate_id_is_a_conflict_named_id<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    store
        .insert(&people(), &s, &doc("same", json!({"a": 1})))
        .await
        .expect("first");
    assert_eq!(
        store
            .insert(&people(), &s, &doc("same", json!({"a": 2})))
            .await,
        Err(StoreError::Conflict("_id".into()))
    );
    let kept = store.get(&people(), &s, &id("same")).await.expect("get");
    assert_eq!(kept.map(|d| d.body["a"].clone()), Some(json!(1)));
}

pub async fn tenants_never_see_each_other<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("email", true, false)])
        .await
        .expect("define");
    let (a, b, none) = (tenant_scope("a"), tenant_scope("b"), tenant_scope(""));
    store
        .insert(&people(), &a, &doc("x", json!({"email": "e", "who": "a"})))
        .await
        .expect("a");
    // The same _id and the same unique value in another tenant: allowed.
    store
        .insert(&people(), &b, &doc("x", json!({"email": "e", "who": "b"})))
        .await
        .expect("b");
    let seen = store.get(&people(), &b, &id("x")).await.expect("get");
    assert_eq!(seen.map(|d| d.body["who"].clone()), Some(json!("b")));
    assert_eq!(store.get(&people(), &none, &id("x")).await, Ok(None));
    assert_eq!(store.get_text(&people(), &none, &id("x")).await, Ok(None));
    assert_eq!(store.count(&people(), &a, &Filter::all()).await, Ok(1));
    assert_eq!(store.count(&people(), &none, &Filter::all()).await, Ok(0));
    let all = query(json!({}), "", None, 100);
    assert_eq!(
        store.find(&people(), &none, &all).await.map(|d| d.len()),
        Ok(0)
    );
    assert_eq!(
        store.find_text(&people(), &b, &all).await.map(|d| d.len()),
        Ok(1)
    );
    // Writes across the boundary find nothing, and change nothing.
    let moved = next(&doc("x", json!({"email": "e"})), json!({"who": "none"}));
    assert_eq!(
        store.replace(&people(), &none, &moved, 1).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.delete(&people(), &none, &id("x"), None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.count(&people(), &a, &Filter::all()).await, Ok(1));
    assert_eq!(store.count(&people(), &b, &Filter::all()).await, Ok(1));
}

/// A unique index over a field holding arrays has one key per element, as
/// MongoDB's multikey indexes: two documents of a tenant sharing any
/// element conflict, in either order, on insert, replace and when the
/// index is added; repeats within one document do not; an empty array is
/// one key (MongoDB's `undefined`); compound indexes take each element
/// with the other fields.
pub async fn unique_indexes_over_arrays_are_multikey<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("tags", true, false)])
        .await
        .expect("define");
    let s = tenant_scope("");
    let put = |id: &'static str, body: Value| {
        let s = s.clone();
        async move { store.insert(&people(), &s, &doc(id, body)).await }
    };
    let conflict = Err(StoreError::Conflict("tags".into()));
    assert_eq!(put("d1", json!({"tags": ["a", "b"]})).await, Ok(()));
    assert_eq!(
        put("d2", json!({"tags": ["b", "c"]})).await,
        conflict,
        "shares b"
    );
    assert_eq!(
        put("d3", json!({"tags": "a"})).await,
        conflict,
        "a value equal to an element"
    );
    assert_eq!(
        put("d4", json!({"tags": ["z", "z"]})).await,
        Ok(()),
        "repeats in one document"
    );
    assert_eq!(put("d5", json!({"tags": ["c"]})).await, Ok(()));
    assert_eq!(
        put("d6", json!({"tags": "c"})).await,
        conflict,
        "a single value, then"
    );
    assert_eq!(put("d7", json!({"tags": [2]})).await, Ok(()));
    assert_eq!(
        put("d8", json!({"tags": 2.0})).await,
        conflict,
        "2 and 2.0 are one key"
    );
    // A replace keeps its own keys, and may not take another's.
    let d1 = store
        .get(&people(), &s, &id("d1"))
        .await
        .expect("get")
        .expect("d1");
    store
        .replace(
            &people(),
            &s,
            &next(&d1, json!({"tags": ["b", "a", "q"]})),
            1,
        )
        .await
        .expect("own keys");
    let d4 = store
        .get(&people(), &s, &id("d4"))
        .await
        .expect("get")
        .expect("d4");
    assert_eq!(
        store
            .replace(&people(), &s, &next(&d4, json!({"tags": ["y", "q"]})), 1)
            .await,
        conflict
    );
    // Another tenant is free.
    store
        .insert(
            &people(),
            &tenant_scope("t"),
            &doc("d1", json!({"tags": ["a", "b"]})),
        )
        .await
        .expect("another tenant");
    // null in an array is the null key, which a missing field has too.
    assert_eq!(put("n1", json!({"tags": [null, "n"]})).await, Ok(()));
    assert_eq!(put("n2", json!({})).await, conflict, "missing is null");
    if !E::standin() {
        // MongoDB indexes an empty array as `undefined` (the stand-in
        // indexes nothing for it: recorded in the README).
        assert_eq!(put("e1", json!({"tags": []})).await, Ok(()));
        assert_eq!(
            put("e2", json!({"tags": []})).await,
            conflict,
            "two empty arrays"
        );
    }
    // Compound: each element with the other field.
    let pairs = CollectionName::parse("pairs").expect("name");
    let compound = IndexDef {
        fields: vec![("x".into(), 1), ("tags".into(), 1)],
        unique: true,
        sparse: false,
    };
    define_at(store, &pairs, std::slice::from_ref(&compound), T0)
        .await
        .expect("define pairs");
    let pair = |id: &'static str, body: Value| {
        let (s, pairs) = (s.clone(), pairs.clone());
        async move { store.insert(&pairs, &s, &doc(id, body)).await }
    };
    assert_eq!(
        pair("p1", json!({"x": 1, "tags": ["a", "b"]})).await,
        Ok(())
    );
    assert_eq!(
        pair("p2", json!({"x": 1, "tags": "b"})).await,
        Err(StoreError::Conflict("x, tags".into()))
    );
    assert_eq!(pair("p3", json!({"x": 2, "tags": "b"})).await, Ok(()));
    assert_eq!(
        pair("p4", json!({"x": 2, "tags": ["c", "b"]})).await,
        Err(StoreError::Conflict("x, tags".into()))
    );
    // Adding the index over documents that share an element: refused, and
    // nothing changes.
    let later = CollectionName::parse("later").expect("name");
    define_at(store, &later, &[], T0)
        .await
        .expect("define later");
    for (i, tags) in [json!(["a", "b"]), json!(["b", "c"])]
        .into_iter()
        .enumerate()
    {
        store
            .insert(&later, &s, &doc(&format!("l{i}"), json!({ "tags": tags })))
            .await
            .expect("insert");
    }
    assert_eq!(
        define_at(store, &later, &[index("tags", true, false)], T1).await,
        Err(StoreError::DuplicatesForUniqueIndex("tags".into()))
    );
    store
        .insert(&later, &s, &doc("l2", json!({"tags": ["a"]})))
        .await
        .expect("still no index");
}

pub async fn unique_indexes_follow_mongodb_equality_per_tenant<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("email", true, false)])
        .await
        .expect("define");
    let s = tenant_scope("");
    store
        .insert(&people(), &s, &doc("d1", json!({"email": 1})))
        .await
        .expect("1");
    assert_eq!(
        store
            .insert(&people(), &s, &doc("d2", json!({"email": 1.0})))
            .await,
        Err(StoreError::Conflict("email".into())),
        "1 and 1.0 are equal numbers"
    );
    for (i, v) in [json!("1"), json!(true), json!([3, 4])]
        .into_iter()
        .enumerate()
    {
        store
            .insert(&people(), &s, &doc(&format!("o{i}"), json!({ "email": v })))
            .await
            .unwrap_or_else(|e| panic!("{v} is another value than 1: {e}"));
    }
    store
        .insert(&people(), &s, &doc("m1", json!({})))
        .await
        .expect("a first document without the field");
    assert_eq!(
        store
            .insert(&people(), &s, &doc("m2", json!({"email": null})))
            .await,
        Err(StoreError::Conflict("email".into())),
        "null and missing are the same key"
    );
    assert_eq!(
        store.insert(&people(), &s, &doc("m3", json!({}))).await,
        Err(StoreError::Conflict("email".into()))
    );
    // Unique per tenant: the same value in another tenant is free.
    store
        .insert(
            &people(),
            &tenant_scope("t"),
            &doc("d2", json!({"email": 1})),
        )
        .await
        .expect("another tenant");
    // A replace that would break the index is a conflict too.
    let d1 = store
        .get(&people(), &s, &id("o0"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        store
            .replace(&people(), &s, &next(&d1, json!({"email": 1})), 1)
            .await,
        Err(StoreError::Conflict("email".into()))
    );
}

pub async fn sparse_unique_indexes_skip_documents_without_the_field<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("code", true, true)])
        .await
        .expect("define");
    let s = tenant_scope("");
    for i in 0..3 {
        store
            .insert(&people(), &s, &doc(&format!("m{i}"), json!({"other": i})))
            .await
            .expect("documents without the field are not indexed");
    }
    store
        .insert(&people(), &s, &doc("c1", json!({"code": "A"})))
        .await
        .expect("c1");
    assert_eq!(
        store
            .insert(&people(), &s, &doc("c2", json!({"code": "A"})))
            .await,
        Err(StoreError::Conflict("code".into()))
    );
}

pub async fn a_unique_index_over_duplicates_changes_nothing<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("n", false, false)])
        .await
        .expect("define");
    let s = tenant_scope("");
    for i in 0..2 {
        store
            .insert(
                &people(),
                &s,
                &doc(&format!("d{i}"), json!({"email": "same"})),
            )
            .await
            .expect("insert");
    }
    assert_eq!(
        define_at(
            store,
            &people(),
            &[index("n", false, false), index("email", true, false)],
            T1
        )
        .await,
        Err(StoreError::DuplicatesForUniqueIndex("email".into()))
    );
    let defs = store.collections().await.expect("collections");
    assert_eq!(
        defs[0].indexes,
        vec![index("n", false, false)],
        "the definition stays as it was"
    );
    assert_eq!(defs[0].updated_at, T0);
    // The same values in two tenants do not stop a unique index.
    let f2 = E::open(Opts::default()).await;
    let store = f2.store.as_ref();
    define(store, &[]).await.expect("define");
    for t in ["a", "b"] {
        store
            .insert(
                &people(),
                &tenant_scope(t),
                &doc("d", json!({"email": "same"})),
            )
            .await
            .expect("insert");
    }
    assert_eq!(
        define_at(store, &people(), &[index("email", true, false)], T1).await,
        Ok(PutOutcome::Updated)
    );
}

pub async fn numbers_keep_their_kind<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    let body = json!({"i": 9223372036854775807_i64, "n": -9223372036854775808_i64, "small": 7,
                      "f": 1.0, "g": 0.1, "e": 1e300, "neg": -2.5,
                      "nested": {"a": [1, 2.5, "x", null, true, {"z": 3.0}]}});
    store
        .insert(&people(), &s, &doc("num", body.clone()))
        .await
        .expect("insert");
    let got = store
        .get(&people(), &s, &id("num"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(Value::Object(got.body.clone()), body);
    assert!(got.body["f"].is_f64(), "1.0 stays a float");
    assert!(got.body["i"].is_i64() && got.body["small"].is_i64());
    assert!(got.body["nested"]["a"][5]["z"].is_f64());
    let text = store
        .get_text(&people(), &s, &id("num"))
        .await
        .expect("get")
        .expect("found");
    let reparsed: Value = serde_json::from_slice(&text.to_json_bytes()).expect("json");
    assert_eq!(reparsed["f"], json!(1.0));
    assert!(reparsed["f"].is_f64() && reparsed["i"].is_i64());
    // Member order is kept.
    let keys: Vec<&String> = got.body.keys().collect();
    assert_eq!(
        keys,
        ["i", "n", "small", "f", "g", "e", "neg", "nested"]
            .iter()
            .collect::<Vec<_>>()
    );
}

pub async fn text_reads_match_parsed_reads<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    let bodies = [
        json!({}),
        json!({"name": "Zoë \"q\" \\ \n 😀", "n": 1.5, "big": 9223372036854775807_i64, "neg": -7}),
        json!({"nested": {"a": [1, {"b": null}], "": false}, "e": 1e-7, "z": 0.1}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let raw = format!("t{i}");
        store
            .insert(&people(), &s, &doc(&raw, body.clone()))
            .await
            .expect("insert");
        let parsed = store
            .get(&people(), &s, &id(&raw))
            .await
            .expect("get")
            .expect("found");
        let text = store
            .get_text(&people(), &s, &id(&raw))
            .await
            .expect("get")
            .expect("found");
        assert_eq!(
            text.to_json_bytes(),
            serde_json::to_vec(&parsed).expect("json"),
            "{body}"
        );
        assert_eq!(text.system, parsed.system);
    }
    let all = query(json!({}), "", None, 10);
    let parsed = store.find(&people(), &s, &all).await.expect("find");
    let texts = store.find_text(&people(), &s, &all).await.expect("find");
    let as_bytes = |t: &[DocumentText]| -> Vec<Vec<u8>> {
        t.iter().map(DocumentText::to_json_bytes).collect()
    };
    let parsed_bytes: Vec<Vec<u8>> = parsed
        .iter()
        .map(|d| serde_json::to_vec(d).expect("json"))
        .collect();
    assert_eq!(as_bytes(&texts), parsed_bytes);
}

pub async fn row_filtered_scopes_apply_to_every_read<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("acme");
    for (raw, team) in [("a", "red"), ("b", "blue"), ("c", "red")] {
        store
            .insert(&people(), &s, &doc(raw, json!({ "team": team })))
            .await
            .expect("insert");
    }
    let red = filtered_scope("acme", json!({"team": "red"}));
    assert!(
        store
            .get(&people(), &red, &id("a"))
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(store.get(&people(), &red, &id("b")).await, Ok(None));
    assert_eq!(store.get_text(&people(), &red, &id("b")).await, Ok(None));
    let inside = store.get_text(&people(), &red, &id("c")).await;
    assert_eq!(inside.expect("get").map(|d| d.system.id), Some(id("c")));
    let all = query(json!({}), "", None, 10);
    assert_eq!(
        ids(&store.find(&people(), &red, &all).await.expect("find")),
        ["a", "c"]
    );
    let texts = store.find_text(&people(), &red, &all).await.expect("find");
    assert_eq!(texts.len(), 2);
    assert_eq!(store.count(&people(), &red, &Filter::all()).await, Ok(2));
    let narrowed = Filter::parse(&json!({"_id": {"$ne": "a"}})).expect("filter");
    assert_eq!(store.count(&people(), &red, &narrowed).await, Ok(1));
    // The same filter in another tenant sees nothing.
    let other = filtered_scope("zeta", json!({"team": "red"}));
    assert_eq!(store.count(&people(), &other, &Filter::all()).await, Ok(0));
}

pub async fn listings_page_in_id_order_after_a_cursor<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    for raw in ["c", "a", "b", "B", "a-1"] {
        store
            .insert(&people(), &s, &doc(raw, json!({})))
            .await
            .expect("insert");
    }
    let p1 = store
        .find(&people(), &s, &query(json!({}), "", None, 2))
        .await
        .expect("p1");
    // Code-point order: uppercase before lowercase, '-' before letters.
    assert_eq!(ids(&p1), ["B", "a"]);
    let cur = Cursor {
        key: vec![],
        id: "a".into(),
    };
    let p2 = store
        .find(&people(), &s, &query(json!({}), "", Some(cur), 10))
        .await
        .expect("p2");
    assert_eq!(ids(&p2), ["a-1", "b", "c"]);
    let back = store
        .find(&people(), &s, &query(json!({}), "-_id", None, 2))
        .await
        .expect("desc");
    assert_eq!(ids(&back), ["c", "b"]);
}

/// Values of every kind JSON has, in the order MongoDB sorts them
/// ascending: null and missing, numbers, strings, objects, arrays (by
/// their smallest element), booleans.
pub async fn the_cross_type_sort_order_is_mongodbs<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    let values = [
        ("k01", json!({"v": true})),
        ("k02", json!({"v": "b"})),
        ("k03", json!({"v": 2.5})),
        ("k04", json!({})),
        ("k05", json!({"v": {"x": 1}})),
        ("k06", json!({"v": null})),
        ("k07", json!({"v": -3})),
        ("k08", json!({"v": "B"})),
        ("k09", json!({"v": false})),
        ("k10", json!({"v": 10})),
        ("k11", json!({"v": "a"})),
        ("k12", json!({"v": [5, "z"]})),
        ("k13", json!({"v": 9223372036854775807_i64})),
    ];
    for (raw, body) in &values {
        store
            .insert(&people(), &s, &doc(raw, body.clone()))
            .await
            .expect("insert");
    }
    for sort in ["v", "-v", "v,-_id"] {
        let parsed = Sort::parse(sort).expect("sort");
        let mut expected: Vec<(String, Value)> = values
            .iter()
            .map(|(raw, body)| {
                let mut whole = body.clone();
                whole["_id"] = json!(raw);
                (raw.to_string(), whole)
            })
            .collect();
        expected.sort_by(|(a_id, a), (b_id, b)| {
            parsed.compare(&parsed.key(a), a_id, &parsed.key(b), b_id)
        });
        let expected: Vec<String> = expected.into_iter().map(|(i, _)| i).collect();
        // Whole, then walked two at a time with cursors.
        let whole = store
            .find(&people(), &s, &query(json!({}), sort, None, 100))
            .await
            .expect("find");
        assert_eq!(ids(&whole), expected, "sort {sort}");
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .find(&people(), &s, &query(json!({}), sort, after.clone(), 2))
                .await
                .expect("page");
            walked.extend(ids(&page));
            let Some(last) = page.last() else { break };
            if page.len() < 2 {
                break;
            }
            after = Some(Cursor {
                key: parsed.key(&last.to_json()).0,
                id: last.system.id.to_string(),
            });
        }
        assert_eq!(walked, expected, "walk of sort {sort}");
    }
    // The ascending order MongoDB's manual gives, spelled out once.
    let asc = store
        .find(&people(), &s, &query(json!({}), "v", None, 100))
        .await
        .expect("find");
    assert_eq!(
        ids(&asc),
        [
            "k04", "k06", "k07", "k03", "k12", "k10", "k13", "k08", "k11", "k02", "k05", "k09",
            "k01"
        ],
        "null/missing, numbers (an array by its least element, 5), strings by code point, objects, booleans"
    );
}

pub async fn filters_limits_and_counts_agree<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("n", false, false)])
        .await
        .expect("define");
    let s = tenant_scope("");
    for i in 0..20 {
        store
            .insert(
                &people(),
                &s,
                &doc(&format!("d{i:02}"), json!({"n": i % 5, "tags": [i, "x"]})),
            )
            .await
            .expect("insert");
    }
    let q = |f: Value, limit| query(f, "", None, limit);
    let found = store
        .find(&people(), &s, &q(json!({"n": 2}), 100))
        .await
        .expect("find");
    assert_eq!(ids(&found), ["d02", "d07", "d12", "d17"]);
    let limited = store
        .find(&people(), &s, &q(json!({"n": 2}), 3))
        .await
        .expect("find");
    assert_eq!(ids(&limited), ["d02", "d07", "d12"]);
    let f = Filter::parse(&json!({"n": {"$gte": 3}, "tags": {"$in": [1, 4, 13, 18]}})).expect("f");
    assert_eq!(store.count(&people(), &s, &f).await, Ok(3));
    let none = Filter::parse(&json!({"n": {"$gt": 100}})).expect("f");
    assert_eq!(store.count(&people(), &s, &none).await, Ok(0));
    assert_eq!(store.count(&people(), &s, &Filter::all()).await, Ok(20));
    assert_eq!(store.count(&people(), &s, &Filter::nothing()).await, Ok(0));
}

pub async fn collections_are_created_redefined_and_listed<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    assert_eq!(store.collections().await, Ok(vec![]));
    let zeta = arca_core::CollectionName::parse("zeta").expect("name");
    assert_eq!(
        define_at(store, &zeta, &[], T0).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(define(store, &[]).await, Ok(PutOutcome::Created));
    assert_eq!(
        define_at(store, &people(), &[index("email", true, false)], T1).await,
        Ok(PutOutcome::Updated)
    );
    let all = store.collections().await.expect("collections");
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["people", "zeta"], "listed by name");
    let people_def = &all[0];
    assert_eq!(people_def.created_at, T0, "creation time kept");
    assert_eq!(people_def.updated_at, T1);
    assert_eq!(people_def.indexes, vec![index("email", true, false)]);
    assert_eq!(people_def.schema, json!({"type": "object"}));
    assert_eq!(people_def.access, json!({"read": {"roles": ["*"]}}));
}

pub async fn the_catalogue_generation_moves_with_every_definition_change<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let g0 = store.catalog_generation().await.expect("generation");
    define(store, &[]).await.expect("define");
    let g1 = store.catalog_generation().await.expect("generation");
    assert_ne!(g1, g0);
    define_at(store, &people(), &[index("a", false, false)], T1)
        .await
        .expect("redefine");
    let g2 = store.catalog_generation().await.expect("generation");
    assert_ne!(g2, g1);
    // Document writes are not definition changes.
    store
        .insert(&people(), &tenant_scope(""), &doc("d", json!({})))
        .await
        .expect("insert");
    assert_eq!(store.catalog_generation().await, Ok(g2));
    // A refused change does not move it.
    for i in 0..2 {
        store
            .insert(
                &people(),
                &tenant_scope(""),
                &doc(&format!("x{i}"), json!({"u": 1})),
            )
            .await
            .expect("insert");
    }
    assert!(
        define_at(store, &people(), &[index("u", true, false)], T1)
            .await
            .is_err()
    );
    assert_eq!(store.catalog_generation().await, Ok(g2));
    assert_eq!(store.delete_collection(&people()).await, Ok(true));
    let g3 = store.catalog_generation().await.expect("generation");
    assert_ne!(g3, g2);
}

pub async fn deleting_a_collection_drops_its_documents<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    store
        .insert(&people(), &s, &doc("a", json!({})))
        .await
        .expect("insert");
    assert_eq!(store.delete_collection(&people()).await, Ok(true));
    assert_eq!(store.delete_collection(&people()).await, Ok(false));
    assert_eq!(store.collections().await, Ok(vec![]));
    define(store, &[]).await.expect("define again");
    assert_eq!(store.count(&people(), &s, &Filter::all()).await, Ok(0));
    assert_eq!(store.get(&people(), &s, &id("a")).await, Ok(None));
}

pub async fn a_missing_collection_is_collection_missing<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let s = tenant_scope("");
    let ghost = arca_core::CollectionName::parse("ghost").expect("name");
    assert_eq!(
        store.insert(&ghost, &s, &doc("a", json!({}))).await,
        Err(StoreError::CollectionMissing)
    );
    let replaced = next(&doc("a", json!({})), json!({}));
    assert_eq!(
        store.replace(&ghost, &s, &replaced, 1).await,
        Err(StoreError::CollectionMissing)
    );
    assert_eq!(
        store.delete(&ghost, &s, &id("a"), None).await,
        Err(StoreError::CollectionMissing)
    );
    assert_eq!(
        store.get(&ghost, &s, &id("a")).await,
        Err(StoreError::CollectionMissing)
    );
    assert_eq!(
        store
            .find(&ghost, &s, &query(json!({}), "", None, 10))
            .await
            .map(|d| d.len()),
        Err(StoreError::CollectionMissing)
    );
    assert_eq!(
        store.count(&ghost, &s, &Filter::all()).await,
        Err(StoreError::CollectionMissing)
    );
}

pub async fn a_read_past_its_time_limit_is_a_timeout<E: Engine>() {
    let f = E::open(Opts {
        read_timeout: Duration::from_millis(1),
        ..Opts::default()
    })
    .await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    for i in 0..E::SLOW_SCAN_DOCS {
        store
            .insert(
                &people(),
                &s,
                &doc(&format!("d{i:05}"), json!({"n": i, "pad": "x".repeat(200)})),
            )
            .await
            .expect("insert");
    }
    // A full scan with an unindexed filter and a sort takes far more than 1 ms.
    let r = store
        .find(
            &people(),
            &s,
            &query(json!({"n": {"$gt": 1_000_000}}), "-n", None, 5),
        )
        .await;
    assert_eq!(r.map(|v| v.len()), Err(StoreError::Timeout));
    // The engine serves the next read.
    assert_eq!(store.ping().await, Ok(()));
}

/// Under a steady stream of other reads of both kinds, every read sees
/// each write acknowledged before it was asked: a just-created document is
/// found by id and by a listing, a just-replaced one has its new revision
/// in both.
pub async fn reads_see_every_write_acknowledged_before_them<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store: Arc<dyn Store> = f.store.clone();
    define(store.as_ref(), &[]).await.expect("define");
    let hot = doc("hot", json!({"n": 0}));
    store
        .insert(&people(), &tenant_scope(""), &hot)
        .await
        .expect("insert");
    let stop = Arc::new(AtomicBool::new(false));
    let noise: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let scope = tenant_scope("");
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let got = store.get(&people(), &scope, &id("hot")).await;
                    assert!(got.expect("get").is_some());
                    let n = store.count(&people(), &scope, &Filter::all()).await;
                    assert!(n.expect("count") > 0);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let listed_rev = |store: Arc<dyn Store>, raw: String| async move {
        let found = store
            .find(
                &people(),
                &tenant_scope(""),
                &query(json!({ "_id": raw }), "", None, 10),
            )
            .await
            .expect("find");
        assert!(found.len() <= 1, "one document per id");
        found.first().map(|d| d.system.rev)
    };
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let scope = tenant_scope("");
                for i in 0..5 {
                    let raw = format!("w{w}-{i}");
                    let d = doc(&raw, json!({ "n": i }));
                    store.insert(&people(), &scope, &d).await.expect("insert");
                    let seen = store.get(&people(), &scope, &d.system.id).await;
                    assert_eq!(seen.expect("get").map(|d| d.system.rev), Some(1), "{raw}");
                    assert_eq!(listed_rev(store.clone(), raw.clone()).await, Some(1));
                    let replaced = Document {
                        system: SystemFields {
                            rev: 2,
                            updated_at: T1.into(),
                            ..d.system.clone()
                        },
                        body: obj(json!({ "n": -i })),
                    };
                    store
                        .replace(&people(), &scope, &replaced, 1)
                        .await
                        .expect("replace");
                    let seen = store.get(&people(), &scope, &d.system.id).await;
                    assert_eq!(seen.expect("get").map(|d| d.system.rev), Some(2), "{raw}");
                    assert_eq!(listed_rev(store.clone(), raw.clone()).await, Some(2));
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, Ordering::Relaxed);
    for n in noise {
        assert!(n.await.expect("reader") > 0);
    }
}

/// The filter table (`arca-core/tests/filter_cases.json`, each case naming
/// the MongoDB rule it checks) through the engine: every case finds exactly
/// the documents the table expects, in `_id` order, and counts them.
pub async fn the_filter_table_finds_what_it_expects<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(
        store,
        &[index("age", false, false), index("tags", false, false)],
    )
    .await
    .expect("define");
    let table: Value =
        serde_json::from_str(include_str!("../../../arca-core/tests/filter_cases.json"))
            .expect("table");
    let s = tenant_scope("");
    let other = tenant_scope("other");
    for d in table["docs"].as_array().expect("docs") {
        let mut body = d.as_object().cloned().expect("object");
        let raw = body.remove("_id").expect("_id");
        let raw = raw.as_str().expect("string id");
        store
            .insert(&people(), &s, &doc(raw, Value::Object(body.clone())))
            .await
            .expect("insert");
        // The same documents in another tenant must never be found.
        store
            .insert(&people(), &other, &doc(raw, Value::Object(body)))
            .await
            .expect("insert other");
    }
    let mut failures = Vec::new();
    for case in table["cases"].as_array().expect("cases") {
        let filter = Filter::parse(&case["filter"]).expect("filter");
        let want: Vec<String> = case["expect"]
            .as_array()
            .expect("expect")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let q = Query {
            filter: filter.clone(),
            sort: Sort::by_id(),
            after: None,
            limit: 100,
            max_bytes: None,
        };
        let got = ids(&store.find(&people(), &s, &q).await.expect("find"));
        let n = store.count(&people(), &s, &filter).await.expect("count");
        if got != want || n as usize != want.len() {
            failures.push(format!(
                "{}: {} found {got:?} and counted {n}, expected {want:?}",
                case["rule"], case["filter"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `export` walks every tenant's documents in (tenant key, id) order,
/// page after page, exactly as stored; a copied definition keeps its
/// creation time.
pub async fn export_walks_every_tenant_in_order<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let mut expected = Vec::new();
    for (tenant, ids) in [("", ["b", "a"]), ("zeta", ["a", "c"]), ("acme", ["x", "y"])] {
        for raw in ids {
            let d = doc(raw, json!({ "t": tenant, "id": raw }));
            store
                .insert(&people(), &tenant_scope(tenant), &d)
                .await
                .expect("insert");
            expected.push((tenant.to_owned(), d));
        }
    }
    expected.sort_by(|(ta, a), (tb, b)| (ta, &a.system.id).cmp(&(tb, &b.system.id)));
    let mut got = Vec::new();
    let mut after: Option<arca_store::ExportPosition> = None;
    loop {
        let page = store
            .export(&people(), after.as_ref(), 4)
            .await
            .expect("export");
        let Some((tenant, last)) = page.last() else {
            break;
        };
        after = Some(arca_store::ExportPosition {
            tenant: tenant.key().to_owned(),
            id: last.system.id.clone(),
        });
        let n = page.len();
        got.extend(page.into_iter().map(|(t, d)| (t.key().to_owned(), d)));
        if n < 4 {
            break;
        }
    }
    assert_eq!(got, expected);
    let ghost = arca_core::CollectionName::parse("ghost").expect("name");
    assert_eq!(
        store.export(&ghost, None, 10).await.map(|p| p.len()),
        Err(StoreError::CollectionMissing)
    );
    // A definition stored with an earlier creation time keeps it.
    let copied = arca_core::CollectionName::parse("copied").expect("name");
    store
        .put_collection(arca_store::CollectionSpec {
            name: &copied,
            schema: &json!({}),
            indexes: &[],
            access: &json!({}),
            at: T1,
            created_at: Some(T0),
        })
        .await
        .expect("define");
    let defs = store.collections().await.expect("collections");
    let def = defs.iter().find(|c| c.name == copied).expect("copied");
    assert_eq!((def.created_at.as_str(), def.updated_at.as_str()), (T0, T1));
}

/// A secret is made once and kept: the same bytes every time it is asked
/// for, different ones for another name.
pub async fn secrets_are_made_once_and_kept<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let a = store.secret("cursor").await.expect("secret");
    assert_ne!(a, [0u8; 32]);
    assert_eq!(store.secret("cursor").await, Ok(a));
    let b = store.secret("links").await.expect("secret");
    assert_ne!(a, b);
    // Concurrent first asks agree.
    let asks: Vec<_> = (0..8).map(|_| store.secret("race")).collect();
    let got = futures_util::future::join_all(asks).await;
    assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
}

// ---- Idempotency keys (issue 22) ----

fn idem_key(tenant: &str, subject: &str, key: &str) -> arca_store::IdempotencyKey {
    arca_store::IdempotencyKey {
        tenant: tenant.into(),
        subject: subject.into(),
        key: key.into(),
    }
}

/// A point of the cases' own clock: `ms` after a base a day from now.
/// Records are stamped with these times, not the wall clock's, so expiry
/// is tested without waiting; the base lies ahead so that a server's TTL
/// monitor (MongoDB deletes documents past their `exp` date) leaves them
/// alone while a case runs.
fn at(ms: i64) -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        i64::try_from(now.as_millis()).expect("ms") + 86_400_000
    }) + ms
}

/// A claim of `key` by `run` at `now` (ms): a lease of 100 ms, an expiry
/// 1000 ms later.
fn claim<'a>(
    key: &'a arca_store::IdempotencyKey,
    fingerprint: &'a str,
    run: &'a str,
    now: i64,
) -> arca_store::IdempotencyClaim<'a> {
    arca_store::IdempotencyClaim {
        key,
        fingerprint,
        run,
        now,
        lease_until: now + 100,
        expires_at: now + 1000,
    }
}

fn created(body: &str) -> arca_store::StoredResponse {
    arca_store::StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "location".into(),
                "/v1/collections/people/documents/x".into(),
            ),
            ("etag".into(), "\"1\"".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

pub async fn idempotency_a_key_runs_once_then_replays_its_response<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", "k-1");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    // A retry while the first runs.
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r2", at(10)))
            .await,
        Ok(Running)
    );
    // Only the run that holds the key finishes it.
    assert_eq!(
        store.idempotency_finish(&k, "r2", &created("{}")).await,
        Ok(false)
    );
    let kept = created(r#"{"_id":"x","n":1}"#);
    assert_eq!(store.idempotency_finish(&k, "r1", &kept).await, Ok(true));
    assert_eq!(
        store.idempotency_finish(&k, "r1", &created("again")).await,
        Ok(false),
        "a finished record keeps its first response"
    );
    // Every retry after that gets the kept response, past the lease too.
    for (run, now) in [("r3", 20), ("r4", 500)] {
        assert_eq!(
            store
                .idempotency_begin(&claim(&k, "fp", run, at(now)))
                .await,
            Ok(Done(kept.clone()))
        );
    }
    // Errors are kept the same way.
    let e = idem_key("acme", "alice", "k-2");
    let problem = arca_store::StoredResponse {
        status: 422,
        headers: vec![("content-type".into(), "application/problem+json".into())],
        body: br#"{"status":422}"#.to_vec(),
    };
    assert_eq!(
        store.idempotency_begin(&claim(&e, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    assert_eq!(store.idempotency_finish(&e, "r1", &problem).await, Ok(true));
    assert_eq!(
        store.idempotency_begin(&claim(&e, "fp", "r2", at(1))).await,
        Ok(Done(problem))
    );
}

pub async fn idempotency_another_request_under_a_used_key_is_a_mismatch<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("", "alice", "k");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "a", "r1", at(0))).await,
        Ok(Started)
    );
    assert_eq!(
        store.idempotency_begin(&claim(&k, "b", "r2", at(1))).await,
        Ok(Mismatch),
        "while the first runs"
    );
    store
        .idempotency_finish(&k, "r1", &created("{}"))
        .await
        .expect("finish");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "b", "r3", at(2))).await,
        Ok(Mismatch),
        "after it finished"
    );
}

pub async fn idempotency_keys_are_per_tenant_and_subject<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let callers = [
        idem_key("", "alice", "k"),
        idem_key("acme", "alice", "k"),
        idem_key("globex", "alice", "k"),
        idem_key("acme", "bob", "k"),
    ];
    for (i, k) in callers.iter().enumerate() {
        let fp = format!("fp{i}");
        assert_eq!(
            store.idempotency_begin(&claim(k, &fp, "r", at(0))).await,
            Ok(Started),
            "{k:?}"
        );
        let body = format!("{i}");
        assert_eq!(
            store.idempotency_finish(k, "r", &created(&body)).await,
            Ok(true)
        );
    }
    for (i, k) in callers.iter().enumerate() {
        let fp = format!("fp{i}");
        assert_eq!(
            store
                .idempotency_begin(&claim(k, &fp, "again", at(1)))
                .await,
            Ok(Done(created(&format!("{i}")))),
            "{k:?} sees its own response only"
        );
    }
}

pub async fn idempotency_records_expire<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", "k");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "a", "r1", at(0))).await,
        Ok(Started)
    );
    store
        .idempotency_finish(&k, "r1", &created("first"))
        .await
        .expect("finish");
    let other = idem_key("acme", "alice", "other");
    assert_eq!(
        store
            .idempotency_begin(&claim(&other, "a", "r1", at(500)))
            .await,
        Ok(Started)
    );
    // Just before the expiry the record answers; at it, the key is free
    // again, even for another request.
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "b", "r2", at(999)))
            .await,
        Ok(Mismatch)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "b", "r2", at(1000)))
            .await,
        Ok(Started)
    );
    assert_eq!(
        store.idempotency_finish(&k, "r2", &created("second")).await,
        Ok(true)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "b", "r3", at(1001)))
            .await,
        Ok(Done(created("second")))
    );
    // The purge drops what expired at its time and nothing else.
    assert_eq!(store.idempotency_purge(at(1400), 100).await, Ok(0));
    assert_eq!(
        store.idempotency_purge(at(1500), 100).await,
        Ok(1),
        "`other`"
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&other, "z", "r2", at(1501)))
            .await,
        Ok(Started),
        "a purged key is free"
    );
    assert_eq!(
        store.idempotency_purge(at(5000), 1).await,
        Ok(1),
        "at most the limit"
    );
    assert_eq!(store.idempotency_purge(at(5000), 100).await, Ok(1));
    assert_eq!(store.idempotency_purge(at(5000), 100).await, Ok(0));
}

pub async fn idempotency_a_passed_lease_is_taken_over_and_the_old_run_loses<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", "k");
    // r1 claims at 0 (lease until 100) and never answers (its process
    // stopped).
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r2", at(99)))
            .await,
        Ok(Running)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r2", at(100)))
            .await,
        Ok(Started)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r3", at(150)))
            .await,
        Ok(Running)
    );
    // r1 answering late changes nothing; r2's answer is kept.
    assert_eq!(
        store.idempotency_finish(&k, "r1", &created("late")).await,
        Ok(false)
    );
    store
        .idempotency_release(&k, "r1")
        .await
        .expect("a stale release is a no-op");
    assert_eq!(
        store.idempotency_finish(&k, "r2", &created("r2")).await,
        Ok(true)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r4", at(990)))
            .await,
        Ok(Done(created("r2"))),
        "the takeover kept the first run's expiry (1000)"
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r5", at(1000)))
            .await,
        Ok(Started)
    );
}

pub async fn idempotency_a_renewed_lease_keeps_the_key<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", "k");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    // The run still works at 80 and renews until 300.
    assert_eq!(store.idempotency_renew(&k, "r1", at(300)).await, Ok(true));
    assert_eq!(
        store.idempotency_renew(&k, "r2", at(900)).await,
        Ok(false),
        "only the run that holds the key renews it"
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r2", at(200)))
            .await,
        Ok(Running)
    );
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "fp", "r2", at(300)))
            .await,
        Ok(Started),
        "then it stops renewing"
    );
    assert_eq!(store.idempotency_renew(&k, "r1", at(600)).await, Ok(false));
    store
        .idempotency_finish(&k, "r2", &created("r2"))
        .await
        .expect("finish");
    assert_eq!(
        store.idempotency_renew(&k, "r2", at(600)).await,
        Ok(false),
        "a finished record has no lease"
    );
}

pub async fn idempotency_a_released_key_runs_again<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", "k");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    store
        .idempotency_release(&k, "r2")
        .await
        .expect("not r2's: no-op");
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r2", at(1))).await,
        Ok(Running)
    );
    store.idempotency_release(&k, "r1").await.expect("release");
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "other", "r3", at(2)))
            .await,
        Ok(Started)
    );
    // A finished record is never released.
    store
        .idempotency_finish(&k, "r3", &created("kept"))
        .await
        .expect("finish");
    store.idempotency_release(&k, "r3").await.expect("no-op");
    assert_eq!(
        store
            .idempotency_begin(&claim(&k, "other", "r4", at(3)))
            .await,
        Ok(Done(created("kept")))
    );
}

pub async fn idempotency_concurrent_claims_start_exactly_one_run<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.clone();
    for round in 0..3 {
        let key = idem_key("acme", "alice", &format!("race-{round}"));
        let claims: Vec<_> = (0..16)
            .map(|i| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    let run = format!("r{i}");
                    store
                        .idempotency_begin(&claim(&key, "fp", &run, at(0)))
                        .await
                })
            })
            .collect();
        let mut started = 0;
        for c in claims {
            match c.await.expect("task").expect("claim") {
                Started => started += 1,
                Running => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(started, 1, "round {round}");
    }
    // And when the lease has passed, concurrent takeovers: one wins.
    let key = idem_key("acme", "alice", "race-0");
    let takeovers: Vec<_> = (0..16)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let run = format!("t{i}");
                store
                    .idempotency_begin(&claim(&key, "fp", &run, at(200)))
                    .await
            })
        })
        .collect();
    let mut started = 0;
    for t in takeovers {
        if t.await.expect("task").expect("claim") == Started {
            started += 1;
        }
    }
    assert_eq!(started, 1);
}

pub async fn idempotency_large_responses_are_kept_whole<E: Engine>() {
    use arca_store::IdempotencyBegin::*;
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let k = idem_key("acme", "alice", &"k".repeat(255));
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r1", at(0))).await,
        Ok(Started)
    );
    let body: Vec<u8> = (0..(1 << 20) + 4096).map(|i| (i % 251) as u8).collect();
    let big = arca_store::StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    };
    assert_eq!(store.idempotency_finish(&k, "r1", &big).await, Ok(true));
    assert_eq!(
        store.idempotency_begin(&claim(&k, "fp", "r2", at(1))).await,
        Ok(Done(big))
    );
}
