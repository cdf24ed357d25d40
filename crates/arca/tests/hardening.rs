//! What one caller can cost: each test reproduces an attack measured
//! against an unhardened server (issue 24) and shows the bound that now
//! holds: another tenant's reads stay fast while one tenant's heavy or
//! abandoned queries run; wide schemas and huge invalid documents cost a
//! bounded amount; pages are bounded in bytes; one address cannot hold
//! every connection; and the smaller holes stay closed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .expect("VmHWM")
}

/// A heavy filter: four `$elemMatch` of a 1,000-number `$in`, or-ed (each
/// document is tested against all of them).
fn heavy_filter() -> String {
    let list: Vec<u32> = (100_000..101_000).collect();
    let one = json!({"tags": {"$elemMatch": {"$in": list}}});
    json!({"$or": [one.clone(), one.clone(), one.clone(), one]}).to_string()
}

fn enc(s: &str) -> String {
    percent_encode(s)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `n` documents of tenant `noisy` in `big`, loaded with `arca import`.
fn seed(s: &Server, n: usize) {
    let file = s.data.0.join("big.ndjson");
    let mut text = String::with_capacity(n * 80);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"n\": {i}, \"tags\": [{}, {}, {}, {}, {}]}}\n",
            i % 97,
            i % 89,
            i % 83,
            i % 79,
            i % 73
        ));
    }
    std::fs::write(&file, text).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["import", "--collection", "big", "--tenant", "noisy"])
        .arg(&file)
        .envs(store_env(&s.data.0))
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// p99 of `xs` (milliseconds).
fn p99(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * 0.99).ceil() as usize).clamp(1, xs.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noisy_tenant_cannot_slow_another_tenants_reads() {
    let s = Server::start(Opts {
        env: vec![("ARCA_QUERY__MAX_TIME".into(), "1s".into())],
        ..Opts::default()
    });
    let admin = s.admin();
    let all = json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}});
    define(&s, &admin, "big", all.clone()).await;
    define(&s, &admin, "small", all).await;
    seed(&s, if mongodb() { 3_000 } else { 60_000 });
    let noisy = s.token("attacker", &["member"], Some("noisy"));
    let quiet = s.token("user", &["member"], Some("quiet"));
    let r = client()
        .post(s.url("/v1/collections/small/documents"))
        .bearer_auth(&quiet)
        .json(&json!({"_id": "mine", "v": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);

    let count_url = s.url(&format!(
        "/v1/collections/big/count?filter={}",
        enc(&heavy_filter())
    ));
    let attack_until = Instant::now() + Duration::from_secs(4);
    // The attacker: six heavy counts at a time, again and again, half of
    // them abandoned (the client gives up after 100 ms).
    let attackers: Vec<_> = (0..6)
        .map(|i| {
            let (url, t) = (count_url.clone(), noisy.clone());
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
                let http = client();
                while Instant::now() < attack_until {
                    let req = http.get(&url).bearer_auth(&t);
                    if i % 2 == 0 {
                        let _ = tokio::time::timeout(Duration::from_millis(100), req.send()).await;
                        *statuses.entry(0).or_default() += 1;
                        continue;
                    }
                    let r = req.send().await.expect("count");
                    let status = r.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    if status == 429 {
                        // As a client honouring Retry-After.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                statuses
            })
        })
        .collect();
    // Another tenant reads its document meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One client, as an application keeps one (building a client per
    // request costs more than the request).
    let (http, mine) = (client(), s.url("/v1/collections/small/documents/mine"));
    let mut latencies = Vec::new();
    while Instant::now() < attack_until {
        let started = Instant::now();
        let r = http
            .get(&mine)
            .bearer_auth(&quiet)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = std::collections::BTreeMap::<u16, u32>::new();
    for a in attackers {
        for (k, v) in a.await.expect("attacker") {
            *seen.entry(k).or_default() += v;
        }
    }
    // Only 2 of the attacker's reads run at once: the rest are 429 at
    // once; those that run stop at query.max_time (503) or finish.
    assert!(seen.get(&429).is_some_and(|n| *n > 0), "{seen:?}");
    assert!(
        seen.keys().all(|k| matches!(k, 0 | 200 | 429 | 503)),
        "{seen:?}"
    );
    let all: Vec<u32> = latencies.iter().map(|l| *l as u32).collect();
    let p = p99(&mut latencies);
    assert!(latencies.len() > 50, "{} reads: {all:?}", latencies.len());
    // The issue's bound, 50 ms, holds for the optimised build (run this
    // with `--release`; the bench's noisy-neighbour scenario records it).
    // An unoptimised build spends ~10x longer on parsing each attacking
    // request (a 28 KB filter) on the same two HTTP workers, so it is held
    // to 600 ms (a machine busy with other work adds its own delays): still
    // far below the 28 s a GET waited before, and below query.max_time
    // (1 s here), so a GET queued behind an attack read fails it.
    let bound = if cfg!(debug_assertions) { 600.0 } else { 50.0 };
    assert!(
        p < bound,
        "the other tenant's GET p99 was {p:.1} ms, above {bound} ms ({seen:?}): {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_query_frees_its_reader_at_once() {
    let s = Server::start(Opts {
        env: vec![("ARCA_QUERY__MAX_TIME".into(), "30s".into())],
        ..Opts::default()
    });
    let admin = s.admin();
    let all = json!({"access": {"read": {"roles": ["*"]}}});
    define(&s, &admin, "big", all).await;
    seed(&s, if mongodb() { 3_000 } else { 60_000 });
    // A sort over every document: seconds of work per request here.
    let slow = s.url(&format!(
        "/v1/collections/big/documents?sort=-n&limit=5&filter={}",
        enc(&heavy_filter())
    ));
    // Many callers start it and give up at once.
    for i in 0..8 {
        let t = s.token(&format!("quitter{i}"), &["member"], Some("noisy"));
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            client().get(&slow).bearer_auth(&t).send(),
        )
        .await;
    }
    // A cheap count of another caller is served at once: the abandoned
    // reads hold no reader (30 s of max_time would otherwise queue it).
    let t = s.token("patient", &["member"], Some("noisy"));
    let started = Instant::now();
    let r = s
        .get("/v1/collections/big/count?filter=%7B%22n%22%3A1%7D", &t)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} behind abandoned queries",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validation_cost_is_bounded_by_schema_width_and_error_count() {
    let s = Server::dev();
    let admin = s.admin();
    let branches = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"type": "object", "properties": {"k": {"type": "string", "pattern": format!("^k{i}-[a-z]+$")}}, "required": ["k"]}))
            .collect()
    };
    let def = |n: usize| {
        json!({"schema": {"type": "object", "properties": {
                  "items": {"type": "array", "items": {"anyOf": branches(n)}},
                  "nums": {"type": "array", "items": {"type": "integer"}}}},
               "access": {"create": {"roles": ["*"]}}})
    };
    // A 100-branch union is refused, naming the limit.
    let r = client()
        .put(s.url("/v1/collections/wide"))
        .bearer_auth(&admin)
        .json(&def(100))
        .send()
        .await
        .expect("put");
    let body = problem(r, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 32"),
        "{body}"
    );
    define(&s, &admin, "wide", def(32)).await;
    let pid = s.child.id();
    let before = peak_rss_mib(pid);
    // 50,000 items failing every branch (~500 KB).
    let failing: Vec<Value> = (0..50_000).map(|_| json!({"k": 1})).collect();
    let doc = json!({ "items": failing });
    // Two at once, while /healthz is polled: validation runs off the async
    // workers.
    let url = s.url("/v1/collections/wide/documents");
    let posts: Vec<_> = (0..2)
        .map(|_| {
            let (url, t, doc) = (url.clone(), admin.clone(), doc.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client()
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&doc)
                    .send()
                    .await
                    .expect("post");
                let status = r.status().as_u16();
                let body: Value = r.json().await.expect("problem");
                (status, body, started.elapsed())
            })
        })
        .collect();
    let mut health = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(http_status(&s.url("/healthz")).ok(), Some(200));
        health.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in posts {
        let (status, body, took) = p.await.expect("post");
        assert_eq!(status, 422, "{body}");
        // A large document: its first failure (validation stops there).
        assert_eq!(body["errors"].as_array().map(Vec::len), Some(1));
        assert_eq!(body["errors"][0]["path"], "/items/0");
        assert_eq!(body["errors_truncated"], true, "{body}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    let worst = health.iter().copied().fold(0.0, f64::max);
    // Before, two such posts held both async workers and /healthz waited
    // 4.7 s; the margin is for an unoptimised build on a busy machine.
    assert!(
        worst < 500.0,
        "/healthz took {worst:.0} ms during validation"
    );
    let grown = peak_rss_mib(pid) - before;
    assert!(grown < 200.0, "peak RSS grew by {grown:.0} MiB");
    // 520,000 wrongly typed numbers in ~1 MB: a small 422, not megabytes.
    let many = format!("{{\"nums\": [{}]}}", vec!["\"x\""; 250_000].join(","));
    let r = client()
        .post(&url)
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(many)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
    let text = r.text().await.expect("body");
    assert!(text.len() < 64 * 1024, "a {} byte problem", text.len());
    assert!(text.contains("\"errors_truncated\":true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_are_bounded_in_bytes_even_for_slow_readers() {
    let s = Server::start(Opts {
        env: vec![("ARCA_QUERY__MAX_CONCURRENT_PER_CALLER".into(), "16".into())],
        ..Opts::default()
    });
    let t = s.admin();
    define(
        &s,
        &t,
        "blobs",
        json!({"access": {"read": {"roles": ["*"]}}}),
    )
    .await;
    let big = "x".repeat(900_000);
    let n = 14;
    for i in 0..n {
        let r = client()
            .post(s.url("/v1/collections/blobs/documents"))
            .bearer_auth(&t)
            .json(&json!({"_id": format!("b{i:02}"), "data": big}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    // A page of 1,000 asked for: it ends at the 4 MiB budget, and the
    // cursors walk every document exactly once.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(c) => format!("/v1/collections/blobs/documents?limit=1000&after={c}"),
            None => "/v1/collections/blobs/documents?limit=1000".into(),
        };
        let r = s.get(&path, &t).await;
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.expect("body");
        assert!(bytes.len() < 5 << 20, "a page of {} bytes", bytes.len());
        let page: Value = serde_json::from_slice(&bytes).expect("json");
        for d in page["items"].as_array().expect("items") {
            seen.push(d["_id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("b{i:02}")).collect();
    assert_eq!(seen, want);
    // Ten clients ask for that page and read nothing: each pins at most a
    // page, not the 12 MB of matches.
    let pid = s.child.id();
    let before = peak_rss_mib(pid);
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(&s.addr).expect("connect");
        write!(
            c,
            "GET /v1/collections/blobs/documents?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
        )
        .expect("request");
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = peak_rss_mib(pid) - before;
    assert!(
        grown < 120.0,
        "ten stalled readers grew peak RSS by {grown:.0} MiB"
    );
    drop(stalled);
}

/// Connects from `local` (another loopback address: all of 127/8 is
/// this host's) to the server.
fn connect_from(local: [u8; 4], server: &str) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((local, 0)).into())?;
    let to: SocketAddr = server.parse().expect("server address");
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

#[test]
fn one_address_cannot_hold_every_connection_and_trickling_heads_are_cut() {
    let s = Server::start(Opts {
        env: vec![
            ("ARCA_SERVER__MAX_CONNECTIONS_PER_IP".into(), "20".into()),
            ("ARCA_SERVER__HEADER_TIMEOUT".into(), "1s".into()),
        ],
        ..Opts::default()
    });
    // 60 connections from 127.0.0.2, each with half a request head.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(mut c) = connect_from([127, 0, 0, 2], &s.addr) {
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ");
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let refused = s
        .metric(r#"http_connections_refused_total{reason="per_ip"}"#)
        .unwrap_or(0.0);
    assert!(refused >= 40.0, "{refused} refused");
    // Another address is served at once.
    let started = Instant::now();
    assert_eq!(http_status(&s.url("/healthz")).ok(), Some(200));
    assert!(started.elapsed() < Duration::from_millis(500));
    // The half heads are cut after header_timeout, not idle_timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let mut closed = 0;
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        if matches!(c.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, held.len(), "every half head was cut");
    let cut = s
        .metric(r#"http_connections_timed_out_total{reason="header"}"#)
        .unwrap_or(0.0);
    assert!(cut >= 20.0, "{cut} cut by header_timeout");
    // A whole request on a new connection from that address works again.
    let mut c = connect_from([127, 0, 0, 2], &s.addr).expect("connect");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn forged_and_foreign_cursors_are_400() {
    let s = Server::dev();
    let t = s.admin();
    for name in ["aa", "bb"] {
        define(&s, &t, name, json!({"access": {"read": {"roles": ["*"]}}})).await;
        for i in 0..3 {
            let r = client()
                .post(s.url(&format!("/v1/collections/{name}/documents")))
                .bearer_auth(&t)
                .json(&json!({"_id": format!("d{i}")}))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 201);
        }
    }
    let page = s.get_json("/v1/collections/aa/documents?limit=1", &t).await;
    let cursor = page["next"].as_str().expect("next").to_owned();
    let ok = s
        .get(
            &format!("/v1/collections/aa/documents?limit=1&after={cursor}"),
            &t,
        )
        .await;
    assert_eq!(ok.status(), 200);
    // The same cursor on another collection with the same filter and sort.
    let r = s
        .get(
            &format!("/v1/collections/bb/documents?limit=1&after={cursor}"),
            &t,
        )
        .await;
    problem(r, 400).await;
    // A cursor made without the key: the payload is right, the signature
    // is not.
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&cursor)
        .expect("b64");
    let mut forged = raw.clone();
    forged[0] ^= 0xff;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let r = s
        .get(
            &format!("/v1/collections/aa/documents?limit=1&after={forged}"),
            &t,
        )
        .await;
    problem(r, 400).await;
}

#[tokio::test]
async fn small_holes_stay_closed() {
    let s = Server::start(Opts {
        env: vec![("ARCA_AUTH__REQUIRE_TENANT".into(), "true".into())],
        ..Opts::default()
    });
    let admin = s.token("root", &["admin"], Some("t1"));
    // A null inside a list claim makes the rule match nothing (it would
    // match every document without `team`).
    define(
        &s,
        &admin,
        "notes",
        json!({"access": {"read": {"roles": ["*"], "filter": {"team": {"$in": {"$claim": "teams"}}}},
                          "create": {"roles": ["*"]}}}),
    )
    .await;
    for body in [
        json!({"_id": "noteam"}),
        json!({"_id": "red", "team": "red"}),
    ] {
        let r = client()
            .post(s.url("/v1/collections/notes/documents"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    let with_null = s.token_with_claims("u", &["member"], Some("t1"), &["teams=[\"red\", null]"]);
    let page = s
        .get_json("/v1/collections/notes/documents", &with_null)
        .await;
    assert_eq!(page["items"], json!([]), "{page}");
    let red = s.token_with_claims("u", &["member"], Some("t1"), &["teams=[\"red\"]"]);
    let page = s.get_json("/v1/collections/notes/documents", &red).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    // An index path with NUL is a bad definition (400), not a 503.
    let r = client()
        .put(s.url("/v1/collections/nul"))
        .bearer_auth(&admin)
        .json(&json!({"indexes": [{"fields": {"a\u{0}b": 1}}]}))
        .send()
        .await
        .expect("put");
    problem(r, 400).await;
    // Credentialed responses are not for shared caches; JSON is not sniffed.
    let r = s.get("/v1/collections/notes/documents", &red).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap_or_default().contains("authorization")),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = client()
        .get(s.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(r.headers().get("cache-control").is_none());
    // The start warns that a tenant's admin manages every collection.
    let logs = s.log_lines().join("\n");
    assert!(
        logs.contains("auth.require_tenant is on and auth.schema_admin_role is the admin role"),
        "{logs}"
    );
}
