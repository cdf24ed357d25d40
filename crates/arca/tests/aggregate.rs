//! `POST /v1/collections/{name}/aggregate` over HTTP (on the engine
//! `ARCA_TEST_STORE` names): results, tenancy and read rules before the
//! first stage and in every `$lookup` (403 for a target the caller may not
//! read, 400 for an unknown one), internal fields out of reach, refused
//! stages naming themselves, data errors as 400 with MongoDB's reason, the
//! limits (`aggregate.max_results`, `max_memory`, `max_time`), and the
//! OpenAPI document.

mod common;
use common::*;

/// `orders` readable by members where `shop` is one of theirs; `shops`
/// readable by members; `audit` by auditors only.
async fn setup(s: &Server) -> String {
    let admin = s.admin();
    define(
        s,
        &admin,
        "orders",
        json!({
            "schema": {"type": "object", "properties": {
                "status": {"type": "string"}, "amount": {"type": "number"},
                "shop": {"type": "string"}, "month": {"type": "string"}}},
            "indexes": [{"fields": {"status": 1}}],
            "access": {
                "read": {"roles": ["member"], "filter": {"shop": {"$in": {"$claim": "shops"}}}},
                "create": {"roles": ["member"]}
            }
        }),
    )
    .await;
    define(
        s,
        &admin,
        "shops",
        json!({"access": {"read": {"roles": ["member"]}, "create": {"roles": ["member"]}}}),
    )
    .await;
    define(
        s,
        &admin,
        "audit",
        json!({"access": {"read": {"roles": ["auditor"]}, "create": {"roles": ["auditor"]}}}),
    )
    .await;
    admin
}

async fn post(s: &Server, token: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(s.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("post")
}

async fn aggregate(s: &Server, token: &str, coll: &str, pipeline: Value) -> reqwest::Response {
    post(
        s,
        token,
        &format!("/v1/collections/{coll}/aggregate"),
        &json!({ "pipeline": pipeline }),
    )
    .await
}

async fn items(s: &Server, token: &str, coll: &str, pipeline: Value) -> Value {
    let r = aggregate(s, token, coll, pipeline).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    body["items"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregations_see_only_the_callers_documents_at_every_depth() {
    let s = Server::dev();
    setup(&s).await;
    let alice = s.token_with_claims(
        "alice",
        &["member"],
        Some("acme"),
        &[r#"shops=["s1","s2"]"#],
    );
    let other = s.token_with_claims("eve", &["member"], Some("evil"), &[r#"shops=["s1","s2"]"#]);
    for (id, status, amount, shop, month) in [
        ("o1", "open", json!(10), "s1", "2026-01"),
        ("o2", "open", json!(5.5), "s2", "2026-01"),
        ("o3", "paid", json!(20), "s1", "2026-02"),
        ("o4", "paid", json!(100), "s3", "2026-02"),
    ] {
        let doc =
            json!({"_id": id, "status": status, "amount": amount, "shop": shop, "month": month});
        let r = post(&s, &alice, "/v1/collections/orders/documents", &doc).await;
        assert_eq!(r.status(), 201);
        // The other tenant holds the same ids, with huge amounts.
        let mut theirs = doc.clone();
        theirs["amount"] = json!(1_000_000);
        let r = post(&s, &other, "/v1/collections/orders/documents", &theirs).await;
        assert_eq!(r.status(), 201);
    }
    for (id, name) in [("s1", "Lisbon"), ("s2", "Porto"), ("s3", "Madrid")] {
        let r = post(
            &s,
            &alice,
            "/v1/collections/shops/documents",
            &json!({"_id": id, "name": name}),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    // Counts and totals per status: s3's order is outside the read rule,
    // the other tenant's are outside the tenant.
    let got = items(
        &s,
        &alice,
        "orders",
        json!([
            {"$group": {"_id": "$status", "n": {"$sum": 1}, "total": {"$sum": "$amount"}}},
            {"$sort": {"_id": 1}}
        ]),
    )
    .await;
    assert_eq!(
        got,
        json!([{"_id": "open", "n": 2, "total": 15.5}, {"_id": "paid", "n": 1, "total": 20}])
    );
    // A join: each order with its shop's name.
    let got = items(
        &s,
        &alice,
        "orders",
        json!([
            {"$match": {"status": "open"}},
            {"$lookup": {"from": "shops", "localField": "shop", "foreignField": "_id", "as": "s"}},
            {"$unwind": "$s"},
            {"$project": {"_id": 1, "shop": "$s.name"}},
            {"$sort": {"_id": 1}}
        ]),
    )
    .await;
    assert_eq!(
        got,
        json!([{"_id": "o1", "shop": "Lisbon"}, {"_id": "o2", "shop": "Porto"}])
    );
    // The tenant field is not there to read, group on or join on.
    let got = items(
        &s,
        &alice,
        "orders",
        json!([
            {"$project": {"t": "$_tenant", "r": "$$ROOT", "_id": 0}},
            {"$limit": 1}
        ]),
    )
    .await;
    let text = got.to_string();
    assert!(
        !text.contains("acme") && !text.contains("_tenant"),
        "{text}"
    );
    let got = items(
        &s,
        &alice,
        "shops",
        json!([
            {"$lookup": {"from": "orders", "pipeline": [{"$match": {"_tenant": "evil"}}], "as": "o"}},
            {"$project": {"_id": 1, "n": {"$size": "$o"}}}
        ]),
    )
    .await;
    assert!(
        got.as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|d| d["n"] == 0)),
        "{got}"
    );
    // The other tenant sees its own numbers only.
    let got = items(
        &s,
        &other,
        "orders",
        json!([{"$group": {"_id": null, "n": {"$sum": 1}}}]),
    )
    .await;
    assert_eq!(got, json!([{"_id": null, "n": 3}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_pipelines_are_checked_before_anything_runs() {
    let s = Server::dev();
    let admin = setup(&s).await;
    let member = s.token_with_claims("m", &["member"], None, &[r#"shops=["s1"]"#]);
    // A $lookup into a collection the caller may not read: 403 naming it.
    let body = problem(
        aggregate(
            &s,
            &member,
            "orders",
            json!([{"$lookup": {"from": "audit", "localField": "x", "foreignField": "y", "as": "a"}}]),
        )
        .await,
        403,
    )
    .await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("audit")),
        "{body}"
    );
    // At any depth.
    let body = problem(
        aggregate(
            &s,
            &member,
            "orders",
            json!([{"$lookup": {"from": "shops", "pipeline": [
                {"$lookup": {"from": "audit", "pipeline": [], "as": "deep"}}], "as": "a"}}]),
        )
        .await,
        403,
    )
    .await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("audit")),
        "{body}"
    );
    // Into a collection that does not exist: 400.
    let body = problem(
        aggregate(
            &s,
            &member,
            "orders",
            json!([{"$lookup": {"from": "ghosts", "localField": "x", "foreignField": "y", "as": "g"}}]),
        )
        .await,
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ghosts")),
        "{body}"
    );
    // Stages that write, run code or reach around the checks: 400 naming them.
    for stage in [
        json!({"$out": "x"}),
        json!({"$merge": {"into": "x"}}),
        json!({"$facet": {"a": []}}),
        json!({"$unionWith": "audit"}),
        json!({"$graphLookup": {"from": "audit"}}),
        json!({"$where": "1"}),
        json!({"$bogus": {}}),
    ] {
        let name = stage
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        let body = problem(aggregate(&s, &admin, "orders", json!([stage])).await, 400).await;
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(&name)),
            "{name}: {body}"
        );
    }
    for op in [json!({"$function": {}}), json!({"$accumulator": {}})] {
        let body = problem(
            aggregate(
                &s,
                &admin,
                "orders",
                json!([{"$group": {"_id": null, "x": op}}]),
            )
            .await,
            400,
        )
        .await;
        assert_eq!(body["type"], "urn:arca:problem:bad-request", "{body}");
    }
    // Not an object, not a pipeline, not JSON.
    for body in [
        json!([]),
        json!({"pipeline": {}}),
        json!({"pipeline": [], "x": 1}),
        json!("x"),
    ] {
        problem(
            post(&s, &admin, "/v1/collections/orders/aggregate", &body).await,
            400,
        )
        .await;
    }
    let r = client()
        .post(s.url("/v1/collections/orders/aggregate"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"pipeline\": [")
        .send()
        .await
        .expect("post");
    let body = problem(r, 400).await;
    assert_eq!(body["type"], "urn:arca:problem:malformed-json");
    // Roles on the collection itself: no token 401, no read role 403, an
    // unknown collection 404.
    let r = client()
        .post(s.url("/v1/collections/orders/aggregate"))
        .json(&json!({"pipeline": []}))
        .send()
        .await
        .expect("post");
    problem(r, 401).await;
    let nobody = s.token("n", &["nobody"], None);
    problem(aggregate(&s, &nobody, "orders", json!([])).await, 403).await;
    problem(aggregate(&s, &admin, "ghosts", json!([])).await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_errors_and_limits_are_clear_400s_and_503s() {
    let s = Server::start(Opts {
        env: vec![
            ("ARCA_AGGREGATE__MAX_RESULTS".into(), "5".into()),
            ("ARCA_AGGREGATE__MAX_MEMORY".into(), "1048576".into()),
        ],
        ..Opts::default()
    });
    let admin = setup(&s).await;
    let pad = "x".repeat(2000);
    let docs: String = (0..800)
        .map(|i| {
            format!(
                "{}\n",
                json!({"_id": format!("o{i:04}"), "status": if i % 2 == 0 { "open" } else { "paid" },
                       "amount": i, "shop": "s1", "month": pad})
            )
        })
        .collect();
    let file = s.data.0.join("orders.ndjson");
    std::fs::write(&file, docs).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arca"))
        .args(["import", "--collection", "orders"])
        .arg(&file)
        .envs(import_env(&s.data.0))
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // $divide by zero: 400 with MongoDB's reason.
    let body = problem(
        aggregate(
            &s,
            &admin,
            "orders",
            json!([{"$project": {"q": {"$divide": ["$amount", 0]}}}]),
        )
        .await,
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("divide by zero")),
        "{body}"
    );
    // More results than aggregate.max_results: 400 saying to add a $limit.
    let body = problem(
        aggregate(&s, &admin, "orders", json!([{"$project": {"amount": 1}}])).await,
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("$limit")),
        "{body}"
    );
    let got = items(
        &s,
        &admin,
        "orders",
        json!([{"$limit": 5}, {"$project": {"amount": 1}}]),
    )
    .await;
    assert_eq!(got.as_array().map(Vec::len), Some(5));
    // A stage over aggregate.max_memory: 400 naming the limit.
    let body = problem(
        aggregate(
            &s,
            &admin,
            "orders",
            json!([{"$group": {"_id": null, "all": {"$push": "$$ROOT"}}}]),
        )
        .await,
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("memory")),
        "{body}"
    );
    // Counts per status over everything still work.
    let got = items(
        &s,
        &admin,
        "orders",
        json!([{"$group": {"_id": "$status", "n": {"$count": {}}}}, {"$sort": {"_id": 1}}]),
    )
    .await;
    assert_eq!(
        got,
        json!([{"_id": "open", "n": 400}, {"_id": "paid", "n": 400}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_past_its_time_is_503_and_frees_its_reader() {
    let s = Server::start(Opts {
        env: vec![("ARCA_AGGREGATE__MAX_TIME".into(), "200ms".into())],
        ..Opts::default()
    });
    let admin = setup(&s).await;
    let docs: String = (0..if mongodb() { 300 } else { 2000 })
        .map(|i| format!("{}\n", json!({"_id": format!("s{i:04}"), "n": i})))
        .collect();
    let file = s.data.0.join("shops.ndjson");
    std::fs::write(&file, docs).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arca"))
        .args(["import", "--collection", "shops"])
        .arg(&file)
        .envs(import_env(&s.data.0))
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every shop joined with every shop: millions of steps.
    let heavy = json!([
        {"$lookup": {"from": "shops", "pipeline": [{"$sort": {"n": -1}}], "as": "all"}},
        {"$unwind": "$all"},
        {"$group": {"_id": {"$mod": ["$all.n", 7]}, "c": {"$sum": 1}}}
    ]);
    let started = std::time::Instant::now();
    let body = problem(aggregate(&s, &admin, "shops", heavy.clone()).await, 503).await;
    assert_eq!(body["type"], "urn:arca:problem:timeout", "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The readers are free again: cheap requests of the same caller and
    // of others are answered.
    for _ in 0..3 {
        let got = items(&s, &admin, "shops", json!([{"$count": "n"}])).await;
        assert!(got[0]["n"].as_u64().is_some_and(|n| n >= 300), "{got}");
    }
    let r = s.get("/v1/collections/shops/documents/s0001", &admin).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_route() {
    let s = Server::dev();
    setup(&s).await;
    let doc: Value = client()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let generic = &doc["paths"]["/v1/collections/{name}/aggregate"]["post"];
    assert_eq!(generic["operationId"], "aggregate_documents", "{generic}");
    assert_eq!(
        generic["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/AggregateInput"
    );
    let per = &doc["paths"]["/v1/collections/orders/aggregate"]["post"];
    assert_eq!(per["operationId"], "aggregate_orders", "{per}");
    assert!(doc["components"]["schemas"]["AggregateInput"]["example"]["pipeline"].is_array());
    assert!(doc["components"]["schemas"]["AggregateOutput"]["properties"]["items"].is_object());
}
