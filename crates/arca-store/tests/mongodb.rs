//! The MongoDB engine through the conformance suite every engine passes.
//!
//! Against what: the MongoDB at `ARCA_TEST_MONGODB_URI` when it is set;
//! else the mongoeco stand-in (a MongoDB wire-compatible test server, not
//! MongoDB) at `ARCA_TEST_STANDIN_URI`, which `scripts/test` starts once
//! for the whole run; else a stand-in this process starts itself with
//! `ARCA_TEST_MONGO_PYTHON`. With none of them the tests fail: a silent
//! skip would read as a pass. Each fresh store is its own database, dropped
//! when the test ends.

mod conformance;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arca_store::mongodb::{MongoOptions, MongoStore};
use conformance::{Engine, Fresh, Opts};

/// A stand-in started by this test process, killed when it exits.
struct OwnStandin(Child);

impl Drop for OwnStandin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the server is a stand-in: its matching differs from MongoDB's
/// (type bracketing of comparisons, recorded in docs/query.md), so the
/// engine runs with `verify` (every candidate checked by the evaluator).
/// Against a real MongoDB it runs as in production.
fn standin() -> bool {
    std::env::var("ARCA_TEST_MONGODB_URI").is_err()
}

/// The server's URI (without a database), starting a stand-in if needed.
fn server_uri() -> String {
    static URI: OnceLock<(String, Option<std::sync::Mutex<OwnStandin>>)> = OnceLock::new();
    let (uri, _) = URI.get_or_init(|| {
        for var in ["ARCA_TEST_MONGODB_URI", "ARCA_TEST_STANDIN_URI"] {
            if let Ok(uri) = std::env::var(var) {
                return (uri, None);
            }
        }
        let python = std::env::var("ARCA_TEST_MONGO_PYTHON").unwrap_or_else(|_| {
            panic!(
                "set ARCA_TEST_MONGODB_URI (a MongoDB), ARCA_TEST_STANDIN_URI (a running stand-in) \
                 or ARCA_TEST_MONGO_PYTHON (the stand-in's Python, as scripts/test installs it)"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/mongo-standin/serve.py"
        );
        let mut child = Command::new(&python)
            .args([script, &port.to_string(), "memory"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the stand-in's first line");
        let uri = line
            .strip_prefix("READY ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the stand-in did not start: {line:?}"))
            .to_owned();
        (uri, Some(std::sync::Mutex::new(OwnStandin(child))))
    });
    uri.clone()
}

/// `uri` with `/database` as its path (options kept).
fn with_database(uri: &str, database: &str) -> String {
    let (scheme, rest) = uri.split_once("://").expect("a URI");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let options = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
    format!("{scheme}://{authority}/{database}{options}")
}

/// Drops its database when the test is done.
struct DropDatabase {
    uri: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (uri, name) = (self.uri.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(client) = mongodb::Client::with_uri_str(&uri).await {
                    let _ = client.database(&name).drop().await;
                }
            });
        })
        .join();
    }
}

struct Mongo;

impl Engine for Mongo {
    async fn open(opts: Opts) -> Fresh {
        let base = server_uri();
        let name = format!("arca_c{}_{:08x}", std::process::id(), rand::random::<u32>());
        let uri = with_database(&base, &name);
        let store = MongoStore::connect(&MongoOptions {
            uri: uri.clone(),
            timeout: Duration::from_secs(20),
            read_timeout: opts.read_timeout,
            verify: standin(),
        })
        .await
        .unwrap_or_else(|e| panic!("connect to {uri}: {e}"))
        .with_event_log(opts.event_log);
        assert_eq!(
            store.database_name(),
            name,
            "the database is the URI's path"
        );
        Fresh {
            store: Arc::new(store),
            keep: Box::new(DropDatabase { uri, name }),
        }
    }

    const SLOW_SCAN_DOCS: usize = 300;
    const PROPERTY_CASES: u32 = 24;

    fn standin() -> bool {
        standin()
    }
}

conformance_suite!(Mongo);

#[test]
fn the_database_comes_from_the_uri_path_or_is_arca() {
    assert_eq!(
        with_database("mongodb://h:1/?directConnection=true", "x"),
        "mongodb://h:1/x?directConnection=true"
    );
    assert_eq!(
        with_database("mongodb://u:p@h1,h2/old?replicaSet=rs0", "x"),
        "mongodb://u:p@h1,h2/x?replicaSet=rs0"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let base = server_uri();
        let (scheme, rest) = base.split_once("://").expect("uri");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let options = rest[end..]
            .find('?')
            .map(|q| &rest[end + q..])
            .unwrap_or("");
        let bare = format!("{scheme}://{}/{options}", &rest[..end]);
        let store = MongoStore::connect(&MongoOptions {
            uri: bare,
            timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(5),
            verify: standin(),
        })
        .await
        .expect("connect");
        assert_eq!(store.database_name(), "arca");
    });
}

/// A fresh store and a raw driver handle on the same database (to write
/// around the API, as `mongosh` would).
async fn with_raw() -> (Fresh, mongodb::Database) {
    let fresh = Mongo::open(Opts::default()).await;
    let name = fresh
        .keep
        .downcast_ref::<DropDatabase>()
        .map(|d| (d.uri.clone(), d.name.clone()))
        .expect("the database guard");
    let client = mongodb::Client::with_uri_str(&name.0)
        .await
        .expect("client");
    (fresh, client.database(&name.1))
}

/// The code of a write the database refused (`None` when it was taken).
async fn raw_insert(
    db: &mongodb::Database,
    coll: &str,
    doc: mongodb::bson::Document,
) -> Option<i32> {
    match db
        .collection::<mongodb::bson::Document>(coll)
        .insert_one(doc)
        .await
    {
        Ok(_) => None,
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
                Some(w.code)
            }
            other => panic!("unexpected error: {other:?}"),
        },
    }
}

fn stored(id: &str, body: mongodb::bson::Document) -> mongodb::bson::Document {
    let mut d = mongodb::bson::doc! {
        "_id": {"t": "", "i": id}, "_tenant": "", "_rev": 1_i64,
        "_created_at": conformance::T0, "_updated_at": conformance::T0, "_owner": "mongosh",
    };
    d.extend(body);
    d
}

/// What crashes leave in the files bucket goes with the sweep: the chunks
/// of an upload or a delete cut more than a day ago, and the thumbnails of
/// files whose document is gone (a delete cut after removing it, or a
/// thumbnail put as its file was deleted). A live file's chunks and
/// thumbnails, and the chunks of an upload in progress, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_sweep_removes_what_crashes_left() {
    use futures_util::TryStreamExt;
    use mongodb::bson::{Binary, doc, oid::ObjectId, spec::BinarySubtype};
    let (fresh, raw) = with_raw().await;
    let uri = fresh
        .keep
        .downcast_ref::<DropDatabase>()
        .map(|d| d.uri.clone())
        .expect("the database guard");
    let store = MongoStore::connect(&MongoOptions {
        uri,
        timeout: Duration::from_secs(20),
        read_timeout: Duration::from_secs(20),
        verify: standin(),
    })
    .await
    .expect("connect");
    let bin = |b: &[u8]| Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    };
    let (live, gone, uploading) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
    let two_days_ago = u32::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs()
            - 2 * 86_400,
    )
    .expect("seconds");
    let old_id = |n: u8| ObjectId::from_parts(two_days_ago, [n; 5], [0; 3]);
    let files = [
        doc! {"_id": {"t": "t1", "i": &live}, "length": 4_i64, "chunkSize": 261_120,
        "uploadDate": mongodb::bson::DateTime::now(), "filename": "x",
        "metadata": {"tenant": "t1"}},
    ];
    for d in files {
        assert_eq!(raw_insert(&raw, "files.files", d).await, None);
    }
    let chunks = [
        // The live file's, old.
        doc! {"_id": old_id(1), "files_id": {"t": "t1", "i": &live}, "n": 0, "data": bin(b"live")},
        // A file whose document is gone: two chunks, the first old.
        doc! {"_id": old_id(2), "files_id": {"t": "t1", "i": &gone}, "n": 0, "data": bin(b"g0")},
        doc! {"_id": ObjectId::new(), "files_id": {"t": "t1", "i": &gone}, "n": 1, "data": bin(b"g1")},
        // An upload in progress (fresh chunks, no document yet).
        doc! {"_id": ObjectId::new(), "files_id": {"t": "t1", "i": &uploading}, "n": 0, "data": bin(b"u0")},
    ];
    for d in chunks {
        assert_eq!(raw_insert(&raw, "files.chunks", d).await, None);
    }
    let thumbs = [
        doc! {"_id": {"t": "t1", "f": &live, "s": 256_i64, "e": "jpeg"}, "data": bin(b"keep")},
        doc! {"_id": {"t": "t1", "f": &gone, "s": 128_i64, "e": "jpeg"}, "data": bin(b"x")},
        doc! {"_id": {"t": "t1", "f": &gone, "s": 256_i64, "e": "webp"}, "data": bin(b"x")},
        // Another tenant's key for the live id: that tenant has no such file.
        doc! {"_id": {"t": "t2", "f": &live, "s": 256_i64, "e": "jpeg"}, "data": bin(b"x")},
    ];
    for d in thumbs {
        assert_eq!(raw_insert(&raw, "files.thumbnails", d).await, None);
    }
    assert_eq!(store.sweep_files().await, (1, 2));
    let left = |coll: &'static str| {
        let raw = raw.clone();
        async move {
            let mut ids: Vec<String> = raw
                .collection::<mongodb::bson::Document>(coll)
                .find(doc! {})
                .await
                .expect("find")
                .try_collect::<Vec<_>>()
                .await
                .expect("docs")
                .into_iter()
                .map(|d| {
                    let key = d
                        .get_document(if coll == "files.chunks" {
                            "files_id"
                        } else {
                            "_id"
                        })
                        .expect("key");
                    let file = key
                        .get_str("i")
                        .or_else(|_| key.get_str("f"))
                        .expect("file");
                    format!("{}/{}", key.get_str("t").expect("tenant"), &file[..1])
                })
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(left("files.chunks").await, vec!["t1/a", "t1/c"]);
    assert_eq!(left("files.thumbnails").await, vec!["t1/a"]);
    // Nothing more to do the second time.
    assert_eq!(store.sweep_files().await, (0, 0));
}

/// The collection's JSON Schema is its `$jsonSchema` validator: a
/// document written around the API that breaks it is refused by the
/// database (121), and a redefinition replaces the validator (`collMod`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_the_databases_validator_and_follows_redefinitions() {
    use mongodb::bson::doc;
    let (fresh, db) = with_raw().await;
    let store = fresh.store.as_ref();
    let people = conformance::people();
    let define = |schema: serde_json::Value| {
        let people = people.clone();
        async move {
            store
                .put_collection(arca_store::CollectionSpec {
                    name: &people,
                    schema: &schema,
                    indexes: &[],
                    access: &serde_json::json!({}),
                    at: conformance::T0,
                    created_at: None,
                })
                .await
                .expect("define")
        }
    };
    define(
        serde_json::json!({"type": "object", "properties": {"age": {"type": "integer"}},
                              "required": ["age"], "additionalProperties": false}),
    )
    .await;
    assert_eq!(
        raw_insert(&db, "people", stored("ok", doc! {"age": 3})).await,
        None
    );
    assert_eq!(
        raw_insert(&db, "people", stored("s", doc! {"age": "three"})).await,
        Some(121),
        "a string where the schema wants an integer"
    );
    assert_eq!(
        raw_insert(&db, "people", stored("x", doc! {"age": 3, "extra": 1})).await,
        Some(121),
        "a field additionalProperties: false forbids"
    );
    assert_eq!(
        raw_insert(&db, "people", stored("m", doc! {})).await,
        Some(121),
        "a missing required field"
    );
    // Redefined: `name` is now required too.
    define(serde_json::json!({"type": "object", "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
                              "required": ["age", "name"]}))
    .await;
    assert_eq!(
        raw_insert(&db, "people", stored("n", doc! {"age": 4})).await,
        Some(121),
        "the new validator applies"
    );
    assert_eq!(
        raw_insert(
            &db,
            "people",
            stored("n2", doc! {"age": 4, "name": "Ana", "extra": true})
        )
        .await,
        None,
        "and the old one is gone"
    );
}

/// Indexes follow a redefinition: a unique index added, then removed
/// (`createIndexes` / `dropIndexes`), every one leading with `_tenant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_reconciled_and_lead_with_the_tenant() {
    let (fresh, db) = with_raw().await;
    let store = fresh.store.as_ref();
    conformance::define(store, &[conformance::index("email", true, false)])
        .await
        .expect("define");
    let indexes = |db: mongodb::Database| async move {
        let mut cursor = db
            .collection::<mongodb::bson::Document>("people")
            .list_indexes()
            .await
            .expect("list");
        let mut out = Vec::new();
        while cursor.advance().await.expect("next") {
            let ix = cursor.deserialize_current().expect("index");
            out.push((ix.options.and_then(|o| o.name).unwrap_or_default(), ix.keys));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let now = indexes(db.clone()).await;
    let arca: Vec<_> = now.iter().filter(|(n, _)| n.starts_with("arca_")).collect();
    assert_eq!(arca.len(), 2, "{now:?}");
    for (name, keys) in &arca {
        assert_eq!(
            keys.keys().next().map(String::as_str),
            Some("_tenant"),
            "{name}"
        );
    }
    conformance::define_at(store, &conformance::people(), &[], conformance::T1)
        .await
        .expect("redefine");
    let after = indexes(db).await;
    let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"arca_tenant_id"), "{names:?}");
    assert_eq!(
        after.iter().filter(|(n, _)| n.starts_with("arca_")).count(),
        1,
        "the unique index is gone: {names:?}"
    );
}

/// Aggregations on the server (`verify` off, as in production): the scoped
/// pipeline runs there; a refusal that depends on the data comes back
/// with the evaluator's reason (the server's text is never shown); an
/// inexact filter is evaluated by Arca; the result limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregations_run_on_the_server_and_fall_back_to_the_evaluator() {
    use arca_core::pipeline::{Pipeline, PipelineError};
    use arca_store::{AggregateLimits, LookupScopes, StoreError};
    use serde_json::{Value, json};

    let (fresh, _raw) = with_raw().await;
    let name = fresh
        .keep
        .downcast_ref::<DropDatabase>()
        .map(|d| d.uri.clone())
        .expect("the database guard");
    // The same database, with the production setting.
    let store = MongoStore::connect(&MongoOptions {
        uri: name,
        timeout: Duration::from_secs(20),
        read_timeout: Duration::from_secs(20),
        verify: false,
    })
    .await
    .expect("connect");
    let store: &dyn arca_store::Store = &store;
    conformance::define(store, &[]).await.expect("define");
    let s = conformance::tenant_scope("t1");
    for i in 0..20 {
        store
            .insert(
                &conformance::people(),
                &s,
                &conformance::doc(
                    &format!("d{i:02}"),
                    json!({"k": i % 3, "name": format!("n{i}"), "zero": 0}),
                ),
            )
            .await
            .expect("insert");
    }
    store
        .insert(
            &conformance::people(),
            &conformance::tenant_scope("t2"),
            &conformance::doc("d00", json!({"k": 0, "name": "other"})),
        )
        .await
        .expect("insert t2");
    let limits = AggregateLimits {
        max_time: Duration::from_secs(20),
        max_memory: 100 << 20,
        max_results: 100,
    };
    let run = |p: Value, limits: AggregateLimits| {
        let s = s.clone();
        async move {
            store
                .aggregate(
                    &conformance::people(),
                    &s,
                    &Pipeline::parse(&p).expect("pipeline"),
                    &LookupScopes::new(),
                    &limits,
                )
                .await
        }
    };
    let got = run(
        json!([{"$group": {"_id": "$k", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]),
        limits,
    )
    .await
    .expect("group");
    assert_eq!(
        Value::Array(got),
        json!([{"_id": 0, "n": 7}, {"_id": 1, "n": 7}, {"_id": 2, "n": 6}])
    );
    let got = run(
        json!([{"$match": {"name": {"$regex": "^n1"}}}, {"$count": "n"}]),
        limits,
    )
    .await
    .expect("regex");
    assert_eq!(Value::Array(got), json!([{"n": 11}]));
    let got = run(
        json!([{"$project": {"q": {"$divide": ["$k", "$zero"]}}}]),
        limits,
    )
    .await;
    assert!(
        matches!(&got, Err(StoreError::Pipeline(PipelineError::Runtime(m))) if m.contains("divide by zero")),
        "{got:?}"
    );
    let got = run(
        json!([{"$project": {"k": 1}}]),
        AggregateLimits {
            max_results: 5,
            ..limits
        },
    )
    .await;
    assert!(
        matches!(
            got,
            Err(StoreError::Pipeline(PipelineError::TooManyResults {
                limit: 5
            }))
        ),
        "{got:?}"
    );
}
