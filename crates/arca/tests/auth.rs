//! Authentication against a real OIDC provider process (`oidc-provider` on
//! Node, fixtures/idp): tokens minted by the IdP over HTTP, discovery and
//! JWKS fetched over loopback, rotation by restarting the IdP with new keys.

mod common;
use common::*;
use std::time::{Duration, Instant};

const AUD: &str = "api://arca";

struct Setup {
    idp: Idp,
    server: Server,
    keys: std::path::PathBuf,
    _dir: TempDir,
}

/// An IdP (keys written to a file for forging) and an Arca trusting it.
fn setup(idp_env: &[(&str, &str)], arca_env: &[(&str, &str)]) -> Setup {
    let dir = TempDir::new("idp");
    let keys = dir.0.join("keys.json");
    let keys_str = path_str(&keys);
    let mut env: Vec<(&str, &str)> = vec![("JWKS_OUT", keys_str.as_str())];
    env.extend_from_slice(idp_env);
    let idp = Idp::start_any(&env);
    let mut arca: Vec<(String, String)> = vec![
        ("ARCA_AUTH__ISSUER".into(), idp.issuer.clone()),
        ("ARCA_AUTH__AUDIENCE".into(), AUD.into()),
    ];
    arca.extend(arca_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let server = Server::start(Opts {
        dev: false,
        env: arca,
        ..Opts::default()
    });
    Setup {
        idp,
        server,
        keys,
        _dir: dir,
    }
}

impl Setup {
    /// A document collection readable by any authenticated caller.
    async fn with_collection(&self) -> String {
        let admin = self.idp.token("arca-service", "arca-service-secret").await;
        define(
            &self.server,
            &admin,
            "notes",
            json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["reader"]}}}),
        )
        .await;
        self.server.url("/v1/collections/notes/documents")
    }

    fn claims(&self, extra: Value) -> Value {
        let now = now_secs();
        let mut c = json!({"iss": self.idp.issuer, "aud": AUD, "sub": "forged-user", "iat": now, "exp": now + 300, "roles": ["admin"]});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn forge(&self, key: &str, claims: Value) -> String {
        forge(
            &self.keys,
            json!({"key": key, "claims": self.claims(claims)}),
        )
    }
}

async fn status_with(url: &str, token: &str) -> (u16, String, Value) {
    let r = client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

async fn assert_rejected(url: &str, token: &str, reason: &str) {
    let (status, challenge, body) = status_with(url, token).await;
    assert_eq!(status, 401, "{reason}: {body}");
    assert!(
        challenge.starts_with("Bearer realm=\"arca\", error=\"invalid_token\""),
        "{reason}: {challenge}"
    );
    assert!(
        challenge.contains(reason) || body["detail"].as_str().unwrap_or_default().contains(reason),
        "{reason}: {challenge} {body}"
    );
    assert!(
        !challenge.contains(token) && !body.to_string().contains(token),
        "the token is never echoed"
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_the_idp_are_accepted() {
    let s = setup(&[], &[]);
    let url = s.with_collection().await;
    let rs = s.idp.token("arca-service", "arca-service-secret").await;
    assert_eq!(status_with(&url, &rs).await.0, 200);
    let es = s
        .idp
        .token_post("arca-service-es256", "arca-service-es256-secret")
        .await;
    assert!(es.split('.').next().is_some_and(|h| !h.is_empty()));
    assert_eq!(status_with(&url, &es).await.0, 200);
    // The ES256 client holds the role "reader": it may create, and `_owner`
    // is its `sub` (the client id for client-credentials tokens).
    let r = client()
        .post(&url)
        .bearer_auth(&es)
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["_owner"], "arca-service-es256");
}

#[tokio::test]
async fn fusionauth_shaped_tokens_are_accepted() {
    let app_id = "85a03867-dccf-4882-adde-1a79aeec50df";
    let s = setup(
        &[("FA_COMPAT", "1"), ("AUDIENCE", app_id)],
        &[("ARCA_AUTH__AUDIENCE", app_id)],
    );
    let token = s.idp.token("arca-service", "arca-service-secret").await;
    let header: Value = {
        use base64::Engine;
        let h = token.split('.').next().expect("header");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .expect("b64"),
        )
        .expect("json")
    };
    assert_eq!(header["typ"], "JWT", "FusionAuth's header shape");
    let r = client()
        .get(s.server.url("/v1/collections"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "admin role from `roles`, UUID audience");
}

#[tokio::test]
async fn edge_case_tokens_are_refused_with_a_reason() {
    let s = setup(&[], &[("ARCA_AUTH__LEEWAY", "5s")]);
    let url = s.with_collection().await;
    let now = now_secs();
    assert_rejected(&url, &s.forge("RS256", json!({"exp": now - 60})), "expired").await;
    assert_rejected(
        &url,
        &s.forge("RS256", json!({"nbf": now + 600})),
        "not yet valid",
    )
    .await;
    assert_rejected(
        &url,
        &s.forge("RS256", json!({"aud": "api://other"})),
        "audience",
    )
    .await;
    assert_rejected(
        &url,
        &s.forge("ES256", json!({"aud": ["x", "y"]})),
        "audience",
    )
    .await;
    assert_rejected(
        &url,
        &s.forge("RS256", json!({"iss": "http://evil.example"})),
        "issuer",
    )
    .await;
    assert_rejected(&url, &s.forge("RS256", json!({"sub": null})), "sub").await;
    let no_exp = {
        let mut c = s.claims(json!({}));
        c.as_object_mut().expect("obj").remove("exp");
        forge(&s.keys, json!({"key": "RS256", "claims": c}))
    };
    assert_rejected(&url, &no_exp, "exp").await;
    assert_rejected(&url, &s.forge("none", json!({})), "algorithm").await;
    assert_rejected(&url, &s.forge("hs-confusion", json!({})), "algorithm").await;
    // Tampered: payload changed after signing.
    let good = s.forge("RS256", json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let evil_payload = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(s.claims(json!({"roles": ["admin", "root"]})).to_string())
    };
    assert_rejected(
        &url,
        &format!("{}.{}.{}", parts[0], evil_payload, parts[2]),
        "signature",
    )
    .await;
    // Extra or missing segments around a valid header are malformed, not
    // an algorithm problem (the header alone names an accepted one).
    for bent in [
        format!("{good}.x"),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}..{}.{}", parts[0], parts[1], parts[2]),
    ] {
        assert_rejected(&url, &bent, "malformed token").await;
    }
    // And the untouched one passes: the rejections above are about the edits.
    assert_eq!(status_with(&url, &good).await.0, 200);
    // A list audience containing ours is fine.
    assert_eq!(
        status_with(&url, &s.forge("ES256", json!({"aud": ["x", AUD]})))
            .await
            .0,
        200
    );
    // Oversized.
    let big = s.forge("RS256", json!({"pad": "x".repeat(17 * 1024)}));
    assert_rejected(&url, &big, "16 KiB").await;
}

#[tokio::test]
async fn malformed_authorization_headers_are_401() {
    let s = setup(&[], &[]);
    let url = s.with_collection().await;
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "bearer not-a-jwt",
        "Token abc",
        "Bearer a.b",
    ] {
        let r = client()
            .get(&url)
            .header("authorization", value)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{value}");
        let ch = r.headers()["www-authenticate"]
            .to_str()
            .expect("h")
            .to_owned();
        assert!(ch.contains("invalid_token"), "{value}: {ch}");
    }
    // Two Authorization headers, and a non-ASCII one, over raw HTTP.
    let path = url.trim_start_matches(&s.server.base);
    let (status, _) = raw_request(
        &s.server.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 401);
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer ")
            .into_bytes();
    req.extend_from_slice(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']);
    let (status, _) = raw_request(&s.server.addr, &req);
    assert_eq!(status, 401);
    // No header at all on a protected route: 401 without error=.
    let r = client().get(&url).send().await.expect("get");
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"arca\"");
}

async fn jwks_fetches(server: &Server) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .find(|l| l.starts_with("arca_jwks_fetches "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("arca_jwks_fetches metric")
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_refetch_per_interval() {
    let s = setup(&[], &[("ARCA_AUTH__JWKS_MIN_REFETCH", "30s")]);
    let url = s.with_collection().await;
    // Forge first (a Node process each), then send them all at once, so the
    // whole burst falls well inside one refetch interval.
    let tokens: Vec<String> = (0..40)
        .map(|i| forge(&s.keys, json!({"key": "fresh", "header": {"kid": format!("random-{i}")}, "claims": s.claims(json!({}))})))
        .collect();
    let before = jwks_fetches(&s.server).await;
    let mut tasks = Vec::new();
    for token in tokens {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { status_with(&url, &token).await }));
    }
    for t in tasks {
        let (status, challenge, _) = t.await.expect("join");
        assert_eq!(status, 401);
        assert!(challenge.contains("unknown signing key"), "{challenge}");
    }
    let after = jwks_fetches(&s.server).await;
    assert!(
        after - before <= 1.0,
        "40 unknown kids caused {} JWKS fetches",
        after - before
    );
}

#[tokio::test]
async fn rotated_keys_are_accepted_without_restarting_arca() {
    let mut s = setup(&[], &[("ARCA_AUTH__JWKS_MIN_REFETCH", "1s")]);
    let url = s.with_collection().await;
    let old = s.idp.token("arca-service", "arca-service-secret").await;
    assert_eq!(status_with(&url, &old).await.0, 200);
    // Restart the IdP on the same port with fresh keys (new kids).
    let port = s.idp.port;
    s.idp.stop();
    s.idp = Idp::start(port, &[]);
    let new = s.idp.token("arca-service", "arca-service-secret").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, ch, _) = status_with(&url, &new).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated key never accepted: {ch}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn idp_down_at_start_then_up() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let server = Server::start(Opts {
        dev: false,
        env: vec![
            ("ARCA_AUTH__ISSUER".into(), issuer),
            ("ARCA_AUTH__AUDIENCE".into(), AUD.into()),
        ],
        wait_ready: false,
        ..Opts::default()
    });
    // The process serves, but is not ready, and a token cannot be checked yet.
    assert_eq!(http_status(&server.url("/healthz")).expect("healthz"), 200);
    assert_eq!(http_status(&server.url("/readyz")).expect("readyz"), 503);
    let idp = Idp::start(port, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(&server.url("/readyz")).unwrap_or(0) != 200 {
        assert!(
            Instant::now() < deadline,
            "never became ready after the IdP came up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = idp.token("arca-service", "arca-service-secret").await;
    let r = server.get("/v1/collections", &token).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn nested_roles_claim_and_tenant_claim_are_configurable() {
    let s = setup(
        &[],
        &[
            ("ARCA_AUTH__ROLES_CLAIM", "realm_access.roles"),
            ("ARCA_AUTH__TENANT_CLAIM", "org"),
        ],
    );
    let admin = s.forge(
        "RS256",
        json!({"roles": [], "realm_access": {"roles": ["admin"]}}),
    );
    assert_eq!(
        status_with(&s.server.url("/v1/collections"), &admin)
            .await
            .0,
        200
    );
    let not_admin = s.forge(
        "RS256",
        json!({"roles": ["admin"], "realm_access": {"roles": ["viewer"]}}),
    );
    assert_eq!(
        status_with(&s.server.url("/v1/collections"), &not_admin)
            .await
            .0,
        403
    );
    define(
        &s.server,
        &admin,
        "notes",
        json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    let url = s.server.url("/v1/collections/notes/documents");
    let org_a = s.forge(
        "RS256",
        json!({"org": "a", "realm_access": {"roles": ["viewer"]}}),
    );
    let org_b = s.forge(
        "RS256",
        json!({"org": "b", "realm_access": {"roles": ["viewer"]}}),
    );
    let r = client()
        .post(&url)
        .bearer_auth(&org_a)
        .json(&json!({"_id": "n1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(status_with(&format!("{url}/n1"), &org_a).await.0, 200);
    assert_eq!(status_with(&format!("{url}/n1"), &org_b).await.0, 404);
    // A tenant claim of the wrong type is an invalid token, not a silent default.
    let bad = s.forge("RS256", json!({"org": ["a"]}));
    assert_eq!(status_with(&url, &bad).await.0, 401);
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let s = setup(&[], &[("ARCA_AUTH__LEEWAY", "0s")]);
    let url = s.with_collection().await;
    let exp = now_secs() + 6;
    let short = s.forge("RS256", json!({"exp": exp}));
    assert_eq!(status_with(&url, &short).await.0, 200);
    assert_eq!(
        status_with(&url, &short).await.0,
        200,
        "served from the cache"
    );
    // Wait until the token has expired (whole seconds, plus a margin).
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_rejected(&url, &short, "expired").await;
}
