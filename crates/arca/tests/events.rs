//! Change events (`GET /v1/collections/{name}/events`, API.md "Change
//! events") against real `arca serve` processes over loopback, on the
//! engine `ARCA_TEST_STORE` names: the three kinds, read rules and moves
//! in and out of scope, tenants, resuming exactly once and `reset`,
//! tickets, a slow subscriber, token expiry, the collection deleted, the
//! bound on streams, shutdown, HTTP/2, compression, keep-alives, and a
//! real browser's `EventSource` with a ticket. A test awaits the events it
//! expects; to show that one was *not* delivered, it writes a visible
//! change after it and checks that this marker is the next event.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::sse::{Next, Sse, WAIT};
use common::*;

/// Every authenticated caller reads its own documents; writes are open.
fn own_notes() -> Value {
    json!({"access": {
        "read": {"roles": ["*"], "filter": {"_owner": {"$claim": "sub"}}},
        "create": {"roles": ["*"]}, "update": {"roles": ["*"]}, "delete": {"roles": ["*"]}}})
}

/// Everyone reads everything; writes are open.
fn open_notes() -> Value {
    json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]},
                      "update": {"roles": ["*"]}, "delete": {"roles": ["*"]}}})
}

async fn send(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = client()
        .request(method.clone(), s.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Creates a document and returns it as stored.
async fn create(s: &Server, token: &str, coll: &str, body: Value) -> Value {
    let r = send(
        s,
        reqwest::Method::POST,
        &format!("/v1/collections/{coll}/documents"),
        token,
        Some(body),
    )
    .await;
    assert_eq!(r.status(), 201, "create in {coll}");
    r.json().await.expect("document")
}

async fn patch(s: &Server, token: &str, coll: &str, id: &str, body: Value) -> Value {
    let r = send(
        s,
        reqwest::Method::PATCH,
        &format!("/v1/collections/{coll}/documents/{id}"),
        token,
        Some(body),
    )
    .await;
    assert_eq!(r.status(), 200, "patch {coll}/{id}");
    r.json().await.expect("document")
}

/// A dev token of `sub` valid for `ttl` (e.g. "2s").
fn token_for(s: &Server, sub: &str, roles: &[&str], tenant: Option<&str>, ttl: &str) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--sub", sub, "--ttl", ttl]);
    for r in roles {
        cmd.args(["--role", r]);
    }
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    cmd.env_remove("ARCA_CONFIG").envs(s.env.iter().cloned());
    stdout_of(&mut cmd, "arca token")
}

async fn mint_ticket(s: &Server, token: &str, coll: &str) -> String {
    let r = send(
        s,
        reqwest::Method::POST,
        &format!("/v1/collections/{coll}/events/tickets"),
        token,
        None,
    )
    .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("ticket");
    assert_eq!(v["expires_in"], 60);
    v["ticket"].as_str().expect("ticket").to_owned()
}

fn server(env: &[(&str, &str)]) -> Server {
    Server::start(Opts {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Opts::default()
    })
}

#[tokio::test]
async fn changes_arrive_as_created_updated_and_deleted() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut sse = Sse::subscribe(&s, "notes", &t, None).await;
    let made = create(
        &s,
        &t,
        "notes",
        json!({"_id": "n1", "text": "hello", "big": 9007199254740993_i64}),
    )
    .await;
    let e = sse.next().await;
    assert_eq!(sse.retry, Some(3000), "retry: comes first");
    assert_eq!(e.event, "created");
    assert_eq!(e.json(), made, "the document as the API returns it");
    assert_eq!(e.json()["big"], json!(9007199254740993_i64));
    let r = send(
        &s,
        reqwest::Method::PUT,
        "/v1/collections/notes/documents/n1",
        &t,
        Some(json!({"text": "replaced"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let replaced: Value = r.json().await.expect("doc");
    let e2 = sse.next().await;
    assert_eq!((e2.event.as_str(), e2.json()), ("updated", replaced));
    let patched = patch(&s, &t, "notes", "n1", json!({"text": "patched"})).await;
    let e3 = sse.next().await;
    assert_eq!((e3.event.as_str(), e3.json()), ("updated", patched));
    let r = send(
        &s,
        reqwest::Method::DELETE,
        "/v1/collections/notes/documents/n1",
        &t,
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    let e4 = sse.next().await;
    assert_eq!(
        (e4.event.as_str(), e4.json()),
        ("deleted", json!({"_id": "n1"}))
    );
    let ids: Vec<u64> = [&e, &e2, &e3, &e4].iter().map(|e| e.seq()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    // A refused write (a duplicate id) is no event: the next one is the
    // next write.
    create(&s, &t, "notes", json!({"_id": "n2"})).await;
    let r = send(
        &s,
        reqwest::Method::POST,
        "/v1/collections/notes/documents",
        &t,
        Some(json!({"_id": "n2"})),
    )
    .await;
    assert_eq!(r.status(), 409);
    create(&s, &t, "notes", json!({"_id": "n3"})).await;
    assert_eq!(sse.next().await.json()["_id"], "n2");
    assert_eq!(sse.next().await.json()["_id"], "n3");
    assert_eq!(
        sse.headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

#[tokio::test]
async fn each_subscriber_sees_only_what_its_read_rule_allows() {
    let s = Server::dev();
    define(&s, &s.admin(), "notes", own_notes()).await;
    let ana = s.token("ana", &["member"], None);
    let bob = s.token("bob", &["member"], None);
    let mut ana_sse = Sse::subscribe(&s, "notes", &ana, None).await;
    let mut bob_sse = Sse::subscribe(&s, "notes", &bob, None).await;
    create(&s, &ana, "notes", json!({"_id": "a1", "text": "ana's"})).await;
    patch(&s, &ana, "notes", "a1", json!({"text": "still ana's"})).await;
    create(&s, &bob, "notes", json!({"_id": "b1", "text": "bob's"})).await;
    let e = ana_sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.json()["_id"].as_str()),
        ("created", Some("a1"))
    );
    assert_eq!(ana_sse.next().await.event, "updated");
    // Bob's first event is his own document: none of Ana's reached him.
    let e = bob_sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.json()["_id"].as_str()),
        ("created", Some("b1"))
    );
    create(&s, &ana, "notes", json!({"_id": "a2"})).await;
    assert_eq!(ana_sse.next().await.json()["_id"], "a2");
    // An admin reads everything (within its tenant).
    let mut admin_sse = Sse::subscribe(&s, "notes", &s.admin(), None).await;
    create(&s, &bob, "notes", json!({"_id": "b2"})).await;
    assert_eq!(admin_sse.next().await.json()["_id"], "b2");
}

#[tokio::test]
async fn moves_out_of_the_read_scope_are_deletions_and_into_it_creations() {
    let s = Server::dev();
    define(
        &s,
        &s.admin(),
        "posts",
        json!({"access": {
        "read": {"roles": ["reader"], "filter": {"status": "published"}}}}),
    )
    .await;
    // The admin writes (it reads every post, drafts included).
    let editor = s.admin();
    let reader = s.token("rd", &["reader"], None);
    let mut sse = Sse::subscribe(&s, "posts", &reader, None).await;
    create(
        &s,
        &editor,
        "posts",
        json!({"_id": "p1", "status": "draft"}),
    )
    .await;
    let published = patch(&s, &editor, "posts", "p1", json!({"status": "published"})).await;
    let e = sse.next().await;
    assert_eq!(
        e.event, "created",
        "the draft was never seen; publishing moved it in"
    );
    assert_eq!(e.json(), published);
    let edited = patch(&s, &editor, "posts", "p1", json!({"title": "t"})).await;
    let e = sse.next().await;
    assert_eq!((e.event.as_str(), e.json()), ("updated", edited));
    patch(&s, &editor, "posts", "p1", json!({"status": "draft"})).await;
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.json()),
        ("deleted", json!({"_id": "p1"}))
    );
    // Changes while out of scope are not seen; the marker comes next.
    patch(&s, &editor, "posts", "p1", json!({"title": "secret draft"})).await;
    create(
        &s,
        &editor,
        "posts",
        json!({"_id": "marker", "status": "published"}),
    )
    .await;
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.json()["_id"].as_str()),
        ("created", Some("marker"))
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_events() {
    let s = Server::dev();
    define(&s, &s.admin(), "notes", open_notes()).await;
    let acme = s.token("ana", &["member"], Some("acme"));
    let globex = s.token("ana", &["member"], Some("globex"));
    let acme_admin = s.token("boss", &["admin"], Some("acme"));
    let mut a = Sse::subscribe(&s, "notes", &acme, None).await;
    let mut g = Sse::subscribe(&s, "notes", &globex, None).await;
    let mut boss = Sse::subscribe(&s, "notes", &acme_admin, None).await;
    create(&s, &acme, "notes", json!({"_id": "same", "who": "acme"})).await;
    create(
        &s,
        &globex,
        "notes",
        json!({"_id": "same", "who": "globex"}),
    )
    .await;
    assert_eq!(a.next().await.json()["who"], "acme");
    assert_eq!(g.next().await.json()["who"], "globex");
    assert_eq!(
        boss.next().await.json()["who"],
        "acme",
        "an admin stays in its tenant"
    );
    create(&s, &globex, "notes", json!({"_id": "g2"})).await;
    create(&s, &acme, "notes", json!({"_id": "a2"})).await;
    assert_eq!(a.next().await.json()["_id"], "a2");
    assert_eq!(boss.next().await.json()["_id"], "a2");
    assert_eq!(g.next().await.json()["_id"], "g2");
}

#[tokio::test]
async fn last_event_id_resumes_with_every_later_event_exactly_once() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut first = Sse::subscribe(&s, "notes", &t, None).await;
    for i in 0..3 {
        create(&s, &t, "notes", json!({"_id": format!("d{i}")})).await;
    }
    let seen: Vec<_> = [first.next().await, first.next().await, first.next().await].into();
    drop(first);
    // Written while disconnected, and two that race the reconnection.
    for i in 3..6 {
        create(&s, &t, "notes", json!({"_id": format!("d{i}")})).await;
    }
    let writer = {
        let (url, t) = (s.url("/v1/collections/notes/documents"), t.clone());
        tokio::spawn(async move {
            for i in 6..8 {
                let r = client()
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&json!({"_id": format!("d{i}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
        })
    };
    let last = seen[1].id.clone().expect("id");
    let mut resumed = Sse::subscribe(&s, "notes", &t, Some(&last)).await;
    writer.await.expect("writer");
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            resumed.next().await.json()["_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert_eq!(
        ids,
        ["d2", "d3", "d4", "d5", "d6", "d7"],
        "each once, in order"
    );
    create(&s, &t, "notes", json!({"_id": "d8"})).await;
    assert_eq!(
        resumed.next().await.json()["_id"],
        "d8",
        "no duplicate before it"
    );
    // The query parameter does the same for clients that cannot send the
    // header (a new browser EventSource).
    let path = format!(
        "/v1/collections/notes/events?last_event_id={}",
        seen[2].seq()
    );
    let auth = format!("Bearer {t}");
    let mut by_param = Sse::open(&s, &path, &[("authorization", &auth)]).await;
    assert_eq!(by_param.next().await.json()["_id"], "d3");
}

#[tokio::test]
async fn a_resume_point_no_longer_kept_starts_with_a_reset() {
    let s = server(&[("ARCA_EVENTS__RETENTION", "1s")]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut sse = Sse::subscribe(&s, "notes", &t, None).await;
    create(&s, &t, "notes", json!({"_id": "old"})).await;
    let old = sse.next().await;
    create(&s, &t, "notes", json!({"_id": "newer"})).await;
    let newer = sse.next().await;
    drop(sse);
    // Pruned within a second or two: resuming from before it then starts
    // with `reset`, whose id is the log's head.
    let started = Instant::now();
    let mut resumed = loop {
        let mut r = Sse::subscribe(&s, "notes", &t, Some(&old.seq().to_string())).await;
        let e = r.next().await;
        if e.event == "reset" {
            assert_eq!(e.json(), json!({"reason": "expired"}));
            assert_eq!(
                e.seq(),
                newer.seq(),
                "the reset's id is where following resumes"
            );
            break r;
        }
        assert_eq!(
            e.json()["_id"],
            "newer",
            "until pruned, the resume is exact"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Then it follows.
    create(&s, &t, "notes", json!({"_id": "after"})).await;
    let e = resumed.next().await;
    assert_eq!(
        (e.event.as_str(), e.json()["_id"].as_str()),
        ("created", Some("after"))
    );
    // An id beyond anything written is no resume point either.
    let mut ahead = Sse::subscribe(&s, "notes", &t, Some("999999")).await;
    let e = ahead.next().await;
    assert_eq!((e.event.as_str(), e.seq()), ("reset", e.seq()));
    assert!(e.seq() < 999_999);
    // And one that is not an id is refused.
    let auth = format!("Bearer {t}");
    for bad in ["abc", "-1", "1.5", "01"] {
        let r = Sse::request(
            &s,
            "/v1/collections/notes/events",
            &[("authorization", &auth), ("last-event-id", bad)],
        )
        .await;
        let p = problem(r, 400).await;
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Last-Event-ID")),
            "{p}"
        );
    }
}

#[tokio::test]
async fn tickets_open_one_stream_once_for_their_collection_and_holder() {
    let s = Server::dev();
    let admin = s.admin();
    define(&s, &admin, "notes", own_notes()).await;
    define(&s, &admin, "other", own_notes()).await;
    define(
        &s,
        &admin,
        "closed",
        json!({"access": {"read": {"roles": ["staff"]}}}),
    )
    .await;
    let ana = s.token("ana", &["member"], None);
    let bob = s.token("bob", &["member"], None);
    let ticket = mint_ticket(&s, &ana, "notes").await;
    // No header: the ticket is the credential, and it carries Ana's
    // identity (her read filter).
    let path = format!("/v1/collections/notes/events?ticket={ticket}");
    let mut sse = Sse::open(&s, &path, &[]).await;
    create(&s, &bob, "notes", json!({"_id": "bobs"})).await;
    create(&s, &ana, "notes", json!({"_id": "anas"})).await;
    assert_eq!(sse.next().await.json()["_id"], "anas");
    // Used.
    let r = Sse::request(&s, &path, &[]).await;
    assert_eq!(
        problem(r, 401).await["detail"],
        "invalid token: unknown, used or expired ticket"
    );
    // Unknown, and malformed.
    for bad in ["nope", &"x".repeat(500)] {
        let r = Sse::request(
            &s,
            &format!("/v1/collections/notes/events?ticket={bad}"),
            &[],
        )
        .await;
        problem(r, 401).await;
    }
    // For another collection.
    let t2 = mint_ticket(&s, &ana, "notes").await;
    let r = Sse::request(
        &s,
        &format!("/v1/collections/other/events?ticket={t2}"),
        &[],
    )
    .await;
    assert!(
        problem(r, 401).await["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another collection"))
    );
    // With another identity's token.
    let t3 = mint_ticket(&s, &ana, "notes").await;
    let bearer = format!("Bearer {bob}");
    let r = Sse::request(
        &s,
        &format!("/v1/collections/notes/events?ticket={t3}"),
        &[("authorization", &bearer)],
    )
    .await;
    assert!(
        problem(r, 401).await["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another identity"))
    );
    // With the holder's own token it is fine.
    let t4 = mint_ticket(&s, &ana, "notes").await;
    let own = format!("Bearer {ana}");
    Sse::open(
        &s,
        &format!("/v1/collections/notes/events?ticket={t4}"),
        &[("authorization", &own)],
    )
    .await;
    // Minting needs the read role (and a token when reading is not public).
    let r = send(
        &s,
        reqwest::Method::POST,
        "/v1/collections/closed/events/tickets",
        &ana,
        None,
    )
    .await;
    problem(r, 403).await;
    let r = client()
        .post(s.url("/v1/collections/notes/events/tickets"))
        .send()
        .await
        .expect("post");
    problem(r, 401).await;
    let r = send(
        &s,
        reqwest::Method::POST,
        "/v1/collections/missing/events/tickets",
        &ana,
        None,
    )
    .await;
    problem(r, 404).await;
    // Many at once with one ticket: exactly one stream opens.
    let shared = mint_ticket(&s, &ana, "notes").await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let url = s.url(&format!("/v1/collections/notes/events?ticket={shared}"));
            tokio::spawn(async move {
                client()
                    .get(url)
                    .send()
                    .await
                    .expect("get")
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401, 401, 401]);
}

#[tokio::test]
async fn a_ticket_expires() {
    let s = server(&[("ARCA_EVENTS__TICKET_TTL", "1s")]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let r = send(
        &s,
        reqwest::Method::POST,
        "/v1/collections/notes/events/tickets",
        &t,
        None,
    )
    .await;
    let v: Value = r.json().await.expect("ticket");
    assert_eq!(v["expires_in"], 1);
    let ticket = v["ticket"].as_str().expect("ticket");
    // Let it expire (time passing is the point here, not an event).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = Sse::request(
        &s,
        &format!("/v1/collections/notes/events?ticket={ticket}"),
        &[],
    )
    .await;
    problem(r, 401).await;
}

#[tokio::test]
async fn refusals_are_problems() {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "closed",
        json!({"access": {"read": {"roles": ["staff"]}}}),
    )
    .await;
    define(
        &s,
        &t,
        "public",
        json!({"access": {"read": {"roles": ["public"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    problem(
        Sse::request(&s, "/v1/collections/closed/events", &[]).await,
        401,
    )
    .await;
    let member = format!("Bearer {}", s.token("m", &["member"], None));
    problem(
        Sse::request(
            &s,
            "/v1/collections/closed/events",
            &[("authorization", &member)],
        )
        .await,
        403,
    )
    .await;
    problem(
        Sse::request(
            &s,
            "/v1/collections/missing/events",
            &[("authorization", &member)],
        )
        .await,
        404,
    )
    .await;
    problem(
        Sse::request(
            &s,
            "/v1/collections/closed/events",
            &[("authorization", "Bearer nope")],
        )
        .await,
        401,
    )
    .await;
    let twice = "/v1/collections/public/events?last_event_id=1&last_event_id=2";
    problem(Sse::request(&s, twice, &[]).await, 400).await;
    // A public collection streams without a token.
    let mut sse = Sse::open(&s, "/v1/collections/public/events", &[]).await;
    create(&s, &t, "public", json!({"_id": "p"})).await;
    assert_eq!(sse.next().await.json()["_id"], "p");
}

#[tokio::test]
async fn events_turned_off_are_404_and_writes_still_work() {
    let s = server(&[("ARCA_EVENTS__ENABLED", "false")]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let auth = format!("Bearer {t}");
    let p = problem(
        Sse::request(
            &s,
            "/v1/collections/notes/events",
            &[("authorization", &auth)],
        )
        .await,
        404,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("events.enabled"))
    );
    let r = send(
        &s,
        reqwest::Method::POST,
        "/v1/collections/notes/events/tickets",
        &t,
        None,
    )
    .await;
    problem(r, 404).await;
    create(&s, &t, "notes", json!({"_id": "x"})).await;
}

#[tokio::test]
async fn a_slow_subscriber_gets_reset_and_is_closed() {
    use std::io::{Read, Write};
    // (`NORMAL`: the 300 writes below need no fsync each.)
    let s = server(&[
        ("ARCA_EVENTS__BUFFER", "16"),
        ("ARCA_STORE__SQLITE__SYNCHRONOUS", "NORMAL"),
    ]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    // A client that reads nothing: a tiny receive buffer, and no reads
    // until the writes are done.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let addr: std::net::SocketAddr = s.addr.parse().expect("addr");
    sock.connect(&addr.into()).expect("connect");
    let mut conn: std::net::TcpStream = sock.into();
    write!(
        conn,
        "GET /v1/collections/notes/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .expect("request");
    // The server answers (its head and `retry:`) before the writes begin.
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).expect("head");
    assert_eq!(&head, b"HTTP/1.1 200");
    // Writes that fill the socket's buffers and then the 16-event ring.
    let text = "x".repeat(32 << 10);
    for i in 0..300 {
        create(
            &s,
            &t,
            "notes",
            json!({"_id": format!("d{i:03}"), "text": text}),
        )
        .await;
    }
    // Now read everything: some events, then `reset`, then the end.
    let got = tokio::task::spawn_blocking(move || {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut all = Vec::new();
        let _ = conn.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    })
    .await
    .expect("reader");
    assert!(got.contains("event: created"), "some events came first");
    let last_event = got.rsplit("event: ").next().unwrap_or_default();
    assert!(
        last_event.starts_with("reset\ndata: {\"reason\":\"slow\"}"),
        "the stream ends with a reset: ...{}",
        &got[got.len().saturating_sub(300)..]
    );
    assert!(
        got.ends_with("0\r\n\r\n"),
        "and is closed (the chunked body ended)"
    );
    let creates = got.matches("event: created").count();
    assert!(
        creates < 300,
        "the slow client did not get everything: {creates}"
    );
    let resets = s.metric(r#"arca_event_resets_total{reason="slow"}"#);
    assert_eq!(resets, Some(1.0));
}

#[tokio::test]
async fn the_stream_closes_when_the_token_expires() {
    let s = server(&[("ARCA_AUTH__LEEWAY", "0s")]);
    define(&s, &s.admin(), "notes", open_notes()).await;
    let short = token_for(&s, "ana", &["member"], None, "3s");
    let opened = Instant::now();
    let mut sse = Sse::subscribe(&s, "notes", &short, None).await;
    create(&s, &short, "notes", json!({"_id": "before"})).await;
    let last = sse.next().await;
    // The stream ends at the token's expiry...
    sse.until_end(Duration::from_secs(10)).await;
    let lasted = opened.elapsed();
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(8),
        "{lasted:?}"
    );
    // ...and the client reconnects with a new token and its last id.
    let fresh = token_for(&s, "ana", &["member"], None, "1h");
    create(&s, &fresh, "notes", json!({"_id": "meanwhile"})).await;
    let mut again = Sse::subscribe(&s, "notes", &fresh, last.id.as_deref()).await;
    assert_eq!(again.next().await.json()["_id"], "meanwhile");
}

#[tokio::test]
async fn deleting_the_collection_closes_its_streams() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut sse = Sse::subscribe(&s, "notes", &t, None).await;
    create(&s, &t, "notes", json!({"_id": "x"})).await;
    let last = sse.next().await;
    assert_eq!(s.delete("/v1/collections/notes", &t).await.status(), 204);
    assert!(sse.until_end(Duration::from_secs(5)).await.is_empty());
    // Defined again: a resume from before the deletion is reset (its
    // events are gone), then it follows the new collection.
    define(&s, &t, "notes", open_notes()).await;
    let mut again = Sse::subscribe(&s, "notes", &t, last.id.as_deref()).await;
    assert_eq!(again.next().await.event, "reset");
    create(&s, &t, "notes", json!({"_id": "new"})).await;
    assert_eq!(again.next().await.json()["_id"], "new");
}

#[tokio::test]
async fn a_caller_whose_read_rule_changes_is_filtered_by_the_new_one() {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "notes",
        json!({"access": {"read": {"roles": ["member"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    let member = s.token("m", &["member"], None);
    let mut sse = Sse::subscribe(&s, "notes", &member, None).await;
    create(&s, &t, "notes", json!({"_id": "a", "level": 1})).await;
    assert_eq!(sse.next().await.json()["_id"], "a");
    // Narrowed: only low levels.
    define(&s, &t, "notes", json!({"access": {"read": {"roles": ["member"], "filter": {"level": {"$lt": 5}}}, "create": {"roles": ["*"]}}})).await;
    create(&s, &t, "notes", json!({"_id": "high", "level": 9})).await;
    create(&s, &t, "notes", json!({"_id": "low", "level": 2})).await;
    assert_eq!(
        sse.next().await.json()["_id"],
        "low",
        "the high one was filtered by the new rule"
    );
    // The role loses reading: the stream ends.
    define(
        &s,
        &t,
        "notes",
        json!({"access": {"read": {"roles": ["staff"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    create(&s, &t, "notes", json!({"_id": "hidden", "level": 1})).await;
    assert!(sse.until_end(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn streams_beyond_max_subscribers_get_503() {
    let s = server(&[
        ("ARCA_EVENTS__MAX_SUBSCRIBERS", "2"),
        ("ARCA_EVENTS__KEEPALIVE", "200ms"),
    ]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let one = Sse::subscribe(&s, "notes", &t, None).await;
    let _two = Sse::subscribe(&s, "notes", &t, None).await;
    let auth = format!("Bearer {t}");
    let r = Sse::request(
        &s,
        "/v1/collections/notes/events",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let p = problem(r, 503).await;
    assert_eq!(p["type"], "urn:arca:problem:too-many-subscribers");
    // A ticket is not spent by a refusal at the bound.
    let ticket = mint_ticket(&s, &t, "notes").await;
    let path = format!("/v1/collections/notes/events?ticket={ticket}");
    problem(Sse::request(&s, &path, &[]).await, 503).await;
    // One closes (seen at its next keep-alive): a place is free again.
    drop(one);
    let started = Instant::now();
    loop {
        let r = Sse::request(&s, &path, &[]).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.metric("arca_event_streams"), Some(2.0));
}

#[tokio::test]
async fn sigterm_ends_open_streams_at_once() {
    let mut s = server(&[("ARCA_SERVER__SHUTDOWN_TIMEOUT", "25s")]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut sse = Sse::subscribe(&s, "notes", &t, None).await;
    create(&s, &t, "notes", json!({"_id": "x"})).await;
    sse.next().await;
    let sent = Instant::now();
    s.signal(libc::SIGTERM);
    sse.until_end(Duration::from_secs(5)).await;
    let status = tokio::task::spawn_blocking(move || s.wait_exit(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "shutdown was held: {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn keep_alive_comments_arrive_on_an_idle_stream() {
    let s = server(&[("ARCA_EVENTS__KEEPALIVE", "200ms")]);
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut sse = Sse::subscribe(&s, "notes", &t, None).await;
    // Nothing is written: only comments come (the wait is the point).
    assert!(matches!(
        sse.next_within(Duration::from_millis(1100)).await,
        Next::Quiet
    ));
    assert!(sse.comments >= 3, "{} keep-alives", sse.comments);
}

#[tokio::test]
async fn compression_does_not_buffer_the_stream() {
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let auth = format!("Bearer {t}");
    let mut sse = Sse::open(
        &s,
        "/v1/collections/notes/events",
        &[("authorization", &auth), ("accept-encoding", "gzip")],
    )
    .await;
    assert!(
        sse.headers.get("content-encoding").is_none(),
        "{:?}",
        sse.headers
    );
    create(&s, &t, "notes", json!({"_id": "x"})).await;
    let e = sse.next().await;
    assert_eq!(e.json()["_id"], "x");
}

#[tokio::test]
async fn streams_work_over_http2() {
    use std::io::{BufRead, BufReader};
    let s = Server::dev();
    let t = s.admin();
    define(&s, &t, "notes", open_notes()).await;
    let mut curl = Command::new("curl")
        .args(["-sN", "--http2-prior-knowledge", "-H"])
        .arg(format!("Authorization: Bearer {t}"))
        .arg(s.url("/v1/collections/notes/events"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl (scripts/test installs it)");
    let stdout = curl.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // `retry:` arrives first: the stream is open.
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a first line")
        .expect("line");
    assert_eq!(first, "retry: 3000");
    create(&s, &t, "notes", json!({"_id": "over-h2"})).await;
    let data = loop {
        let line = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the event")
            .expect("line");
        if let Some(d) = line.strip_prefix("data: ") {
            break d.to_owned();
        }
    };
    let v: Value = serde_json::from_str(&data).expect("json");
    assert_eq!(v["_id"], "over-h2");
    let _ = curl.kill();
    let _ = curl.wait();
}

#[tokio::test]
async fn the_openapi_document_describes_the_stream_and_tickets() {
    let s = Server::dev();
    let t = s.admin();
    let doc = s.get_json("/openapi.json", &t).await;
    let get = &doc["paths"]["/v1/collections/{name}/events"]["get"];
    assert!(
        get["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{get}"
    );
    assert_eq!(
        get["responses"]["200"]["content"]["text/event-stream"]["x-event-schema"]["$ref"],
        "#/components/schemas/ChangeEvent"
    );
    let post = &doc["paths"]["/v1/collections/{name}/events/tickets"]["post"];
    assert!(post["responses"]["201"].is_object(), "{post}");
    let event = &doc["components"]["schemas"]["ChangeEvent"];
    assert!(event["properties"]["data"].is_object(), "{event}");
    assert!(doc["components"]["schemas"]["TicketOutput"]["properties"]["ticket"].is_object());
    // Per collection, the typed stream names the collection's document.
    define(&s, &t, "notes", open_notes()).await;
    let doc = s.get_json("/openapi.json", &t).await;
    let typed = &doc["paths"]["/v1/collections/notes/events"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"];
    assert_eq!(
        typed["x-event-schema"]["$ref"],
        "#/components/schemas/NotesEvent"
    );
    assert!(doc["components"]["schemas"]["NotesEvent"].is_object());
}

/// Where `scripts/test` installed Playwright for Python.
fn playwright_python() -> std::path::PathBuf {
    let python = std::env::var("ARCA_TEST_CONSOLE_PYTHON").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            std::path::PathBuf::from(home).join(".cache/arca/console-venv/bin/python")
        },
        std::path::PathBuf::from,
    );
    assert!(
        python.exists(),
        "Playwright for Python is needed at {} (scripts/test installs it; or set ARCA_TEST_CONSOLE_PYTHON)",
        python.display()
    );
    python
}

#[test]
fn a_browser_eventsource_with_a_ticket_receives_changes() {
    let python = playwright_python();
    let s = Server::dev();
    let token = s.admin();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(define(&s, &token, "notes", own_notes()));
    let member = s.token("ana", &["member"], None);
    let other = s.token("bob", &["member"], None);
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/events/eventsource.py");
    let out = Command::new(python)
        .arg(script)
        .args([
            "--base",
            &s.base,
            "--token",
            &member,
            "--other",
            &other,
            "--collection",
            "notes",
        ])
        .output()
        .expect("run tests/events/eventsource.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("eventsource: all steps passed"),
        "the browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
