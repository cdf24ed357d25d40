//! Several `arca serve` processes on one store behave as one server:
//! what they must agree on lives in the store. Each test starts two real
//! processes on the same data directory (the same SQLite file and dev key).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Two dev servers on one data directory.
fn pair(env: &[(&str, &str)]) -> (Server, Server) {
    let data = Arc::new(TempDir::new("replicas"));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let a = Server::start(Opts {
        data: Some(data.clone()),
        env: env.clone(),
        ..Opts::default()
    });
    let b = Server::start(Opts {
        data: Some(data),
        env,
        ..Opts::default()
    });
    (a, b)
}

/// Polls `check` until it holds or `within` passes; how long it took.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn post(s: &Server, token: &str, coll: &str, body: Value) -> reqwest::Response {
    client()
        .post(s.url(&format!("/v1/collections/{coll}/documents")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST")
}

#[tokio::test]
async fn a_collection_defined_on_one_replica_is_used_on_the_other() {
    let (a, b) = pair(&[]);
    let t = a.admin();
    // B has never heard of it.
    assert_eq!(
        post(&b, &t, "notes", json!({"text": "x"})).await.status(),
        404
    );
    define(
        &a,
        &t,
        "notes",
        json!({"schema": {"type": "object", "properties": {"text": {"type": "string"}}},
               "access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    // Within store.catalog_refresh (1 s by default) B serves it.
    let took = eventually(Duration::from_secs(5), || async {
        post(&b, &t, "notes", json!({"text": "from b"}))
            .await
            .status()
            == 201
    })
    .await;
    let took = took.expect("B never saw the collection defined on A");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    // And the document written through B is read through A.
    let listed = a.get_json("/v1/collections/notes/documents", &t).await;
    assert_eq!(listed["items"][0]["text"], "from b");
    let spec = b.get_json("/openapi.json", &t).await;
    assert!(
        spec["components"]["schemas"]["NotesDocument"].is_object(),
        "B's OpenAPI document follows too"
    );
}

#[tokio::test]
async fn a_redefinition_and_a_deletion_reach_the_other_replica() {
    let (a, b) = pair(&[("ARCA_STORE__CATALOG_REFRESH", "200ms")]);
    let t = a.admin();
    let access = json!({"read": {"roles": ["*"]}, "create": {"roles": ["*"]}});
    define(&a, &t, "items", json!({"access": access})).await;
    eventually(Duration::from_secs(3), || async {
        post(&b, &t, "items", json!({"n": "free"})).await.status() == 201
    })
    .await
    .expect("B sees the collection");
    // A tightens the schema: B refuses what no longer fits.
    define(
        &a,
        &t,
        "items",
        json!({"schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
               "access": access}),
    )
    .await;
    eventually(Duration::from_secs(3), || async {
        post(&b, &t, "items", json!({"n": "free"})).await.status() == 422
    })
    .await
    .expect("B applies the new schema");
    assert_eq!(post(&b, &t, "items", json!({"n": 3})).await.status(), 201);
    // A deletes it: B answers 404 for it.
    let r = a.delete("/v1/collections/items", &t).await;
    assert_eq!(r.status(), 204);
    eventually(Duration::from_secs(3), || async {
        b.get("/v1/collections/items", &t).await.status() == 404
    })
    .await
    .expect("B forgets the collection");
    assert_eq!(post(&b, &t, "items", json!({"n": 3})).await.status(), 404);
}
