//! The aggregation translation (`arca_store::mongodb::pipeline`) against a
//! MongoDB-wire server, through the real `mongodb` driver: the pipeline
//! table of arca-core (`pipeline_cases.json`) stored in Arca's layout under
//! two tenants and run case by case, and the tenancy and access guarantees
//! of `$lookup` and `$$ROOT`.
//!
//! The server is the MongoDB at `ARCA_TEST_MONGODB_URI`; else the mongoeco
//! stand-in (not MongoDB) at `ARCA_TEST_STANDIN_URI`, which `scripts/test`
//! starts once; else a stand-in this test starts with
//! `ARCA_TEST_MONGO_PYTHON`. With none of them the tests fail: a silent
//! skip would read as a pass.
//!
//! Every case's server result must equal the table's `expect` (the
//! reference evaluator's output, asserted by arca-core's `pipeline_table`),
//! compared as JSON text (field order and number kinds count; the arrays of
//! a case's `unordered` fields are compared as multisets, where MongoDB
//! leaves their order unspecified). A case whose `expect` is a runtime
//! error must fail on the server too (its message is not compared: the
//! engine maps server errors itself). Against the stand-in, the
//! disagreements recorded in `docs/aggregate-differential.json` (with the
//! stand-in's own result, and which side follows the MongoDB manual) are
//! reported, not failed; an unrecorded disagreement fails, and so does a
//! recorded one that no longer happens or whose stand-in result changed.
//! Against a real MongoDB nothing is exempt.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arca_core::pipeline::{InMemoryEnv, Pipeline, PipelineError};
use arca_core::query::Filter;
use arca_core::{DocId, Document, Scope, SystemFields, Tenant};
use arca_store::mongodb::bson::Document as BsonDocument;
use arca_store::mongodb::{pipeline, value};
use mongodb::options::ClientOptions;
use serde_json::{Map, Value, json};

/// The server: a stand-in this test started (stopped on drop, by its own
/// handle), or one given by the environment.
struct Server {
    child: Option<Child>,
    uri: String,
    standin: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_server() -> Server {
    if let Ok(uri) = std::env::var("ARCA_TEST_MONGODB_URI") {
        return Server {
            child: None,
            uri,
            standin: false,
        };
    }
    if let Ok(uri) = std::env::var("ARCA_TEST_STANDIN_URI") {
        return Server {
            child: None,
            uri,
            standin: true,
        };
    }
    let Ok(python) = std::env::var("ARCA_TEST_MONGO_PYTHON") else {
        panic!(
            "set ARCA_TEST_MONGODB_URI (a MongoDB), ARCA_TEST_STANDIN_URI (a running stand-in) \
             or ARCA_TEST_MONGO_PYTHON (the stand-in's Python, as scripts/test installs it)"
        );
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/mongo-standin/serve.py"
    );
    let mut child = Command::new(&python)
        .arg(script)
        .arg(port.to_string())
        .arg("memory")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("the stand-in did not print READY within 60 s");
        }
    };
    let Some(uri) = line
        .strip_prefix("READY ")
        .and_then(|rest| rest.split_whitespace().next())
    else {
        let _ = child.kill();
        panic!("the stand-in did not start: {line:?}");
    };
    Server {
        uri: uri.to_owned(),
        child: Some(child),
        standin: true,
    }
}

async fn database(server: &Server, name: &str) -> mongodb::Database {
    let mut options = ClientOptions::parse(&server.uri).await.expect("uri");
    options.server_selection_timeout = Some(Duration::from_secs(20));
    let client = mongodb::Client::with_options(options).expect("client");
    // Unique per run, so runs against a shared server do not collide.
    let db = client.database(&format!("arca_pipeline_{}_{name}", std::process::id()));
    db.drop().await.expect("drop a previous database");
    db
}

fn table() -> Value {
    serde_json::from_str(include_str!("../../arca-core/tests/pipeline_cases.json")).expect("table")
}

/// A table document as clients see it (as arca-core's table test builds it).
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

/// The client view as an Arca document (system fields taken from it).
fn arca_document(view: &Value) -> Document {
    let mut body = view.as_object().cloned().expect("object");
    let id = body.remove("_id").expect("_id");
    let text = |body: &mut Map<String, Value>, k: &str| {
        body.remove(k)
            .and_then(|v| v.as_str().map(str::to_owned))
            .expect(k)
    };
    let rev = body.remove("_rev").and_then(|v| v.as_u64()).expect("_rev");
    Document {
        system: SystemFields {
            id: DocId::parse(id.as_str().expect("string id")).expect("id"),
            rev,
            created_at: text(&mut body, "_created_at"),
            updated_at: text(&mut body, "_updated_at"),
            owner: text(&mut body, "_owner"),
        },
        body,
    }
}

/// Stores every table collection under `t1`, and under `t2` the same
/// documents marked `"secret": "t2"` plus one document only `t2` has.
/// Returns the client views of `t1`'s documents by collection.
async fn load(db: &mongodb::Database, table: &Value) -> Map<String, Value> {
    let defaults = &table["defaults"];
    let t1 = Tenant::parse("t1").expect("tenant");
    let t2 = Tenant::parse("t2").expect("tenant");
    let mut views = Map::new();
    for (name, docs) in table["collections"].as_object().expect("collections") {
        let mut stored = Vec::new();
        let mut mine = Vec::new();
        for d in docs.as_array().expect("documents") {
            let view = client_view(d, defaults);
            stored.push(value::to_stored(&arca_document(&view), &t1).expect("stored"));
            let mut other = view.clone();
            other["secret"] = json!("t2");
            stored.push(value::to_stored(&arca_document(&other), &t2).expect("stored"));
            mine.push(view);
        }
        let only = client_view(
            &json!({"_id": "t2only", "secret": "t2", "person": "p1", "city": "lis", "team": "x"}),
            defaults,
        );
        stored.push(value::to_stored(&arca_document(&only), &t2).expect("stored"));
        db.collection::<BsonDocument>(name)
            .insert_many(stored)
            .await
            .expect("insert");
        views.insert(name.clone(), Value::Array(mine));
    }
    views
}

/// A server error as `code N: message` (stable across driver versions,
/// unlike the error's display).
fn server_error(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => format!("code {}: {}", c.code, c.message),
        other => format!("{other:?}"),
    }
}

/// Runs a translated pipeline; documents as JSON, or the server's error.
async fn aggregate(
    db: &mongodb::Database,
    collection: &str,
    stages: Vec<BsonDocument>,
) -> Result<Vec<Value>, String> {
    let coll = db.collection::<BsonDocument>(collection);
    let mut cursor = coll
        .aggregate(stages)
        .max_time(Duration::from_secs(30))
        .await
        .map_err(|e| server_error(&e))?;
    let mut out = Vec::new();
    loop {
        match cursor.advance().await {
            Ok(true) => {
                let d: BsonDocument = cursor.deserialize_current().map_err(|e| server_error(&e))?;
                out.push(Value::Object(value::document_to_json(&d).expect("json")));
            }
            Ok(false) => break,
            Err(e) => return Err(server_error(&e)),
        }
    }
    Ok(out)
}

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

/// A whole-tenant scope, as engine tests use.
fn tenant_scope(tenant: &str) -> Scope {
    #[allow(clippy::disallowed_methods)] // an engine test acts with the store's authority
    Scope::operator(Tenant::parse(tenant).expect("tenant"))
}

/// A scope with a read filter, standing in for the gateway's.
fn filtered_scope(tenant: &str, filter: &Value) -> Scope {
    #[allow(clippy::disallowed_methods)] // the test stands in for the gateway
    Scope::authorized(
        Tenant::parse(tenant).expect("tenant"),
        Filter::parse(filter).expect("filter"),
    )
}

fn all(_: &str) -> Option<Filter> {
    Some(Filter::all())
}

/// What a run gave, as the record writes it: the documents, or
/// `{"error": ...}`.
fn outcome(r: &Result<Vec<Value>, String>) -> Value {
    match r {
        Ok(docs) => Value::Array(docs.clone()),
        Err(e) => json!({"error": e}),
    }
}

#[tokio::test]
async fn every_pipeline_case_gives_the_evaluators_result_on_the_server() {
    let server = start_server();
    let db = database(&server, "table").await;
    let table = table();
    load(&db, &table).await;
    let record: Value =
        serde_json::from_str(include_str!("../../../docs/aggregate-differential.json"))
            .expect("differential record");
    let recorded: Vec<&Value> = record["disagreements"]
        .as_array()
        .expect("disagreements")
        .iter()
        .collect();

    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut seen_rules = Vec::new();
    let cases = table["cases"].as_array().expect("cases");
    for case in cases {
        let rule = case["rule"].as_str().expect("rule");
        let collection = case["collection"].as_str().unwrap_or("people");
        let parsed = Pipeline::parse(&case["pipeline"]).expect("pipeline");
        let stages = match pipeline::pipeline_to_bson(&parsed, &tenant_scope("t1"), &all, 10_000) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{rule}: not translated: {e}"));
                continue;
            }
        };
        let got = aggregate(&db, collection, stages).await;
        let unordered = case["unordered"].as_array().cloned().unwrap_or_default();
        let agrees = match (&got, case.get("error")) {
            (Err(_), Some(_)) => true,
            (Ok(docs), None) => {
                normalise(docs.clone(), &unordered)
                    == normalise(
                        case["expect"].as_array().expect("expect").clone(),
                        &unordered,
                    )
            }
            _ => false,
        };
        let entry = recorded.iter().find(|d| d["rule"] == rule);
        if agrees {
            if let Some(e) = entry.filter(|_| server.standin) {
                failures.push(format!(
                    "{rule}: recorded as a disagreement ({}), but the server now agrees: update docs/aggregate-differential.json",
                    e["note"]
                ));
            }
            continue;
        }
        let engine = outcome(&got);
        let arca = case
            .get("error")
            .map_or_else(|| case["expect"].clone(), |e| json!({"error": e}));
        match entry {
            Some(e) if server.standin && e["engine"] == engine => {
                seen_rules.push(rule);
                known.push(format!(
                    "{rule} (follows the manual: {})",
                    e["follows_manual"]
                ));
            }
            Some(e) if server.standin => failures.push(format!(
                "{rule}: the stand-in's result changed: recorded {}, now {engine}",
                e["engine"]
            )),
            _ => failures.push(format!(
                "{rule}: unrecorded disagreement; a record entry would be:\n{}",
                serde_json::to_string_pretty(&json!({
                    "rule": rule,
                    "collection": collection,
                    "pipeline": case["pipeline"],
                    "arca": arca,
                    "engine": engine,
                    "follows_manual": "?",
                    "note": "?"
                }))
                .expect("json")
            )),
        }
    }
    for e in &recorded {
        let rule = e["rule"].as_str().unwrap_or_default();
        if !cases.iter().any(|c| c["rule"] == rule) {
            failures.push(format!(
                "{rule}: recorded, but no case of the table has this rule"
            ));
        }
    }
    println!(
        "{} pipeline cases against {}; {} recorded disagreements seen",
        cases.len(),
        if server.standin {
            "the mongoeco stand-in (not MongoDB)"
        } else {
            "ARCA_TEST_MONGODB_URI"
        },
        seen_rules.len()
    );
    for k in &known {
        println!("  [stand-in, recorded] {k}");
    }
    db.drop().await.expect("drop");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `p` on the server for tenant `t1` (with `scope` and `lookups`) and
/// through the evaluator over `t1`'s client views (filtered the same way),
/// asserts both agree, and returns the result.
async fn both(
    db: &mongodb::Database,
    views: &Map<String, Value>,
    collection: &str,
    p: Value,
    scope: &Scope,
    read_filter: &dyn Fn(&str) -> Option<Filter>,
) -> Vec<Value> {
    let parsed = Pipeline::parse(&p).expect("pipeline");
    let stages = pipeline::pipeline_to_bson(&parsed, scope, read_filter, 10_000).expect("bson");
    let server = aggregate(db, collection, stages)
        .await
        .unwrap_or_else(|e| panic!("{p}: {e}"));
    let mut env = InMemoryEnv::new();
    for (name, docs) in views {
        let f = read_filter(name).expect("filter");
        let docs = docs
            .as_array()
            .expect("documents")
            .iter()
            .filter(|d| f.matches(d))
            .cloned()
            .collect();
        env.collections.insert(name.clone(), docs);
    }
    let input: Vec<Value> = views[collection]
        .as_array()
        .expect("documents")
        .iter()
        .filter(|d| scope.filter().matches(d))
        .cloned()
        .collect();
    let evaluated: Result<Vec<Value>, PipelineError> = parsed.evaluate(input.into_iter(), &mut env);
    let evaluated = evaluated.expect("evaluated");
    // Compared as JSON values (objects without regard to field order: the
    // stand-in reorders fields, which the table records; these tests are
    // about which documents and fields come out).
    assert_eq!(
        Value::Array(server.clone()),
        Value::Array(evaluated),
        "{p}: the server and the evaluator differ"
    );
    server
}

/// No key `_tenant` and no trace of the other tenant anywhere in `v`.
fn assert_clean(v: &Value, what: &str) {
    match v {
        Value::Object(m) => {
            assert!(!m.contains_key("_tenant"), "{what}: _tenant in {v}");
            assert!(
                !m.contains_key("secret"),
                "{what}: another tenant's document in {v}"
            );
            assert!(
                m.get("_id").is_none_or(|id| id != "t2only"),
                "{what}: another tenant's document {v}"
            );
            m.values().for_each(|x| assert_clean(x, what));
        }
        Value::Array(items) => items.iter().for_each(|x| assert_clean(x, what)),
        Value::String(s) => assert_ne!(s, "t2", "{what}: the other tenant's key in {v}"),
        _ => {}
    }
}

#[tokio::test]
async fn lookups_and_root_never_reach_another_tenant_or_internal_fields() {
    let server = start_server();
    let db = database(&server, "tenancy").await;
    let views = load(&db, &table()).await;
    let t1 = tenant_scope("t1");

    // A $match on the tenant field finds nothing: before the client view
    // (mapped like a filter) and after it (the field is not there).
    for p in [
        json!([{"$match": {"_tenant": "t1"}}]),
        json!([{"$match": {"_tenant": {"$exists": true}}}]),
        json!([{"$skip": 0}, {"$match": {"_tenant": "t1"}}]),
        json!([{"$skip": 0}, {"$match": {"_tenant": {"$in": ["t1", "t2"]}}}]),
    ] {
        assert_eq!(
            both(&db, &views, "people", p, &t1, &all).await,
            Vec::<Value>::new()
        );
    }
    // ... and in a $lookup pipeline it finds nothing, at any depth.
    let lookups = [
        json!([{"$lookup": {"from": "people", "pipeline": [{"$match": {"_tenant": "t2"}}], "as": "x"}}, {"$project": {"x": 1}}]),
        json!([{"$lookup": {"from": "people", "pipeline": [{"$set": {"n": 1}}, {"$match": {"_tenant": {"$exists": true}}}], "as": "x"}}, {"$project": {"x": 1}}]),
        json!([{"$lookup": {"from": "orders", "pipeline": [
            {"$lookup": {"from": "people", "pipeline": [{"$match": {"$or": [{"_tenant": "t2"}, {"secret": "t2"}]}}], "as": "y"}},
            {"$project": {"y": 1}}
        ], "as": "x"}}, {"$project": {"x": 1}}]),
    ];
    for p in lookups {
        let out = both(&db, &views, "people", p.clone(), &t1, &all).await;
        assert_eq!(out.len(), 6, "{p}");
        assert_clean(&Value::Array(out.clone()), "a $lookup matching on _tenant");
        for d in &out {
            let x = d["x"].as_array().expect("x");
            let empty = x.iter().all(|o| o.get("y").is_none_or(|y| y == &json!([])));
            assert!(x.is_empty() || empty, "{p}: {d}");
        }
    }
    // $$ROOT, at the top and in lookups, is the client view of t1's
    // documents only.
    for p in [
        json!([{"$project": {"r": "$$ROOT", "t": "$_tenant"}}]),
        json!([{"$lookup": {"from": "people", "pipeline": [{"$project": {"r": "$$ROOT", "t": "$_tenant", "i": "$_id"}}], "as": "x"}}]),
        json!([{"$lookup": {"from": "people", "localField": "_id", "foreignField": "_id", "as": "self"}}]),
        json!([{"$group": {"_id": "$_tenant", "n": {"$sum": 1}, "all": {"$push": "$$ROOT"}}}]),
        json!([{"$set": {"t": "t1"}}, {"$lookup": {"from": "people", "localField": "t", "foreignField": "_tenant", "as": "x"}}, {"$project": {"x": 1}}]),
    ] {
        let out = both(&db, &views, "people", p.clone(), &t1, &all).await;
        assert!(!out.is_empty(), "{p}");
        assert_clean(&Value::Array(out.clone()), &p.to_string());
    }
    // Joining on `_tenant` matches only documents where it is missing on
    // both sides, never the tenant's value.
    let out = both(
        &db,
        &views,
        "people",
        json!([{"$set": {"t": "t1"}}, {"$lookup": {"from": "people", "localField": "t", "foreignField": "_tenant", "as": "x"}}, {"$project": {"x": 1}}]),
        &t1,
        &all,
    )
    .await;
    assert!(out.iter().all(|d| d["x"] == json!([])), "{out:?}");
    // A self-join by _id finds exactly the document itself, never the other
    // tenant's document with the same _id.
    let out = both(
        &db,
        &views,
        "people",
        json!([{"$lookup": {"from": "people", "localField": "_id", "foreignField": "_id", "as": "self"}}, {"$project": {"n": {"$size": "$self"}}}]),
        &t1,
        &all,
    )
    .await;
    assert!(out.iter().all(|d| d["n"] == json!(1)), "{out:?}");
    db.drop().await.expect("drop");
}

#[tokio::test]
async fn each_lookup_is_confined_to_its_targets_read_filter() {
    let server = start_server();
    let db = database(&server, "access").await;
    let views = load(&db, &table()).await;
    let scope = filtered_scope("t1", &json!({"team": "x"}));
    let read = |name: &str| -> Option<Filter> {
        let f = match name {
            "people" => json!({"city": "lis"}),
            "orders" => json!({"total": {"$gte": 5}}),
            "cities" => json!({"country": "pt"}),
            _ => return None,
        };
        Some(Filter::parse(&f).expect("filter"))
    };
    let out = both(
        &db,
        &views,
        "people",
        json!([
            {"$lookup": {"from": "orders", "localField": "_id", "foreignField": "person", "pipeline": [
                {"$lookup": {"from": "people", "localField": "person", "foreignField": "_id", "as": "who"}},
                {"$project": {"who._id": 1}}
            ], "as": "o"}},
            {"$lookup": {"from": "cities", "pipeline": [{"$project": {"_id": 1}}], "as": "c"}},
            {"$project": {"o": 1, "c": 1}}
        ]),
        &scope,
        &read,
    )
    .await;
    // Team x only (p1, p3, p6); orders of at least 5 (o1, o2 of p1; o4 of
    // p3); the people they join only in Lisbon; cities only in Portugal.
    assert_eq!(
        serde_json::to_string(&out).expect("json"),
        serde_json::to_string(&json!([
            {"_id": "p1", "o": [{"_id": "o1", "who": [{"_id": "p1"}]}, {"_id": "o2", "who": [{"_id": "p1"}]}], "c": [{"_id": "lis"}, {"_id": "opo"}]},
            {"_id": "p3", "o": [{"_id": "o4", "who": [{"_id": "p3"}]}], "c": [{"_id": "lis"}, {"_id": "opo"}]},
            {"_id": "p6", "o": [], "c": [{"_id": "lis"}, {"_id": "opo"}]}
        ]))
        .expect("json")
    );
    db.drop().await.expect("drop");
}
