//! The embedded engine on a real SQLite file: CRUD, revisions, tenancy,
//! unique indexes, number fidelity and persistence across reopen.

use arca_core::query::{Filter, Sort};
use arca_core::{CollectionName, DocId, IndexDef, Scope, Tenant};
use arca_store::{NewDocument, PutOutcome, Query, SqliteOptions, SqliteStore, Store, StoreError};
use serde_json::{Map, Value, json};

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("object expected"),
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteOptions {
        path: dir.path().join("arca.db"),
        synchronous_full: true,
        readers: 2,
        read_timeout: std::time::Duration::from_secs(30),
        reader_cache_kib: 2000,
    })
    .expect("open")
}

fn people() -> CollectionName {
    CollectionName::parse("people").expect("name")
}

async fn define(store: &SqliteStore, indexes: &[IndexDef]) -> Result<PutOutcome, StoreError> {
    store
        .put_collection(&people(), &json!({"type": "object"}), indexes, &json!({}))
        .await
}

fn unique_email() -> IndexDef {
    IndexDef {
        fields: vec![("email".into(), 1)],
        unique: true,
        sparse: false,
    }
}

fn new_doc(id: Option<&str>, body: Value) -> NewDocument {
    NewDocument {
        id: id.map(|i| DocId::parse(i).expect("id")),
        owner: "u1".into(),
        body: obj(body),
    }
}

#[tokio::test]
async fn insert_get_replace_delete_round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    assert_eq!(define(&store, &[]).await, Ok(PutOutcome::Created));
    assert_eq!(define(&store, &[]).await, Ok(PutOutcome::Updated));
    let scope = Scope::tenant(Tenant::None);
    let doc = store
        .insert(&people(), &scope, new_doc(None, json!({"name": "Ana"})))
        .await
        .expect("insert");
    assert_eq!(doc.system.rev, 1);
    assert_eq!(doc.system.id.as_str().len(), 24);
    let got = store
        .get(&people(), &scope, &doc.system.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got, doc);
    let new = store
        .replace(
            &people(),
            &scope,
            &doc.system.id,
            1,
            obj(json!({"name": "Bia"})),
        )
        .await
        .expect("replace");
    assert_eq!(new.system.rev, 2);
    assert_eq!(new.system.created_at, doc.system.created_at);
    assert_eq!(
        store
            .replace(&people(), &scope, &doc.system.id, 1, obj(json!({})))
            .await,
        Err(StoreError::RevMismatch)
    );
    assert_eq!(
        store
            .delete(&people(), &scope, &doc.system.id, Some(1))
            .await,
        Err(StoreError::RevMismatch)
    );
    assert_eq!(
        store
            .delete(&people(), &scope, &doc.system.id, Some(2))
            .await,
        Ok(())
    );
    assert_eq!(
        store.delete(&people(), &scope, &doc.system.id, None).await,
        Err(StoreError::NotFound)
    );
}

#[tokio::test]
async fn tenants_do_not_see_each_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[unique_email()]).await.expect("define");
    let a = Scope::tenant(Tenant::parse("a").expect("t"));
    let b = Scope::tenant(Tenant::parse("b").expect("t"));
    let none = Scope::tenant(Tenant::None);
    store
        .insert(&people(), &a, new_doc(Some("x"), json!({"email": "e"})))
        .await
        .expect("a");
    // Same _id and same unique value in another tenant: allowed.
    store
        .insert(&people(), &b, new_doc(Some("x"), json!({"email": "e"})))
        .await
        .expect("b");
    let id = DocId::parse("x").expect("id");
    assert!(
        store
            .get(&people(), &none, &id)
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(store.count(&people(), &a, &Filter::all()).await, Ok(1));
    assert_eq!(store.count(&people(), &none, &Filter::all()).await, Ok(0));
    assert_eq!(
        store.delete(&people(), &none, &id, None).await,
        Err(StoreError::NotFound)
    );
}

#[tokio::test]
async fn unique_index_follows_mongodb_equality() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[unique_email()]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    store
        .insert(&people(), &s, new_doc(None, json!({"email": 1})))
        .await
        .expect("1");
    assert_eq!(
        store
            .insert(&people(), &s, new_doc(None, json!({"email": 1.0})))
            .await
            .map(|_| ()),
        Err(StoreError::Conflict("email".into())),
        "1 and 1.0 are equal numbers"
    );
    store
        .insert(&people(), &s, new_doc(None, json!({"email": "1"})))
        .await
        .expect("a string is not a number");
    store
        .insert(&people(), &s, new_doc(None, json!({"email": true})))
        .await
        .expect("true is not 1");
    store
        .insert(&people(), &s, new_doc(None, json!({})))
        .await
        .expect("first missing");
    assert!(
        matches!(
            store
                .insert(&people(), &s, new_doc(None, json!({"email": null})))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "null and missing are the same key"
    );
    assert_eq!(
        store
            .insert(&people(), &s, new_doc(Some("dup"), json!({})))
            .await
            .map(|_| ())
            .and(Ok(())),
        Err(StoreError::Conflict("email".into()))
    );
}

#[tokio::test]
async fn adding_a_unique_index_over_duplicates_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    for _ in 0..2 {
        store
            .insert(&people(), &s, new_doc(None, json!({"email": "same"})))
            .await
            .expect("insert");
    }
    assert_eq!(
        define(&store, &[unique_email()]).await,
        Err(StoreError::DuplicatesForUniqueIndex("email".into()))
    );
    let defs = store.collections().await.expect("collections");
    assert_eq!(defs[0].indexes, vec![], "the definition stays as it was");
}

#[tokio::test]
async fn numbers_keep_their_kind_and_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let body = json!({"i": 9223372036854775807_i64, "n": -9223372036854775808_i64, "u": 18446744073709551615_u64,
                      "f": 1.0, "g": 0.1, "e": 1e300, "nested": {"a": [1, 2.5, "x", null, true]}});
    let id = {
        let store = open(&dir);
        define(&store, &[]).await.expect("define");
        let d = store
            .insert(
                &people(),
                &Scope::tenant(Tenant::None),
                new_doc(None, body.clone()),
            )
            .await
            .expect("insert");
        d.system.id
    };
    let store = open(&dir);
    let got = store
        .get(&people(), &Scope::tenant(Tenant::None), &id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(Value::Object(got.body.clone()), body);
    assert!(got.body["f"].is_f64() && got.body["i"].is_i64() && got.body["u"].is_u64());
}

#[tokio::test]
async fn list_pages_in_id_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    for i in ["c", "a", "b"] {
        store
            .insert(&people(), &s, new_doc(Some(i), json!({})))
            .await
            .expect("insert");
    }
    let q = |after: Option<arca_core::query::Cursor>| Query {
        filter: Filter::all(),
        sort: Sort::by_id(),
        after,
        limit: 2,
    };
    let p1 = store.find(&people(), &s, &q(None)).await.expect("p1");
    let ids: Vec<_> = p1.iter().map(|d| d.system.id.as_str().to_owned()).collect();
    assert_eq!(ids, ["a", "b"]);
    let cur = arca_core::query::Cursor {
        key: vec![],
        id: "b".into(),
    };
    let p2 = store.find(&people(), &s, &q(Some(cur))).await.expect("p2");
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].system.id.as_str(), "c");
}

#[tokio::test]
async fn deleting_a_collection_drops_its_documents() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    store
        .insert(&people(), &s, new_doc(Some("a"), json!({})))
        .await
        .expect("insert");
    assert_eq!(store.delete_collection(&people()).await, Ok(true));
    assert_eq!(store.delete_collection(&people()).await, Ok(false));
    define(&store, &[]).await.expect("define again");
    assert_eq!(store.count(&people(), &s, &Filter::all()).await, Ok(0));
}

#[tokio::test]
async fn a_read_past_its_time_limit_is_interrupted_and_the_reader_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = SqliteStore::open(&SqliteOptions {
        path: dir.path().join("slow.db"),
        synchronous_full: false,
        readers: 1,
        read_timeout: std::time::Duration::from_millis(1),
        reader_cache_kib: 2000,
    })
    .expect("open");
    define(&store, &[]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    for i in 0..3000 {
        store
            .insert(
                &people(),
                &s,
                new_doc(None, json!({"n": i, "pad": "x".repeat(200)})),
            )
            .await
            .expect("insert");
    }
    // A full scan with an unindexed filter takes far more than 1 ms.
    let slow = Filter::parse(&json!({"n": {"$gt": 1_000_000}})).expect("filter");
    let r = store
        .find(
            &people(),
            &s,
            &Query {
                filter: slow,
                sort: Sort::parse("-n").expect("sort"),
                after: None,
                limit: 5,
            },
        )
        .await;
    assert_eq!(r.map(|v| v.len()), Err(StoreError::Timeout));
    // The same (only) reader serves the next read.
    assert_eq!(store.ping().await, Ok(()));
}

/// Reads queued together share one read transaction on a reader thread
/// (point reads with point reads, listings with listings). Under a steady
/// stream of other reads of both kinds (so batches form), every read must
/// still see each write acknowledged before it was asked: a just-created
/// document is found by id and by a listing, and a just-replaced one has
/// its new revision in both.
/// The revision of document `id` as a listing filtered on `_id` finds it.
async fn listed_rev(store: &SqliteStore, id: &str) -> Option<u64> {
    let query = Query {
        filter: Filter::parse(&json!({"_id": id})).expect("filter"),
        sort: Sort::by_id(),
        after: None,
        limit: 10,
    };
    let found = store
        .find(&people(), &Scope::tenant(Tenant::None), &query)
        .await
        .expect("find");
    assert!(found.len() <= 1, "one document per id");
    found.first().map(|d| d.system.rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_every_write_acknowledged_before_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = std::sync::Arc::new(open(&dir));
    define(&store, &[]).await.expect("define");
    let scope = Scope::tenant(Tenant::None);
    let hot = store
        .insert(&people(), &scope, new_doc(Some("hot"), json!({"n": 0})))
        .await
        .expect("insert");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise: Vec<_> = (0..8)
        .map(|_| {
            let (store, stop, id) = (store.clone(), stop.clone(), hot.system.id.clone());
            tokio::spawn(async move {
                let scope = Scope::tenant(Tenant::None);
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = store.get(&people(), &scope, &id).await.expect("get");
                    assert!(got.is_some());
                    let n = store.count(&people(), &scope, &Filter::all()).await;
                    assert!(n.expect("count") > 0);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let scope = Scope::tenant(Tenant::None);
                for i in 0..25 {
                    let id = format!("w{w}-{i}");
                    let doc = store
                        .insert(&people(), &scope, new_doc(Some(&id), json!({"n": i})))
                        .await
                        .expect("insert");
                    let seen = store
                        .get(&people(), &scope, &doc.system.id)
                        .await
                        .expect("get");
                    assert_eq!(seen.map(|d| d.system.rev), Some(1), "{id} after create");
                    assert_eq!(
                        listed_rev(&store, &id).await,
                        Some(1),
                        "{id} listed after create"
                    );
                    store
                        .replace(&people(), &scope, &doc.system.id, 1, obj(json!({"n": -i})))
                        .await
                        .expect("replace");
                    let seen = store
                        .get(&people(), &scope, &doc.system.id)
                        .await
                        .expect("get");
                    assert_eq!(seen.map(|d| d.system.rev), Some(2), "{id} after replace");
                    assert_eq!(
                        listed_rev(&store, &id).await,
                        Some(2),
                        "{id} listed after replace"
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for n in noise {
        assert!(n.await.expect("reader") > 0);
    }
}

/// `get_text` sends the stored text: byte for byte what serializing the
/// parsed document gives, inside and outside a row-filtered scope.
#[tokio::test]
async fn text_reads_match_parsed_reads() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[]).await.expect("define");
    let all = Scope::tenant(Tenant::None);
    let bodies = [
        json!({}),
        json!({"name": "Zoë \"q\" \\ \n 😀", "n": 1.5, "big": 18446744073709551615u64, "neg": -7}),
        json!({"nested": {"a": [1, {"b": null}], "": false}, "e": 1e-7, "z": 0.1}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let id = format!("t{i}");
        store
            .insert(&people(), &all, new_doc(Some(&id), body.clone()))
            .await
            .expect("insert");
        let id = DocId::parse(&id).expect("id");
        let parsed = store
            .get(&people(), &all, &id)
            .await
            .expect("get")
            .expect("found");
        let text = store
            .get_text(&people(), &all, &id)
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
    // A row filter: the text read applies it like `get` does.
    let only_n = Scope::filtered(
        Tenant::None,
        Filter::parse(&json!({"n": 1.5})).expect("filter"),
    );
    let t1 = DocId::parse("t1").expect("id");
    let t2 = DocId::parse("t2").expect("id");
    let inside = store
        .get_text(&people(), &only_n, &t1)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(inside.system.id, t1);
    assert_eq!(
        store.get_text(&people(), &only_n, &t2).await.expect("get"),
        None
    );
    let other_tenant = Scope::tenant(Tenant::parse("acme").expect("tenant"));
    assert_eq!(
        store
            .get_text(&people(), &other_tenant, &t1)
            .await
            .expect("get"),
        None
    );
}

/// After the store is dropped (a server stopping, `arca import` ending),
/// the database file alone holds every commit: a copy of `arca.db`
/// without its WAL has all the documents.
#[tokio::test]
async fn a_closed_store_leaves_every_commit_in_the_database_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    define(&store, &[]).await.expect("define");
    let s = Scope::tenant(Tenant::None);
    // Few enough commits that SQLite's automatic checkpoint never runs.
    for i in 0..200 {
        store
            .insert(&people(), &s, new_doc(None, json!({"n": i})))
            .await
            .expect("insert");
    }
    assert_eq!(store.count(&people(), &s, &Filter::all()).await, Ok(200));
    drop(store);
    let copy = tempfile::tempdir().expect("tmp");
    std::fs::copy(dir.path().join("arca.db"), copy.path().join("arca.db")).expect("copy");
    let reopened = open(&copy);
    assert_eq!(reopened.count(&people(), &s, &Filter::all()).await, Ok(200));
}
