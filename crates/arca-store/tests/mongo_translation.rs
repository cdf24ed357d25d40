//! The MongoDB translation layer against a MongoDB-wire server, through the
//! real `mongodb` driver: the filter table's documents stored in Arca's
//! layout under two tenants, every case of the table run with its
//! translated filter, and a collection created with a translated
//! `$jsonSchema` validator.
//!
//! The server is the MongoDB given by `ARCA_TEST_MONGODB_URI`, or else the
//! mongoeco stand-in (`fixtures/mongo-standin/serve.py`, not MongoDB)
//! started with `ARCA_TEST_MONGO_PYTHON`. With neither set the tests fail:
//! a silent skip would read as a pass.
//!
//! Against the stand-in, the disagreements recorded in
//! `docs/query-differential.json` (the stand-in's own deviations from the
//! manual) are reported, not failed; against a real MongoDB nothing is
//! exempt.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arca_core::query::Filter;
use arca_core::{DocId, Document, DocumentSchema, SystemFields, Tenant};
use arca_store::mongodb::bson::{Bson, Document as BsonDocument, doc};
use arca_store::mongodb::{filter, schema, value};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use serde_json::{Value, json};

/// A server for one test: a stand-in process this test started (stopped on
/// drop, by its own handle), or an external MongoDB.
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
    let Ok(python) = std::env::var("ARCA_TEST_MONGO_PYTHON") else {
        panic!(
            "neither ARCA_TEST_MONGODB_URI (a MongoDB to test against) nor ARCA_TEST_MONGO_PYTHON \
             (the Python of the mongoeco stand-in's venv, as scripts/test installs it) is set: \
             these tests need one of them"
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
    // Unique per run, so runs against a shared MongoDB do not collide.
    let db = client.database(&format!("arca_translation_{}_{name}", std::process::id()));
    db.drop().await.expect("drop a previous database");
    db
}

fn table() -> Value {
    serde_json::from_str(include_str!("../../arca-core/tests/filter_cases.json")).expect("table")
}

fn arca_document(json: &Value) -> Document {
    let mut body = json.as_object().cloned().expect("object");
    let id = body.remove("_id").expect("_id");
    Document {
        system: SystemFields {
            id: DocId::parse(id.as_str().expect("string id")).expect("id"),
            rev: 3,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-02T00:00:00.000Z".into(),
            owner: "o".into(),
        },
        body,
    }
}

async fn find_all(
    coll: &mongodb::Collection<BsonDocument>,
    filter: BsonDocument,
) -> Vec<BsonDocument> {
    let mut cursor = coll.find(filter).await.expect("find");
    let mut out = Vec::new();
    while cursor.advance().await.expect("next") {
        out.push(cursor.deserialize_current().expect("document"));
    }
    out
}

#[tokio::test]
async fn every_filter_case_finds_a_superset_and_exact_ones_find_exactly() {
    let server = start_server();
    let db = database(&server, "filters").await;
    let coll = db.collection::<BsonDocument>("filter_table");
    let table = table();
    let t1 = Tenant::parse("t1").expect("tenant");
    let t2 = Tenant::parse("t2").expect("tenant");
    let mut stored = Vec::new();
    for d in table["docs"].as_array().expect("docs") {
        let doc = arca_document(d);
        stored.push(value::to_stored(&doc, &t1).expect("stored"));
        // The same documents in another tenant: never found below.
        stored.push(value::to_stored(&doc, &t2).expect("stored"));
    }
    coll.insert_many(stored).await.expect("insert");

    let known: Value = serde_json::from_str(include_str!("../../../docs/query-differential.json"))
        .expect("differential record");
    let known_rules: Vec<&str> = known["disagreements"]
        .as_array()
        .expect("disagreements")
        .iter()
        .filter_map(|d| d["rule"].as_str())
        .collect();

    let mut failures = Vec::new();
    let mut quirks = Vec::new();
    let mut agreeing_now = Vec::new();
    let mut exact_cases = 0;
    let cases = table["cases"].as_array().expect("cases");
    for case in cases {
        let rule = case["rule"].as_str().expect("rule");
        let parsed = Filter::parse(&case["filter"]).expect("filter");
        let translated = filter::filter_to_bson(&parsed);
        exact_cases += usize::from(translated.exact);
        // The engine adds the tenant itself, as here.
        let query = doc! {"$and": [{"_tenant": t1.key()}, translated.filter.clone()]};
        let found = find_all(&coll, query).await;
        let mut ids = Vec::new();
        let mut evaluated = Vec::new();
        for stored in &found {
            assert_eq!(
                value::stored_tenant(stored),
                Ok("t1"),
                "{rule}: another tenant's document"
            );
            let doc = value::from_stored(stored).expect("readable");
            ids.push(doc.system.id.as_str().to_owned());
            if parsed.matches_document(&doc) {
                evaluated.push(doc.system.id.as_str().to_owned());
            }
        }
        ids.sort();
        evaluated.sort();
        let expect: Vec<String> = case["expect"]
            .as_array()
            .expect("expect")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = expect.iter().filter(|id| !ids.contains(id)).collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missed {missing:?} (not a superset)"));
        } else if evaluated != expect {
            problems.push(format!(
                "the evaluator over the candidates gave {evaluated:?}"
            ));
        }
        if translated.exact && ids != expect {
            problems.push(format!("exact, but found {ids:?}"));
        }
        let recorded = known_rules.contains(&rule);
        if recorded && translated.exact && problems.is_empty() {
            agreeing_now.push(rule);
        }
        if problems.is_empty() {
            continue;
        }
        let line = format!(
            "{rule}: filter {} -> {} (exact: {}), expected {expect:?}, found {ids:?}: {}",
            case["filter"],
            Bson::Document(translated.filter),
            translated.exact,
            problems.join("; ")
        );
        if server.standin && recorded {
            quirks.push(line);
        } else {
            failures.push(line);
        }
    }
    println!(
        "{} cases against {}; {exact_cases} translated exactly",
        cases.len(),
        if server.standin {
            "the mongoeco stand-in (not MongoDB)"
        } else {
            "ARCA_TEST_MONGODB_URI"
        }
    );
    for q in &quirks {
        println!("  [stand-in, recorded] {q}");
    }
    for rule in &agreeing_now {
        println!("  [recorded disagreement, agrees with the translation] {rule}");
    }
    db.drop().await.expect("drop");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn write_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

#[tokio::test]
async fn a_translated_validator_refuses_what_the_api_refuses() {
    let source = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "age": {"type": "integer", "minimum": 0},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            },
            "email": {"type": "string", "format": "email"}
        },
        "required": ["name"],
        "additionalProperties": false
    });
    let api = DocumentSchema::compile(&source).expect("a schema the API accepts");
    let translated = schema::validator(&source).expect("translated");
    assert_eq!(translated.relaxed, vec!["/properties/email/format"]);

    let server = start_server();
    let db = database(&server, "schema").await;
    db.create_collection("people")
        .validator(translated.validator.clone())
        .await
        .expect("create with the validator");
    let coll = db.collection::<BsonDocument>("people");
    let tenant = Tenant::parse("t1").expect("tenant");
    let mut n = 0;
    let mut stored = |body: Value| {
        n += 1;
        let doc = arca_document(&{
            let mut b = body.clone();
            b["_id"] = json!(format!("d{n}"));
            b
        });
        (body, value::to_stored(&doc, &tenant).expect("stored"))
    };

    let valid = [
        json!({"name": "Ana", "age": 3, "score": 2, "tags": ["a"], "address": {"city": "Lisbon"}}),
        json!({"name": "Bo", "age": 2.0, "score": 1.5}),
        json!({"name": "Cy", "age": 3_000_000_000_i64, "email": "cy@example.com"}),
        json!({"name": "Di", "score": -7}),
    ];
    for body in valid {
        let (body, doc) = stored(body);
        assert!(api.validate(&body).is_empty(), "the API accepts {body}");
        coll.insert_one(doc)
            .await
            .unwrap_or_else(|e| panic!("{body} (system fields included) must be accepted: {e}"));
    }

    let invalid = [
        ("a wrong type", json!({"name": 5})),
        ("a missing required field", json!({"age": 1})),
        (
            "an extra field under additionalProperties: false",
            json!({"name": "x", "extra": 1}),
        ),
        (
            "a double where an integer is required",
            json!({"name": "x", "age": 2.5}),
        ),
        (
            "an integer below the minimum",
            json!({"name": "x", "age": -1}),
        ),
        (
            "a string where a number is allowed",
            json!({"name": "x", "score": "1"}),
        ),
        ("an empty string under minLength", json!({"name": ""})),
        (
            "a nested extra field",
            json!({"name": "x", "address": {"city": "L", "zip": 1}}),
        ),
        (
            "a nested missing field",
            json!({"name": "x", "address": {}}),
        ),
        ("a wrong array item", json!({"name": "x", "tags": [1]})),
    ];
    for (what, body) in invalid {
        let (body, doc) = stored(body);
        assert!(
            !api.validate(&body).is_empty(),
            "the API refuses {what}: {body}"
        );
        // `integer` admits integral doubles through `multipleOf: 1`, which
        // the stand-in does not implement (it takes any double there).
        if server.standin && body["age"] == json!(2.5) {
            let r = coll.insert_one(doc).await;
            println!("[stand-in] {what}: {r:?} (the stand-in ignores multipleOf)");
            continue;
        }
        let e = coll
            .insert_one(doc)
            .await
            .expect_err(&format!("the database must refuse {what}: {body}"));
        assert_eq!(write_code(&e), Some(121), "{what}: {e}");
    }

    // `format` is the API's alone (listed in `relaxed`): the database
    // takes a malformed email that the API refuses.
    let (body, doc) = stored(json!({"name": "Fay", "email": "not an email"}));
    assert!(!api.validate(&body).is_empty(), "the API refuses {body}");
    coll.insert_one(doc)
        .await
        .expect("format is not enforced by the database");

    // System fields written around the API are checked too.
    let (_, good) = stored(json!({"name": "Ed"}));
    type Change<'a> = &'a dyn Fn(&mut BsonDocument);
    let variants: [(&str, Change); 4] = [
        ("no _rev", &|d| {
            d.remove("_rev");
        }),
        ("a string _rev", &|d| {
            d.insert("_rev", "3");
        }),
        ("a plain string _id", &|d| {
            d.insert("_id", "d-x");
        }),
        ("no _tenant", &|d| {
            d.remove("_tenant");
        }),
    ];
    for (what, change) in variants {
        let mut d = good.clone();
        change(&mut d);
        let e = coll
            .insert_one(d)
            .await
            .expect_err(&format!("the database must refuse {what}"));
        assert_eq!(write_code(&e), Some(121), "{what}: {e}");
    }
    coll.insert_one(good)
        .await
        .expect("the unchanged document is accepted");
    db.drop().await.expect("drop");
}
