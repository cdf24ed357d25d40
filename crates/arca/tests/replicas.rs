//! Several `arca serve` processes on one store behave as one server:
//! what they must agree on lives in the store. Each test starts two real
//! processes on the same data directory (the same SQLite file and dev key):
//! collection definitions, and change events (a write through one replica
//! reaches the other's subscribers, tickets and resume points work on
//! either).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sse;
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

/// The collection both replicas know (defined on A, seen by B).
async fn shared_notes(a: &Server, b: &Server, t: &str) {
    define(
        a,
        t,
        "notes",
        json!({"access": {"read": {"roles": ["*"], "filter": {"_owner": {"$claim": "sub"}}},
                          "create": {"roles": ["*"]}}}),
    )
    .await;
    eventually(Duration::from_secs(5), || async {
        b.get("/v1/collections/notes/documents", t).await.status() == 200
    })
    .await
    .expect("B sees the collection");
}

#[tokio::test]
async fn a_write_through_one_replica_reaches_a_subscriber_of_the_other() {
    let (a, b) = pair(&[]);
    let t = a.admin();
    shared_notes(&a, &b, &t).await;
    let ana = a.token("ana", &["member"], None);
    let bob = a.token("bob", &["member"], None);
    let mut on_b = sse::Sse::subscribe(&b, "notes", &ana, None).await;
    let mut on_a = sse::Sse::subscribe(&a, "notes", &ana, None).await;
    assert_eq!(
        post(&a, &bob, "notes", json!({"_id": "bobs"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        post(&a, &ana, "notes", json!({"_id": "one"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        post(&b, &ana, "notes", json!({"_id": "two"}))
            .await
            .status(),
        201
    );
    // Both replicas deliver both writes, in the one order of the log, with
    // the same ids, filtered by the same rule (Bob's is not Ana's).
    let from_b = [on_b.next().await, on_b.next().await];
    let from_a = [on_a.next().await, on_a.next().await];
    let names = |evs: &[sse::Event]| -> Vec<String> {
        evs.iter()
            .map(|e| e.json()["_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(names(&from_b), ["one", "two"]);
    assert_eq!(from_a, from_b);
}

#[tokio::test]
async fn a_ticket_minted_through_one_replica_opens_a_stream_on_the_other_once() {
    let (a, b) = pair(&[]);
    let t = a.admin();
    shared_notes(&a, &b, &t).await;
    let ana = a.token("ana", &["member"], None);
    let r = client()
        .post(a.url("/v1/collections/notes/events/tickets"))
        .bearer_auth(&ana)
        .send()
        .await
        .expect("ticket");
    assert_eq!(r.status(), 201);
    let ticket = r.json::<Value>().await.expect("json")["ticket"]
        .as_str()
        .expect("ticket")
        .to_owned();
    let path = format!("/v1/collections/notes/events?ticket={ticket}");
    let mut on_b = sse::Sse::open(&b, &path, &[]).await;
    assert_eq!(
        post(&a, &ana, "notes", json!({"_id": "x"})).await.status(),
        201
    );
    assert_eq!(on_b.next().await.json()["_id"], "x");
    // Used on B: refused on A as well.
    let again = sse::Sse::request(&a, &path, &[]).await;
    problem(again, 401).await;
}

#[tokio::test]
async fn a_stream_resumes_on_the_other_replica_exactly_where_it_stopped() {
    let (a, b) = pair(&[]);
    let t = a.admin();
    shared_notes(&a, &b, &t).await;
    let ana = a.token("ana", &["member"], None);
    let mut on_a = sse::Sse::subscribe(&a, "notes", &ana, None).await;
    for i in 0..3 {
        let r = post(&a, &ana, "notes", json!({"_id": format!("d{i}")})).await;
        assert_eq!(r.status(), 201);
    }
    on_a.next().await;
    let second = on_a.next().await;
    // A goes away (its load balancer sends the client to B).
    drop(on_a);
    drop(a);
    let r = post(&b, &ana, "notes", json!({"_id": "d3"})).await;
    assert_eq!(r.status(), 201);
    let mut on_b = sse::Sse::subscribe(&b, "notes", &ana, second.id.as_deref()).await;
    let ids: Vec<String> = [on_b.next().await, on_b.next().await]
        .iter()
        .map(|e| e.json()["_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["d2", "d3"]);
}

#[tokio::test]
async fn a_replica_stalled_past_the_retention_resets_its_streams_and_they_follow_on() {
    let (a, b) = pair(&[("ARCA_EVENTS__RETENTION", "1s")]);
    let t = a.admin();
    shared_notes(&a, &b, &t).await;
    let ana = a.token("ana", &["member"], None);
    let mut on_b = sse::Sse::subscribe(&b, "notes", &ana, None).await;
    assert_eq!(
        post(&a, &ana, "notes", json!({"_id": "seen"}))
            .await
            .status(),
        201
    );
    let seen = on_b.next().await;
    assert_eq!(seen.json()["_id"], "seen");
    // B stalls (a paused node, a long GC pause of its host) while A writes
    // and prunes what B has not handed on yet.
    b.signal(libc::SIGSTOP);
    for id in ["lost1", "lost2"] {
        assert_eq!(
            post(&a, &ana, "notes", json!({"_id": id})).await.status(),
            201
        );
    }
    let pruned = eventually(Duration::from_secs(20), || async {
        let mut r = sse::Sse::subscribe(&a, "notes", &ana, seen.id.as_deref()).await;
        r.next().await.event == "reset"
    })
    .await;
    b.signal(libc::SIGCONT);
    assert!(pruned.is_some(), "A never pruned the log");
    // B's stream says so (`reset`, expired) and stays open: a later write
    // still arrives on it.
    let reset = on_b.next().await;
    assert_eq!(
        (reset.event.as_str(), reset.json()),
        ("reset", json!({"reason": "expired"}))
    );
    assert_eq!(
        post(&a, &ana, "notes", json!({"_id": "after"}))
            .await
            .status(),
        201
    );
    loop {
        let e = on_b.next().await;
        assert_eq!(e.event, "created", "{e:?}");
        if e.json()["_id"] == "after" {
            break;
        }
        // Only what was not yet pruned when B read the log may come first.
        assert_eq!(e.json()["_id"], "lost2", "{e:?}");
    }
}
