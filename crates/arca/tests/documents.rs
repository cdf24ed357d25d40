//! Black-box tests of collections and documents on the embedded engine:
//! every row and error of the contract's Documents table, definitions,
//! numbers, durability across SIGKILL, online backups, and atomic
//! `If-Match`.

mod common;
use common::*;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

const PEOPLE: &str = "/v1/collections/people/documents";

fn people_def() -> Value {
    json!({
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0},
                "email": {"type": "string", "format": "email"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name"],
            "additionalProperties": false
        },
        "indexes": [{"fields": {"email": 1}, "unique": true, "sparse": true}],
        "access": {
            "read": {"roles": ["*"]},
            "create": {"roles": ["editor"]},
            "update": {"roles": ["editor"]},
            "delete": {"roles": ["editor"]}
        }
    })
}

async fn setup() -> (Server, String) {
    let s = Server::dev();
    let admin = s.admin();
    define(&s, &admin, "people", people_def()).await;
    let editor = s.token("ed", &["editor"], None);
    (s, editor)
}

async fn post(s: &Server, t: &str, body: Value) -> reqwest::Response {
    client()
        .post(s.url(PEOPLE))
        .bearer_auth(t)
        .json(&body)
        .send()
        .await
        .expect("post")
}

async fn created(s: &Server, t: &str, body: Value) -> Value {
    let r = post(s, t, body).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json().await.expect("json")
}

#[tokio::test]
async fn create_returns_201_location_etag_and_system_fields() {
    let (s, t) = setup().await;
    let r = post(&s, &t, json!({"name": "Ana", "age": 30})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let loc = r.headers()["location"].to_str().expect("loc").to_owned();
    let doc: Value = r.json().await.expect("json");
    let id = doc["_id"].as_str().expect("id");
    assert_eq!(id.len(), 24);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(loc, format!("{PEOPLE}/{id}"));
    assert_eq!(doc["_rev"], 1);
    assert_eq!(doc["_owner"], "ed");
    assert_eq!(doc["_created_at"], doc["_updated_at"]);
    assert!(doc["_created_at"].as_str().expect("ts").ends_with('Z'));
    assert_eq!(doc["name"], "Ana");
    assert!(doc.get("_tenant").is_none());
    // And it reads back the same.
    let got: Value = s.get_json(&loc, &t).await;
    assert_eq!(got, doc);
}

#[tokio::test]
async fn client_id_is_used_and_a_duplicate_is_409() {
    let (s, t) = setup().await;
    let doc = created(&s, &t, json!({"_id": "ana-1", "name": "Ana"})).await;
    assert_eq!(doc["_id"], "ana-1");
    let body = problem(
        post(&s, &t, json!({"_id": "ana-1", "name": "Other"})).await,
        409,
    )
    .await;
    assert_eq!(body["type"], "urn:arca:problem:conflict");
}

#[tokio::test]
async fn unique_index_duplicate_is_409_naming_the_field() {
    let (s, t) = setup().await;
    created(&s, &t, json!({"name": "A", "email": "a@example.com"})).await;
    // Sparse: documents without the field do not collide.
    created(&s, &t, json!({"name": "B"})).await;
    created(&s, &t, json!({"name": "C"})).await;
    let body = problem(
        post(&s, &t, json!({"name": "D", "email": "a@example.com"})).await,
        409,
    )
    .await;
    assert!(
        body["detail"].as_str().expect("detail").contains("email"),
        "{body}"
    );
}

#[tokio::test]
async fn invalid_documents_are_422_with_every_error_as_a_pointer() {
    let (s, t) = setup().await;
    let body = problem(
        post(
            &s,
            &t,
            json!({"age": -1, "email": "nope", "tags": [1], "extra": true, "_secret": 1}),
        )
        .await,
        422,
    )
    .await;
    let mut paths: Vec<String> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_owned())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/_secret", "/age", "/email", "/extra", "/name", "/tags/0"]
    );
    for bad_id in [
        json!(null),
        json!(5),
        json!("has space"),
        json!("x".repeat(129)),
    ] {
        let body = problem(post(&s, &t, json!({"_id": bad_id, "name": "A"})).await, 422).await;
        assert_eq!(body["errors"][0]["path"], "/_id");
    }
    for not_object in [json!([1]), json!("text"), json!(3)] {
        problem(post(&s, &t, not_object).await, 422).await;
    }
}

#[tokio::test]
async fn system_fields_sent_back_are_ignored() {
    let (s, t) = setup().await;
    let doc = created(
        &s,
        &t,
        json!({"name": "A", "_rev": 99, "_owner": "mallory", "_created_at": "1999-01-01T00:00:00Z", "_updated_at": "x"}),
    )
    .await;
    assert_eq!(doc["_rev"], 1);
    assert_eq!(doc["_owner"], "ed");
    assert_ne!(doc["_created_at"], "1999-01-01T00:00:00Z");
}

#[tokio::test]
async fn get_honours_if_none_match_and_missing_is_404() {
    let (s, t) = setup().await;
    let doc = created(&s, &t, json!({"_id": "g1", "name": "A"})).await;
    let url = s.url(&format!("{PEOPLE}/g1"));
    let r = client()
        .get(&url)
        .bearer_auth(&t)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let r = client()
        .get(&url)
        .bearer_auth(&t)
        .header("if-none-match", "\"7\", W/\"8\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json"), doc);
    let body = problem(s.get(&format!("{PEOPLE}/nope"), &t).await, 404).await;
    assert_eq!(body["type"], "urn:arca:problem:document-not-found");
    problem(s.get(&format!("{PEOPLE}/bad%20id"), &t).await, 404).await;
    problem(s.get("/v1/collections/nothing/documents/x", &t).await, 404).await;
    // A segment that does not decode to UTF-8 is the client's error, in
    // the id or in the collection name.
    for path in [
        format!("{PEOPLE}/%FF"),
        "/v1/collections/%FF/documents/x".into(),
    ] {
        let body = problem(s.get(&path, &t).await, 400).await;
        assert_eq!(body["detail"], "path segments must be valid UTF-8");
    }
}

#[tokio::test]
async fn put_replaces_and_bumps_the_revision() {
    let (s, t) = setup().await;
    let doc = created(&s, &t, json!({"_id": "p1", "name": "A", "age": 1})).await;
    let url = s.url(&format!("{PEOPLE}/p1"));
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .json(&json!({"name": "B", "_rev": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let new: Value = r.json().await.expect("json");
    assert_eq!(new["_rev"], 2);
    assert_eq!(new["name"], "B");
    assert!(new.get("age").is_none(), "PUT is a full replace");
    assert_eq!(new["_created_at"], doc["_created_at"]);
    // Missing document: 404 (PUT never creates).
    let r = client()
        .put(s.url(&format!("{PEOPLE}/p2")))
        .bearer_auth(&t)
        .json(&json!({"name": "C"}))
        .send()
        .await;
    problem(r.expect("put"), 404).await;
    // `_id` in the body must equal the URL's.
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .json(&json!({"_id": "other", "name": "C"}))
        .send()
        .await;
    assert_eq!(
        problem(r.expect("put"), 422).await["errors"][0]["path"],
        "/_id"
    );
    // Invalid replacement: 422 and nothing changes.
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .json(&json!({"age": 3}))
        .send()
        .await;
    problem(r.expect("put"), 422).await;
    // Stale If-Match: 412; current If-Match: 200.
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "D"}))
        .send()
        .await;
    assert_eq!(
        problem(r.expect("put"), 412).await["type"],
        "urn:arca:problem:precondition-failed"
    );
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .header("if-match", "\"2\"")
        .json(&json!({"name": "D"}))
        .send()
        .await;
    assert_eq!(r.expect("put").status(), 200);
}

#[tokio::test]
async fn patch_merges_revalidates_and_honours_if_match() {
    let (s, t) = setup().await;
    created(
        &s,
        &t,
        json!({"_id": "m1", "name": "A", "age": 1, "tags": ["x"]}),
    )
    .await;
    let url = s.url(&format!("{PEOPLE}/m1"));
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"age": null, "tags": ["y", "z"]}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let doc: Value = r.json().await.expect("json");
    assert!(doc.get("age").is_none());
    assert_eq!(doc["tags"], json!(["y", "z"]));
    assert_eq!(doc["name"], "A");
    // application/json is accepted too.
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .json(&json!({"age": 5}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    // The result is validated: removing a required field is 422.
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .json(&json!({"name": null}))
        .send()
        .await
        .expect("patch");
    assert_eq!(problem(r, 422).await["errors"][0]["path"], "/name");
    // If-Match.
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .header("if-match", "\"1\"")
        .json(&json!({"age": 6}))
        .send()
        .await;
    problem(r.expect("patch"), 412).await;
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .header("if-match", "\"3\"")
        .json(&json!({"age": 6}))
        .send()
        .await;
    assert_eq!(r.expect("patch").status(), 200);
    // A reserved field in a patch is 422; a non-object patch is 422.
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .json(&json!({"_x": 1}))
        .send()
        .await
        .expect("patch");
    problem(r, 422).await;
    let r = client()
        .patch(&url)
        .bearer_auth(&t)
        .json(&json!([1]))
        .send()
        .await
        .expect("patch");
    problem(r, 422).await;
    let r = client()
        .patch(s.url(&format!("{PEOPLE}/none")))
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .await;
    problem(r.expect("patch"), 404).await;
}

#[tokio::test]
async fn patches_cannot_grow_a_document_past_the_body_limit() {
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__MAX_BODY_BYTES".into(), "2048".into())],
        ..Opts::default()
    });
    define(
        &s,
        &s.admin(),
        "people",
        json!({"access": {"read": {"roles": ["*"]},
        "create": {"roles": ["editor"]}, "update": {"roles": ["editor"]}}}),
    )
    .await;
    let t = s.token("ed", &["editor"], None);
    created(&s, &t, json!({"_id": "g1", "name": "A"})).await;
    let patch = |field: &str| {
        client()
            .patch(s.url(&format!("{PEOPLE}/g1")))
            .bearer_auth(&t)
            .json(&json!({ field: "x".repeat(1200) }))
            .send()
    };
    // Each patch fits the limit; the first result does too.
    let r = patch("a").await.expect("patch");
    assert_eq!(r.status(), 200);
    // The second would make a document that no PUT could send back.
    let p = problem(patch("b").await.expect("patch"), 422).await;
    let message = p["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("over server.max_body_bytes (2048)"), "{p}");
    let doc: Value = s.get_json(&format!("{PEOPLE}/g1"), &t).await;
    assert_eq!(doc["_rev"], 2);
    assert!(doc.get("b").is_none(), "unchanged: {doc}");
    // Replacing a field instead of adding one still works.
    let r = patch("a").await.expect("patch");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn delete_is_204_honours_if_match_then_404() {
    let (s, t) = setup().await;
    created(&s, &t, json!({"_id": "d1", "name": "A"})).await;
    let url = s.url(&format!("{PEOPLE}/d1"));
    let r = client()
        .delete(&url)
        .bearer_auth(&t)
        .header("if-match", "\"5\"")
        .send()
        .await
        .expect("delete");
    problem(r, 412).await;
    let r = client()
        .delete(&url)
        .bearer_auth(&t)
        .header("if-match", "\"1\"")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    problem(
        client()
            .delete(&url)
            .bearer_auth(&t)
            .send()
            .await
            .expect("delete"),
        404,
    )
    .await;
    problem(
        client()
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .expect("get"),
        404,
    )
    .await;
}

/// A write with `If-None-Match` (and optionally `If-Match`) on `method`.
async fn conditional(
    s: &Server,
    t: &str,
    method: reqwest::Method,
    id: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = client()
        .request(method, s.url(&format!("{PEOPLE}/{id}")))
        .bearer_auth(t);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request")
}

#[tokio::test]
async fn writes_are_refused_when_if_none_match_matches() {
    use reqwest::Method;
    let (s, t) = setup().await;
    let original = created(&s, &t, json!({"_id": "n1", "name": "A"})).await;
    let put = Some(json!({"name": "B"}));
    let patch = Some(json!({"name": "C"}));
    // `*` matches any existing document; "1" and W/"1" (weak comparison)
    // match revision 1. Each write is refused with 412 and changes nothing.
    for (method, inm, body) in [
        (Method::PUT, "*", &put),
        (Method::PUT, "\"1\"", &put),
        (Method::PATCH, "W/\"1\"", &patch),
        (Method::PATCH, "\"9\", \"1\"", &patch),
        (Method::DELETE, "*", &None),
        (Method::DELETE, "W/\"1\"", &None),
    ] {
        let r = conditional(
            &s,
            &t,
            method.clone(),
            "n1",
            &[("if-none-match", inm)],
            body.clone(),
        )
        .await;
        let p = problem(r, 412).await;
        assert_eq!(
            p["detail"], "the document's current revision matches If-None-Match",
            "{method} If-None-Match: {inm}"
        );
    }
    let r = s.get(&format!("{PEOPLE}/n1"), &t).await;
    assert_eq!(r.json::<Value>().await.expect("json"), original);
    // Tags that name other revisions let the write through.
    let r = conditional(
        &s,
        &t,
        Method::PUT,
        "n1",
        &[("if-none-match", "\"2\", W/\"3\"")],
        put.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["_rev"], 2);
    // Both conditions must hold: If-Match matches but If-None-Match does too.
    let both = [("if-match", "\"2\""), ("if-none-match", "\"2\"")];
    problem(
        conditional(&s, &t, Method::PATCH, "n1", &both, patch.clone()).await,
        412,
    )
    .await;
    // If-Match failing is reported as such, whatever If-None-Match says.
    let p = problem(
        conditional(
            &s,
            &t,
            Method::DELETE,
            "n1",
            &[("if-match", "\"1\""), ("if-none-match", "\"5\"")],
            None,
        )
        .await,
        412,
    )
    .await;
    assert_eq!(p["detail"], "the document changed since the given revision");
    let r = conditional(
        &s,
        &t,
        Method::DELETE,
        "n1",
        &[("if-none-match", "\"1\"")],
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    // A missing document stays 404 (PUT never creates).
    problem(
        conditional(&s, &t, Method::PUT, "n1", &[("if-none-match", "*")], put).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn list_pages_with_cursor_and_count_counts() {
    let (s, t) = setup().await;
    for i in 0..25 {
        created(
            &s,
            &t,
            json!({"_id": format!("id{i:02}"), "name": format!("n{i}")}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut url = s.url(&format!("{PEOPLE}?limit=10"));
        if let Some(c) = &next {
            url.push_str(&format!("&after={c}"));
        }
        let page: Value = client()
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        for d in page["items"].as_array().expect("items") {
            seen.push(d["_id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("id{i:02}")).collect();
    assert_eq!(seen, expected);
    let default: Value = s.get_json(PEOPLE, &t).await;
    assert_eq!(
        default["items"].as_array().expect("items").len(),
        20,
        "default limit is 20"
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=garbage",
        "after=eyJ2Ijo5fQ",
    ] {
        problem(s.get(&format!("{PEOPLE}?{bad}"), &t).await, 400).await;
    }
    let n: Value = s.get_json("/v1/collections/people/count", &t).await;
    assert_eq!(n, json!({"count": 25}));
}

#[tokio::test]
async fn numbers_keep_their_kind_and_unrepresentable_ones_are_422() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "nums", json!({})).await;
    let url = s.url("/v1/collections/nums/documents");
    let raw = r#"{"i": 9223372036854775807, "n": -9223372036854775808, "f": 1.0, "g": 0.1, "e": 1.5e300}"#;
    let r = client()
        .post(&url)
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let text = client()
        .get(format!("{url}/{id}"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("t");
    for lit in [
        "\"i\":9223372036854775807",
        "\"n\":-9223372036854775808",
        "\"f\":1.0",
        "\"g\":0.1",
    ] {
        assert!(text.contains(lit), "{lit} in {text}");
    }
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["e"].as_f64(), Some(1.5e300));
    assert!(doc["f"].is_f64() && doc["i"].is_i64());
    for bad in [
        r#"{"u": 9223372036854775808}"#,
        r#"{"big": 18446744073709551616}"#,
        r#"{"neg": -9223372036854775809}"#,
        r#"{"inf": 1e400}"#,
    ] {
        let r = client()
            .post(&url)
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await;
        problem(r.expect("post"), 422).await;
    }
}

#[tokio::test]
async fn collection_definitions_round_trip_and_bad_ones_are_400() {
    let s = Server::dev();
    let t = s.admin();
    let url = s.url("/v1/collections/people");
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .json(&people_def())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let r = client()
        .put(&url)
        .bearer_auth(&t)
        .json(&people_def())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let def: Value = client()
        .get(&url)
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(def["name"], "people");
    assert_eq!(def["schema"], people_def()["schema"]);
    assert_eq!(def["access"], people_def()["access"]);
    assert_eq!(
        def["indexes"],
        json!([{"fields": {"email": 1}, "unique": true, "sparse": true}])
    );
    assert!(def["created_at"].is_string() && def["updated_at"].is_string());
    let all: Value = s.get_json("/v1/collections", &t).await;
    assert_eq!(all["items"].as_array().expect("items").len(), 1);
    for (name, body, needle) in [
        ("Bad-Name", json!({}), "collection names"),
        ("ok", json!([]), "object"),
        (
            "ok",
            json!({"schema": {"type": "object", "properties": {"a": {"$ref": "http://x"}}}}),
            "$ref",
        ),
        (
            "ok",
            json!({"schema": {"type": "object", "properties": {"a": {"format": "hostname"}}}}),
            "format",
        ),
        ("ok", json!({"indexes": [{"fields": {"a": 2}}]}), "1 or -1"),
        (
            "ok",
            json!({"indexes": [{"fields": {"a": 1}}, {"fields": {"a": 1}, "unique": true}]}),
            "indexes[1] has the same fields as indexes[0]",
        ),
        (
            "ok",
            json!({"access": {"read": {"roles": ["*"], "filter": {"$where": "1"}}}}),
            "$where",
        ),
    ] {
        let r = client()
            .put(s.url(&format!("/v1/collections/{name}")))
            .bearer_auth(&t)
            .json(&body)
            .send()
            .await;
        let p = problem(r.expect("put"), 400).await;
        assert!(
            p["detail"].as_str().expect("detail").contains(needle),
            "{needle}: {p}"
        );
    }
    problem(s.get("/v1/collections/nothing", &t).await, 404).await;
}

#[tokio::test]
async fn unique_index_over_duplicates_is_409_and_definition_unchanged() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "users", json!({})).await;
    for _ in 0..2 {
        let r = client()
            .post(s.url("/v1/collections/users/documents"))
            .bearer_auth(&t)
            .json(&json!({"email": "same"}))
            .send()
            .await;
        assert_eq!(r.expect("post").status(), 201);
    }
    let r = client()
        .put(s.url("/v1/collections/users"))
        .bearer_auth(&t)
        .json(&json!({"indexes": [{"fields": {"email": 1}, "unique": true}]}))
        .send()
        .await
        .expect("put");
    problem(r, 409).await;
    let def: Value = s.get_json("/v1/collections/users", &t).await;
    assert_eq!(def["indexes"], json!([]));
}

#[tokio::test]
async fn deleting_a_collection_deletes_its_documents() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "tmp", json!({})).await;
    let r = client()
        .post(s.url("/v1/collections/tmp/documents"))
        .bearer_auth(&t)
        .json(&json!({"_id": "a"}))
        .send()
        .await;
    assert_eq!(r.expect("post").status(), 201);
    let r = s.delete("/v1/collections/tmp", &t).await;
    assert_eq!(r.status(), 204);
    problem(s.get("/v1/collections/tmp/documents/a", &t).await, 404).await;
    problem(s.delete("/v1/collections/tmp", &t).await, 404).await;
    define(&s, &t, "tmp", json!({})).await;
    problem(s.get("/v1/collections/tmp/documents/a", &t).await, 404).await;
}

#[tokio::test]
async fn roles_gate_each_action() {
    let (s, editor) = setup().await;
    let viewer = s.token("vi", &["viewer"], None);
    // No token on a non-public action: 401 with a Bearer challenge.
    let r = post(&s, "", json!({"name": "A"})).await;
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .to_owned();
    problem(r, 401).await;
    assert!(challenge.starts_with("Bearer realm=\"arca\""));
    let r = client()
        .post(s.url(PEOPLE))
        .json(&json!({"name": "A"}))
        .send()
        .await
        .expect("post");
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .to_owned();
    problem(r, 401).await;
    assert_eq!(challenge, "Bearer realm=\"arca\"");
    // A role that is not listed: 403.
    problem(post(&s, &viewer, json!({"name": "A"})).await, 403).await;
    created(&s, &editor, json!({"_id": "r1", "name": "A"})).await;
    // "*" lets any authenticated caller read.
    let r = s.get(&format!("{PEOPLE}/r1"), &viewer).await;
    assert_eq!(r.status(), 200);
    // Collection management needs the schema admin role.
    let r = client()
        .put(s.url("/v1/collections/x"))
        .bearer_auth(&editor)
        .json(&json!({}))
        .send()
        .await;
    problem(r.expect("put"), 403).await;
    let r = client()
        .get(s.url("/v1/collections"))
        .send()
        .await
        .expect("get");
    problem(r, 401).await;
}

#[tokio::test]
async fn public_read_works_without_token_but_a_bad_token_is_still_401() {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "posts",
        json!({"access": {"read": {"roles": ["public"]}}}),
    )
    .await;
    let r = client()
        .post(s.url("/v1/collections/posts/documents"))
        .bearer_auth(&t)
        .json(&json!({"_id": "p"}))
        .send()
        .await;
    assert_eq!(r.expect("post").status(), 201);
    let r = client()
        .get(s.url("/v1/collections/posts/documents/p"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let r = s
        .get("/v1/collections/posts/documents/p", "not.a.jwt")
        .await;
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .to_owned();
    problem(r, 401).await;
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    // An absent action is denied to all but admins.
    let r = client()
        .post(s.url("/v1/collections/posts/documents"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    problem(r, 401).await;
}

#[tokio::test]
async fn tenants_are_segregated_and_ids_are_unique_per_tenant() {
    let (s, _) = setup().await;
    let a = s.token("ua", &["editor"], Some("tenant-a"));
    let b = s.token("ub", &["editor"], Some("tenant-b"));
    let none = s.token("un", &["editor"], None);
    created(
        &s,
        &a,
        json!({"_id": "same", "name": "A", "email": "x@example.com"}),
    )
    .await;
    created(
        &s,
        &b,
        json!({"_id": "same", "name": "B", "email": "x@example.com"}),
    )
    .await;
    let get = |t: String| {
        let url = s.url(&format!("{PEOPLE}/same"));
        async move { client().get(url).bearer_auth(t).send().await.expect("get") }
    };
    assert_eq!(
        get(a.clone()).await.json::<Value>().await.expect("j")["name"],
        "A"
    );
    assert_eq!(
        get(b.clone()).await.json::<Value>().await.expect("j")["name"],
        "B"
    );
    problem(get(none.clone()).await, 404).await;
    let count = |t: String| {
        let url = s.url("/v1/collections/people/count");
        async move {
            client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("c")
                .json::<Value>()
                .await
                .expect("j")
        }
    };
    assert_eq!(count(a.clone()).await["count"], 1);
    assert_eq!(count(none.clone()).await["count"], 0);
    // A write from another tenant cannot reach the document.
    let r = s.delete(&format!("{PEOPLE}/same"), &none).await;
    problem(r, 404).await;
    assert_eq!(get(a).await.status(), 200);
}

#[tokio::test]
async fn require_tenant_refuses_tokens_without_one() {
    let s = Server::start(Opts {
        env: vec![("ARCA_AUTH__REQUIRE_TENANT".into(), "true".into())],
        ..Opts::default()
    });
    let admin = s.admin();
    // Collection routes are not data routes.
    define(&s, &admin, "people", people_def()).await;
    let r = s.get(PEOPLE, &admin).await;
    problem(r, 403).await;
    let t = s.token("u", &["editor"], Some("t1"));
    assert_eq!(s.get(PEOPLE, &t).await.status(), 200);
}

#[tokio::test]
async fn definitions_and_documents_survive_a_restart() {
    let data = Arc::new(TempDir::new("restart"));
    let (token, id) = {
        let s = Server::start(Opts {
            data: Some(data.clone()),
            ..Opts::default()
        });
        let t = s.admin();
        define(&s, &t, "people", people_def()).await;
        let editor = s.token("ed", &["editor"], None);
        let doc = created(&s, &editor, json!({"name": "Persisted"})).await;
        (editor, doc["_id"].as_str().expect("id").to_owned())
    };
    let s = Server::start(Opts {
        data: Some(data),
        ..Opts::default()
    });
    let r = s.get(&format!("{PEOPLE}/{id}"), &token).await;
    assert_eq!(
        r.status(),
        200,
        "the dev key persists too, so the old token still works"
    );
    assert_eq!(r.json::<Value>().await.expect("j")["name"], "Persisted");
}

#[tokio::test]
async fn backup_while_writing_restores_a_consistent_prefix() {
    let s = Server::dev();
    if common::mongodb() {
        // On MongoDB the database's own tools make backups: the command
        // says which, and touches nothing.
        let out = std::process::Command::new(BIN)
            .args(["backup", "-"])
            .envs(s.env.clone())
            .output()
            .expect("arca backup");
        assert_eq!(out.status.code(), Some(2));
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            why.contains("mongodump") && why.contains("--oplog"),
            "{why}"
        );
        assert!(out.stdout.is_empty());
        return;
    }
    let t = s.admin();
    define(&s, &t, "people", people_def()).await;
    let editor = s.token("ed", &["editor"], None);
    // Writes keep coming, in order, while the backups run.
    let writer = {
        let (url, editor) = (s.url(PEOPLE), editor.clone());
        tokio::spawn(async move {
            let c = client();
            for i in 0..400 {
                let r = c
                    .post(&url)
                    .bearer_auth(&editor)
                    .json(&json!({"_id": format!("p{i:04}"), "name": "N"}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
        })
    };
    while s.get(&format!("{PEOPLE}/p0050"), &editor).await.status() != 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = TempDir::new("backup-out");
    let dest = out.0.join("arca-backup.tar");
    let run = |dest: &str| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["backup", dest]);
        for (k, v) in &s.env {
            cmd.env(k, v);
        }
        cmd.output().expect("arca backup")
    };
    let file = run(&common::path_str(&dest));
    assert!(
        file.status.success(),
        "{}",
        String::from_utf8_lossy(&file.stderr)
    );
    let summary = String::from_utf8_lossy(&file.stdout);
    assert!(summary.contains("bytes"), "{summary}");
    // To standard output, with no temporary file left beside the database.
    let piped = run("-");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    // A tar archive whose `arca.db` is a SQLite database.
    let names: Vec<String> = tar::Archive::new(&piped.stdout[..])
        .entries()
        .expect("a tar archive")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["arca.db"], "no files were uploaded");
    let leftovers: Vec<_> = std::fs::read_dir(&s.data.0)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A second backup to the same name is refused, the first kept.
    let again = run(&common::path_str(&dest));
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    writer.await.expect("writer");

    // Restore each copy into a fresh data directory (with the dev key, so
    // the same token works) and read it back.
    for (name, bytes) in [
        ("file", std::fs::read(&dest).expect("backup file")),
        ("stdout", piped.stdout),
    ] {
        let data = Arc::new(TempDir::new("restored"));
        tar::Archive::new(&bytes[..])
            .unpack(&data.0)
            .expect("restore: extract the archive");
        let head = std::fs::read(data.0.join("arca.db")).expect("arca.db");
        assert!(head.starts_with(b"SQLite format 3\0"), "{name}");
        std::fs::copy(
            s.data.0.join("dev-signing-key.p8"),
            data.0.join("dev-signing-key.p8"),
        )
        .expect("key");
        let r = Server::start(Opts {
            data: Some(data),
            ..Opts::default()
        });
        let page = r
            .get_json(&format!("{PEOPLE}?limit=1000&fields=_id"), &editor)
            .await;
        let ids: Vec<&str> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| d["_id"].as_str().expect("id"))
            .collect();
        // One point in time: the first k writes for some k, none missing.
        assert!(ids.len() > 50, "{name}: {} documents", ids.len());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*id, format!("p{i:04}"), "{name}: a gap in the copy");
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let data = Arc::new(TempDir::new("crash"));
    let mut s = Server::start(Opts {
        data: Some(data.clone()),
        ..Opts::default()
    });
    let t = s.admin();
    define(&s, &t, "log", json!({})).await;
    let url = s.url("/v1/collections/log/documents");
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, t, acked, stop) = (url.clone(), t.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w{w}-{i}");
                i += 1;
                match c
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&json!({"_id": id}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => acked.lock().expect("acked").push(id),
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("acked").clone();
    assert!(
        acked.len() > 20,
        "the writers made progress ({} acks)",
        acked.len()
    );
    let s = Server::start(Opts {
        data: Some(data),
        ..Opts::default()
    });
    let mut found = 0;
    for id in &acked {
        let r = s
            .get(&format!("/v1/collections/log/documents/{id}"), &t)
            .await;
        if r.status() == 200 {
            found += 1;
        }
    }
    assert_eq!(
        found,
        acked.len(),
        "every acknowledged write is there after SIGKILL"
    );
}

#[tokio::test]
async fn concurrent_patches_with_the_same_if_match_succeed_exactly_once() {
    let (s, t) = setup().await;
    created(&s, &t, json!({"_id": "hot", "name": "A", "age": 0})).await;
    let url = s.url(&format!("{PEOPLE}/hot"));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (url, t) = (url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            client()
                .patch(&url)
                .bearer_auth(&t)
                .header("if-match", "\"1\"")
                .json(&json!({"age": i}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    let mut failed = 0;
    for task in tasks {
        match task.await.expect("join").expect("request") {
            200 => ok += 1,
            412 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, failed), (1, 199));
    let doc: Value = client()
        .get(&url)
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("j");
    assert_eq!(doc["_rev"], 2);
}

#[tokio::test]
async fn import_runs_while_the_server_serves_reads_and_writes() {
    // On the MongoDB stand-in, every commit makes every other open
    // transaction fail its commit (MongoDB conflicts per document): the
    // server's creates retry against the import's stream of commits, and
    // get the same 30 s per operation as the import below.
    let env = if common::mongodb() {
        vec![("ARCA_STORE__TIMEOUT".into(), "30s".into())]
    } else {
        Vec::new()
    };
    let s = Server::start(Opts {
        env,
        ..Opts::default()
    });
    define(&s, &s.admin(), "people", people_def()).await;
    let t = s.token("ed", &["editor"], None);
    // Two files of `per_file` lines (fewer on the MongoDB stand-in, a
    // Python test server whose writes copy the collection they change, so
    // each costs time in proportion to its size, and every document write
    // is a transaction with its event there).
    let per_file: u64 = if common::mongodb() { 300 } else { 50_000 };
    let files: Vec<_> = (0..2)
        .map(|round| {
            let file = s.data.0.join(format!("live{round}.ndjson"));
            let lines: String = (0..per_file)
                .map(|i| format!("{{\"_id\": \"i{round}-{i}\", \"name\": \"n{i}\"}}\n"))
                .collect();
            std::fs::write(&file, lines).expect("write");
            file
        })
        .collect();
    // The server keeps creating and listing while two imports run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url, t) = (stop.clone(), s.url(PEOPLE), t.clone());
        tokio::spawn(async move {
            let mut created = 0u64;
            let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client()
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&json!({"name": format!("live{created}")}))
                    .send()
                    .await
                    .expect("post");
                *statuses.entry(r.status().as_u16()).or_default() += 1;
                created += 1;
                let r = client()
                    .get(format!("{url}?limit=5"))
                    .bearer_auth(&t)
                    .send()
                    .await
                    .expect("list");
                *statuses.entry(r.status().as_u16()).or_default() += 1;
            }
            (created, statuses)
        })
    };
    let store = common::import_env(&s.data.0);
    for file in files {
        let store = store.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["import", "--collection", "people"])
                .arg(&file)
                .envs(store)
                .env_remove("ARCA_CONFIG")
                .output()
                .expect("arca import")
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (created, statuses) = traffic.await.expect("traffic");
    assert!(created > 0);
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200, 201],
        "every request to the server succeeded: {statuses:?}"
    );
    let n: Value = s.get_json("/v1/collections/people/count", &t).await;
    assert_eq!(n["count"], 2 * per_file + created);
    let last = per_file - 1;
    let doc: Value = s.get_json(&format!("{PEOPLE}/i1-{last}"), &t).await;
    assert_eq!(doc["name"], format!("n{last}"));
}

#[tokio::test]
async fn import_loads_ndjson_with_the_same_checks_as_post() {
    let data = Arc::new(TempDir::new("import"));
    {
        let s = Server::start(Opts {
            data: Some(data.clone()),
            ..Opts::default()
        });
        define(&s, &s.admin(), "people", people_def()).await;
    }
    let store = common::import_env(&data.0);
    let import = |text: &str| {
        let file = data.0.join("in.ndjson");
        std::fs::write(&file, text).expect("write");
        std::process::Command::new(BIN)
            .args(["import", "--collection", "people", "--owner", "loader"])
            .arg(&file)
            .envs(store.clone())
            .env_remove("ARCA_CONFIG")
            .output()
            .expect("arca import")
    };
    let lines: String = (0..500)
        .map(|i| format!("{{\"_id\": \"p{i}\", \"name\": \"n{i}\", \"age\": {i}}}\n"))
        .collect();
    let out = import(&lines);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 500 documents"));
    let bad = import("{\"_id\": \"ok1\", \"name\": \"a\"}\n{\"_id\": \"bad\", \"age\": -1}\n");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("line 2: /age")
            && err.contains("1 document was imported: lines 1 to 2 except line 2;"),
        "{err}"
    );
    // A refused insert (here a duplicate _id) stops it too, and the report
    // says exactly what got in: inserts run many at once, so lines after
    // the refused one may be in.
    let lines: String = (0..3000)
        .map(|i| match i {
            // An id the first import wrote.
            100 => "{\"_id\": \"p5\", \"name\": \"n\"}\n".to_owned(),
            i => format!("{{\"_id\": \"q{i}\", \"name\": \"n\"}}\n"),
        })
        .collect();
    let dup = import(&lines);
    assert_eq!(dup.status.code(), Some(2));
    let err = String::from_utf8_lossy(&dup.stderr).into_owned();
    let (imported, last) = {
        let after = err
            .split("line 101: duplicate value for _id. ")
            .nth(1)
            .unwrap_or_else(|| panic!("{err}"));
        let n: u64 = after
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("count");
        let last: u64 = after
            .split("lines 1 to ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("last line read");
        (n, last)
    };
    assert!(
        err.contains(&format!(
            "except line 101; nothing after line {last} was read"
        )),
        "{err}"
    );
    assert_eq!(imported, last - 1, "{err}");
    // A line longer than the server's body limit is refused as a POST of
    // it would be.
    let file = data.0.join("long.ndjson");
    let long = format!("{{\"_id\": \"long\", \"name\": \"{}\"}}\n", "x".repeat(200));
    std::fs::write(&file, long).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["import", "--collection", "people"])
        .arg(&file)
        .envs(store.clone())
        .env("ARCA_SERVER__MAX_BODY_BYTES", "200")
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("arca import");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: longer than server.max_body_bytes (200 bytes)"),
        "{err}"
    );
    let s = Server::start(Opts {
        data: Some(data),
        ..Opts::default()
    });
    let t = s.token("reader", &["editor"], None);
    let n: Value = s.get_json("/v1/collections/people/count", &t).await;
    assert_eq!(
        n["count"],
        501 + imported,
        "the 500, the valid line before the bad one, and what the report says"
    );
    let doc: Value = s.get_json(&format!("{PEOPLE}/p42"), &t).await;
    assert_eq!(
        (
            doc["age"].clone(),
            doc["_owner"].clone(),
            doc["_rev"].clone()
        ),
        (json!(42), json!("loader"), json!(1))
    );
    // `-` reads standard input (`kubectl exec -i ... -- /arca import ... -`).
    let mut child = std::process::Command::new(BIN)
        .args(["import", "--collection", "people", "-"])
        .envs(store.clone())
        .env_remove("ARCA_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("arca import -");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        for i in 0..10 {
            writeln!(input, "{{\"_id\": \"s{i}\", \"name\": \"piped\"}}").expect("write");
        }
    }
    let out = child.wait_with_output().expect("import output");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 10 documents"));
    let doc: Value = s.get_json(&format!("{PEOPLE}/s9"), &t).await;
    assert_eq!(doc["name"], "piped");
}

/// Unique indexes over arrays are multikey on every engine (a shared
/// element is 409 naming the field); arrays on two fields of one compound
/// index are 422 on every engine (MongoDB cannot index parallel arrays).
#[tokio::test]
async fn arrays_in_indexes_behave_as_in_mongodb() {
    let s = Server::dev();
    let admin = s.admin();
    define(
        &s,
        &admin,
        "tagged",
        json!({"indexes": [{"fields": {"tags": 1}, "unique": true}, {"fields": {"a": 1, "b": 1}}],
               "access": {"create": {"roles": ["*"]}, "read": {"roles": ["*"]}, "update": {"roles": ["*"]}}}),
    )
    .await;
    let post = |body: Value| {
        let (url, t) = (s.url("/v1/collections/tagged/documents"), admin.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(t)
                .json(&body)
                .send()
                .await
                .expect("post")
        }
    };
    assert_eq!(
        post(json!({"_id": "x1", "tags": ["red", "blue"]}))
            .await
            .status(),
        201
    );
    let body = problem(
        post(json!({"_id": "x2", "tags": ["green", "blue"]})).await,
        409,
    )
    .await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("tags")),
        "{body}"
    );
    assert_eq!(
        post(json!({"_id": "x3", "tags": ["green"]})).await.status(),
        201
    );
    let body = problem(post(json!({"_id": "x4", "a": [1, 2], "b": [3]})).await, 422).await;
    assert_eq!(body["errors"][0]["path"], "/b", "{body}");
    assert_eq!(
        post(json!({"_id": "x5", "a": [1, 2], "b": 3}))
            .await
            .status(),
        201
    );
    // A PATCH that would make them parallel is refused too.
    let r = client()
        .patch(s.url("/v1/collections/tagged/documents/x5"))
        .bearer_auth(&admin)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"b": [3, 4]}"#)
        .send()
        .await
        .expect("patch");
    problem(r, 422).await;
}
