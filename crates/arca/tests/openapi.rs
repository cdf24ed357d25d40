//! The API description: `/openapi.json` (OpenAPI 3.1, typed per collection,
//! following changes without a restart), the `/docs` page rendered by a
//! real headless Chromium with no outside assets, `docs.public`, and
//! `arca openapi`. (The spec is also checked by openapi-spec-validator and
//! schemathesis in scripts/api-conformance.)

mod common;
use common::*;
use std::process::Command;

async fn spec(s: &Server) -> Value {
    let r = client()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("spec");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

#[tokio::test]
async fn the_spec_is_sent_gzip_when_accepted_with_an_etag_and_both_follow_changes() {
    use std::io::Read;
    let s = Server::dev();
    let t = s.admin();
    let fetch = |encoding: &'static str| {
        let url = s.url("/openapi.json");
        async move {
            let r = client()
                .get(url)
                .header("accept-encoding", encoding)
                .send()
                .await
                .expect("spec");
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["vary"], "accept-encoding");
            let gzipped = r
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v == "gzip");
            let bytes = r.bytes().await.expect("body").to_vec();
            let plain = if gzipped {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .expect("gzip");
                out
            } else {
                bytes
            };
            (
                gzipped,
                serde_json::from_slice::<Value>(&plain).expect("json"),
            )
        }
    };
    let etag = |r: &reqwest::Response| {
        r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .expect("etag")
            .to_owned()
    };
    let conditional = |tag: String| {
        client()
            .get(s.url("/openapi.json"))
            .header("if-none-match", tag)
            .send()
    };
    let mut seen = Vec::new();
    for round in ["before", "after"] {
        // A client holding the current version gets 304, either encoding.
        let first = client()
            .get(s.url("/openapi.json"))
            .send()
            .await
            .expect("spec");
        let tag = etag(&first);
        let zipped_tag = etag(
            &client()
                .get(s.url("/openapi.json"))
                .header("accept-encoding", "gzip")
                .send()
                .await
                .expect("spec"),
        );
        assert_eq!(tag, zipped_tag, "{round}");
        let r = conditional(format!("\"x\", {tag}")).await.expect("304");
        assert_eq!(r.status(), 304, "{round}");
        assert_eq!(etag(&r), tag);
        assert!(r.bytes().await.expect("body").is_empty());
        seen.push(tag);
        let (g1, zipped) = fetch("gzip, br").await;
        let (g2, plain) = fetch("identity").await;
        let (g3, refused) = fetch("gzip;q=0, *;q=0.1").await;
        assert!(g1 && !g2 && !g3, "{round}: {g1} {g2} {g3}");
        assert_eq!(zipped, plain, "{round}");
        assert_eq!(refused, plain, "{round}");
        let has = plain["components"]["schemas"]["NotesDocument"].is_object();
        assert_eq!(has, round == "after", "{round}");
        define(&s, &t, "notes", json!({})).await;
    }
    // A change of collections is a new version: the old tag gets 200.
    assert_ne!(seen[0], seen[1]);
    let r = conditional(seen[0].clone()).await.expect("stale");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn public_docs_ignore_an_authorization_header() {
    let s = Server::dev();
    for path in ["/openapi.json", "/docs/", "/healthz", "/readyz", "/metrics"] {
        let r = s.get(path, "expired-or-garbage").await;
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn the_spec_is_openapi_3_1_and_describes_every_route() {
    let s = Server::dev();
    let doc = spec(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/types.ts", "get"),
        ("/v1/collections", "get"),
        ("/v1/collections/{name}", "put"),
        ("/v1/collections/{name}", "get"),
        ("/v1/collections/{name}", "delete"),
        ("/v1/collections/{name}/documents", "get"),
        ("/v1/collections/{name}/documents", "post"),
        ("/v1/collections/{name}/documents/{id}", "get"),
        ("/v1/collections/{name}/documents/{id}", "put"),
        ("/v1/collections/{name}/documents/{id}", "patch"),
        ("/v1/collections/{name}/documents/{id}", "delete"),
        ("/v1/collections/{name}/count", "get"),
        ("/v1/collections/{name}/access/explain", "post"),
        ("/v1/files", "post"),
        ("/v1/files", "get"),
        ("/v1/files/{id}", "get"),
        ("/v1/files/{id}", "delete"),
        ("/v1/files/{id}/metadata", "get"),
        ("/v1/files/{id}/thumbnail", "get"),
        ("/v1/files/{id}/links", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    // Files: binary bodies both ways, ranges, links.
    let upload = &doc["paths"]["/v1/files"]["post"];
    assert!(
        upload["requestBody"]["content"]["multipart/form-data"].is_object(),
        "{upload}"
    );
    assert!(
        upload["requestBody"]["content"]["application/octet-stream"].is_object(),
        "{upload}"
    );
    assert!(upload["responses"]["413"].is_object() && upload["responses"]["422"].is_object());
    let download = &doc["paths"]["/v1/files/{id}"]["get"];
    for code in ["200", "206", "304", "404", "416"] {
        assert!(download["responses"][code].is_object(), "download {code}");
    }
    assert!(download["responses"]["206"]["headers"]["Content-Range"].is_object());
    let link = &doc["paths"]["/v1/files/{id}/links"]["post"]["responses"]["201"];
    assert_eq!(
        link["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/LinkOutput"
    );
    let problem = &doc["components"]["schemas"]["Problem"];
    assert!(
        problem["properties"]["type"].is_object() && problem["example"].is_object(),
        "{problem}"
    );
    let create = &doc["paths"]["/v1/collections/{name}/documents"]["post"]["responses"];
    for code in [
        "201", "400", "401", "403", "404", "408", "409", "413", "415", "422",
    ] {
        assert!(create[code].is_object(), "create documents {code}");
    }
    assert_eq!(
        create["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    // Dev mode: HTTP bearer only.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["securitySchemes"]["oidc"].is_null());
}

#[tokio::test]
async fn collections_get_typed_schemas_and_paths_that_follow_changes() {
    let s = Server::dev();
    let t = s.admin();
    let orders = json!({"schema": {"type": "object", "properties": {"item": {"type": "string"}, "qty": {"type": "integer"}},
                                    "required": ["item"], "additionalProperties": false}});
    define(&s, &t, "order_lines", orders).await;
    let doc = spec(&s).await;
    let schema = &doc["components"]["schemas"]["OrderLinesDocument"];
    assert_eq!(schema["properties"]["item"], json!({"type": "string"}));
    assert_eq!(schema["properties"]["_rev"]["readOnly"], true);
    assert!(
        schema["required"]
            .as_array()
            .expect("required")
            .contains(&json!("_id"))
    );
    let post = &doc["paths"]["/v1/collections/order_lines/documents"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderLinesInput"
    );
    assert_eq!(
        post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderLinesDocument"
    );
    assert!(doc["paths"]["/v1/collections/order_lines/documents/{id}"]["patch"]["requestBody"]["content"]["application/merge-patch+json"].is_object());
    // A change shows at once, without a restart.
    define(
        &s,
        &t,
        "order_lines",
        json!({"schema": {"type": "object", "properties": {"sku": {"type": "string"}}}}),
    )
    .await;
    let doc = spec(&s).await;
    let props = &doc["components"]["schemas"]["OrderLinesDocument"]["properties"];
    assert!(
        props["sku"].is_object() && props["item"].is_null(),
        "{props}"
    );
    let r = s.delete("/v1/collections/order_lines", &t).await;
    assert_eq!(r.status(), 204);
    let doc = spec(&s).await;
    assert!(doc["paths"]["/v1/collections/order_lines/documents"].is_null());
    assert!(doc["components"]["schemas"]["OrderLinesDocument"].is_null());
}

#[tokio::test]
async fn with_an_issuer_the_security_scheme_is_openid_connect() {
    // The IdP need not be up: the spec only names it.
    let port = free_port();
    let s = Server::start(Opts {
        dev: false,
        env: vec![(
            "ARCA_AUTH__ISSUER".into(),
            format!("http://127.0.0.1:{port}/realms/x"),
        )],
        wait_ready: false,
        ..Opts::default()
    });
    let doc = spec(&s).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["oidc"],
        json!({"type": "openIdConnect", "openIdConnectUrl": format!("http://127.0.0.1:{port}/realms/x/.well-known/openid-configuration")})
    );
    assert_eq!(
        doc["paths"]["/v1/collections"]["get"]["security"][0],
        json!({"oidc": []})
    );
}

#[tokio::test]
async fn the_docs_page_loads_only_its_own_assets() {
    let s = Server::dev();
    let html = String::from_utf8(docs_asset(&s, "").await).expect("html");
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap_or_default().to_owned());
        }
    }
    assert!(refs.len() >= 3, "{html}");
    for r in &refs {
        assert!(
            !r.starts_with("http") && !r.starts_with("//"),
            "external asset {r}"
        );
        let asset = docs_asset(&s, r.trim_start_matches("./")).await;
        assert!(!asset.is_empty(), "{r}");
    }
    // The initializer names this server's spec.
    let init = String::from_utf8(docs_asset(&s, "swagger-initializer.js").await).expect("js");
    assert!(init.contains("/openapi.json"), "{init}");
}

#[tokio::test]
async fn docs_assets_are_plain_for_clients_that_do_not_accept_gzip() {
    let s = Server::dev();
    let gzipped = docs_asset(&s, "swagger-ui-bundle.js").await;
    for accept in [None, Some("identity"), Some("br, gzip;q=0")] {
        let mut req = client().get(s.url("/docs/swagger-ui-bundle.js"));
        if let Some(accept) = accept {
            req = req.header("accept-encoding", accept);
        }
        let r = req.send().await.expect("asset");
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("content-encoding").is_none(), "{accept:?}");
        assert_eq!(r.headers()["vary"], "accept-encoding");
        let plain = r.bytes().await.expect("body");
        assert_eq!(plain, gzipped, "{accept:?}: the same asset, decompressed");
    }
}

/// A `/docs/` asset as a browser gets it: 200 and gzip-encoded (the
/// bundled assets were compressed when the binary was built; the
/// initializer, which holds this server's configuration, by the
/// compression layer).
async fn docs_asset(s: &Server, name: &str) -> Vec<u8> {
    use std::io::Read;
    let r = client()
        .get(s.url(&format!("/docs/{name}")))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .expect("asset");
    assert_eq!(r.status(), 200, "/docs/{name}");
    let gzipped = r
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    assert!(gzipped, "/docs/{name} was not gzip-encoded");
    let bytes = r.bytes().await.expect("body").to_vec();
    if !gzipped {
        return bytes;
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut plain)
        .expect("gzip");
    plain
}

#[test]
fn the_docs_page_renders_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let version = Command::new(&chromium).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "Chromium is needed for this test (scripts/test installs Debian's chromium)"
    );
    let s = Server::dev();
    let profile = TempDir::new("chromium");
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(s.url("/docs/"))
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    // Swagger UI fetched /openapi.json and rendered it: the title and the
    // operations are in the DOM, which only happens once its scripts ran.
    assert!(
        dom.contains("class=\"title\">Arca"),
        "title not rendered: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(
        dom.contains("data-path=\"/v1/collections/{name}/documents\""),
        "operations not rendered"
    );
}

#[tokio::test]
async fn with_docs_not_public_the_spec_needs_a_token_and_the_page_is_off() {
    let s = Server::start(Opts {
        env: vec![("ARCA_DOCS__PUBLIC".into(), "false".into())],
        ..Opts::default()
    });
    problem(
        client()
            .get(s.url("/openapi.json"))
            .send()
            .await
            .expect("spec"),
        401,
    )
    .await;
    let t = s.token("reader", &[], None);
    assert_eq!(s.get("/openapi.json", &t).await.status(), 200);
    problem(s.get("/openapi.json", "not-a-token").await, 401).await;
    assert_eq!(
        client()
            .get(s.url("/docs/"))
            .send()
            .await
            .expect("docs")
            .status(),
        404
    );
}

#[tokio::test]
async fn arca_openapi_prints_the_spec_of_the_configured_store() {
    let data = std::sync::Arc::new(TempDir::new("openapi-cli"));
    {
        let s = Server::start(Opts {
            data: Some(data.clone()),
            ..Opts::default()
        });
        define(
            &s,
            &s.admin(),
            "invoices",
            json!({"schema": {"type": "object", "properties": {"total": {"type": "number"}}}}),
        )
        .await;
    }
    let out = Command::new(BIN)
        .arg("openapi")
        .envs(common::store_env(&data.0))
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("arca openapi");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["schemas"]["InvoicesDocument"]["properties"]["total"],
        json!({"type": "number"})
    );
}
