//! `web.root`: a front-end folder served at `/` by a real `arca serve`:
//! `index.html` for client-side routes that accept HTML, precompressed
//! siblings, caching (immutable fingerprinted files, `no-cache` HTML,
//! ETag/304), the security headers, the API/docs/operations routes
//! winning, and no way out of the folder (`..` in every encoding, symbolic
//! links, hidden files, listings).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const INDEX: &str = "<!doctype html><title>App</title><script type=\"module\" src=\"/assets/app-1a2b3c4d.js\"></script>";
const SECRET: &str = "SECRET-OUTSIDE-THE-ROOT";

/// A built front-end in `dir/site`, with a secret beside it (`dir/outside`)
/// that links inside the site point to.
fn site(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("site");
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    };
    write("index.html", INDEX.as_bytes());
    write("about/index.html", b"<!doctype html><title>About</title>");
    write("listing/a-file-name.txt", b"a");
    write("assets/app-1a2b3c4d.js", b"export const plain = true;\n");
    write("assets/app-1a2b3c4d.js.br", b"BROTLI BYTES");
    write("assets/app-1a2b3c4d.js.gz", b"GZIP BYTES");
    write("assets/index-D4-o5Ts2.css", b"body{}");
    write("assets/style.css", b"body{color:red}");
    write(
        "assets/logo.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    );
    write("static/plain.js", b"1;");
    write(".env", SECRET.as_bytes());
    write(".well-known/assetlinks.json", b"[]");
    write("healthz", b"not the route");
    write("openapi.json", b"{\"not\": \"the spec\"}");
    let big: Vec<u8> = (0..(2 << 20) + 17).map(|i: u32| (i % 253) as u8).collect();
    write("media/big.bin", &big);
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), SECRET).expect("secret");
    std::fs::write(dir.join("secret.txt"), SECRET).expect("secret");
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link-out")).expect("link");
    std::os::unix::fs::symlink(&outside, root.join("dir-out")).expect("link");
    std::os::unix::fs::symlink(root.join("assets/logo.svg"), root.join("link-in.svg"))
        .expect("link");
    root
}

fn serve(dir: &TempDir, extra: &[(&str, &str)]) -> Server {
    let root = site(&dir.0);
    let mut env = vec![
        ("ARCA_WEB__ROOT".to_string(), path_str(&root)),
        (
            "ARCA_WEB__IMMUTABLE".to_string(),
            "[\"static\"]".to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Server::start(Opts {
        env,
        ..Opts::default()
    })
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(s.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("GET")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_index_and_client_side_routes_get_index_html() {
    let dir = TempDir::new("web");
    let s = serve(&dir, &[]);
    for path in ["/", "/orders/42", "/deep/link/with.dot"] {
        let r = get(&s, path, &[("accept", BROWSER)]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        assert!(header(&r, "etag").starts_with("W/\""));
        let csp = header(&r, "content-security-policy");
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        assert_eq!(
            header(&r, "referrer-policy"),
            "strict-origin-when-cross-origin"
        );
        assert_eq!(r.text().await.expect("body"), INDEX);
    }
    // Revalidation.
    let tag = header(&get(&s, "/", &[("accept", BROWSER)]).await, "etag");
    let r = get(&s, "/", &[("accept", BROWSER), ("if-none-match", &tag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), tag);
    // Only requests that accept HTML get the fallback: API clients and
    // scripts asking for a missing file get a 404 problem.
    for accept in ["application/json", "*/*", "text/html;q=0"] {
        let r = get(&s, "/orders/42", &[("accept", accept)]).await;
        assert_eq!(
            problem(r, 404).await["type"],
            "urn:arca:problem:route-not-found"
        );
    }
    let r = get(&s, "/assets/missing-1a2b3c4d.js", &[("accept", "*/*")]).await;
    problem(r, 404).await;
    // Other methods are no file's.
    let r = client()
        .post(s.url("/orders/42"))
        .header("accept", BROWSER)
        .send()
        .await
        .expect("POST");
    problem(r, 404).await;
}

#[tokio::test]
async fn assets_come_precompressed_and_fingerprinted_ones_are_immutable() {
    let dir = TempDir::new("web");
    let s = serve(&dir, &[]);
    let path = "/assets/app-1a2b3c4d.js";
    for (accept, body, coding) in [
        ("br, gzip", "BROTLI BYTES", "br"),
        ("gzip;q=1, br;q=0", "GZIP BYTES", "gzip"),
        ("gzip", "GZIP BYTES", "gzip"),
        ("identity", "export const plain = true;\n", ""),
    ] {
        let r = get(&s, path, &[("accept-encoding", accept)]).await;
        assert_eq!(r.status(), 200, "{accept}");
        assert_eq!(header(&r, "content-encoding"), coding, "{accept}");
        assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8");
        assert_eq!(header(&r, "vary"), "accept-encoding");
        assert_eq!(
            header(&r, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.text().await.expect("body"), body, "{accept}");
    }
    // Each coding has its own tag.
    let br = header(&get(&s, path, &[("accept-encoding", "br")]).await, "etag");
    let gz = header(&get(&s, path, &[("accept-encoding", "gzip")]).await, "etag");
    assert_ne!(br, gz);
    let r = get(
        &s,
        path,
        &[("accept-encoding", "br"), ("if-none-match", &br)],
    )
    .await;
    assert_eq!(r.status(), 304);
    for (path, cache) in [
        (
            "/assets/index-D4-o5Ts2.css",
            "public, max-age=31536000, immutable",
        ),
        ("/assets/style.css", "no-cache"),
        ("/static/plain.js", "public, max-age=31536000, immutable"),
        ("/assets/logo.svg", "no-cache"),
        ("/about/", "no-cache"),
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "cache-control"), cache, "{path}");
    }
    let r = get(&s, "/assets/logo.svg", &[]).await;
    assert_eq!(header(&r, "content-type"), "image/svg+xml");
    let r = get(&s, "/.well-known/assetlinks.json", &[]).await;
    assert_eq!(r.status(), 200, ".well-known is served");
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_eq!(r.json::<Value>().await.expect("json"), json!([]));
    let r = get(&s, "/link-in.svg", &[]).await;
    assert_eq!(r.status(), 200, "a link inside the folder is followed");
    // Large files are streamed, whole.
    let r = get(&s, "/media/big.bin", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), ((2 << 20) + 17).to_string());
    let bytes = r.bytes().await.expect("body");
    assert_eq!(bytes.len(), (2 << 20) + 17);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
    // HEAD: the headers, no body.
    let r = client()
        .head(s.url("/assets/style.css"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "15");
    assert!(r.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn api_docs_console_and_operations_routes_win() {
    let dir = TempDir::new("web");
    let s = serve(&dir, &[]);
    let r = get(&s, "/healthz", &[("accept", BROWSER)]).await;
    assert_eq!(r.json::<Value>().await.expect("json")["status"], "ok");
    let r = get(&s, "/openapi.json", &[("accept", BROWSER)]).await;
    assert_eq!(r.json::<Value>().await.expect("json")["openapi"], "3.1.0");
    assert_eq!(
        get(&s, "/docs/", &[("accept", BROWSER)]).await.status(),
        200
    );
    let console = get(&s, "/console/", &[("accept", BROWSER)]).await;
    assert!(header(&console, "content-security-policy").contains("trusted-types"));
    problem(
        get(&s, "/v1/collections", &[("accept", BROWSER)]).await,
        401,
    )
    .await;
    // Unknown paths under the server's own prefixes are never the app's.
    for path in [
        "/v1/nothing",
        "/v1/",
        "/docs/missing.js",
        "/console/missing",
        "/%76%31/x",
    ] {
        let r = get(&s, path, &[("accept", BROWSER)]).await;
        let status = r.status().as_u16();
        assert_eq!(
            header(&r, "content-type"),
            "application/problem+json",
            "{path}"
        );
        let body = r.text().await.expect("body");
        assert!(
            !body.contains("<title>App</title>"),
            "{path}: {status} {body}"
        );
        assert_eq!(status, 404, "{path}");
    }
    // A prefix is a whole segment: `/console-x` is a client-side route.
    let r = get(&s, "/console-x", &[("accept", BROWSER)]).await;
    assert_eq!(r.text().await.expect("body"), INDEX);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("http_requests_total{route=\"web\""),
        "files are counted under route=\"web\""
    );
}

/// A raw request for `target` (the path sent exactly as written: an HTTP
/// client would normalise `..` away).
fn raw(s: &Server, target: &str) -> (u16, String) {
    raw_request(
        &s.addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: {BROWSER}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[tokio::test]
async fn nothing_outside_the_folder_is_ever_served() {
    let dir = TempDir::new("web");
    let s = serve(&dir, &[]);
    for target in [
        "/../secret.txt",
        "/../outside/secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/./../secret.txt",
        "/x%00/../../secret.txt",
    ] {
        let (status, text) = raw(&s, target);
        assert!(!text.contains(SECRET), "{target}: {text}");
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("application/problem+json"), "{target}");
    }
    // Links out of the folder, hidden files: as if absent (a browser gets
    // the app, an API client a 404), never their content.
    for target in [
        "/link-out",
        "/dir-out/secret.txt",
        "/dir-out/",
        "/.env",
        "/%2eenv",
    ] {
        let (status, text) = raw(&s, target);
        assert!(!text.contains(SECRET), "{target}: {text}");
        assert!(
            status == 200 && text.contains("<title>App</title>"),
            "{target}: {text}"
        );
        let r = get(&s, target, &[("accept", "*/*")]).await;
        assert_eq!(r.status(), 404, "{target}");
    }
    // Bad percent-encoding is a clear 400.
    let (status, text) = raw(&s, "/%ff%fe");
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn folders_are_never_listed() {
    let dir = TempDir::new("web");
    let s = serve(&dir, &[]);
    // A folder with an index: redirected to its slash form, then served.
    let r = client()
        .get(s.url("/about"))
        .header("accept", BROWSER)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.url().path(), "/about/", "followed the redirect");
    assert!(
        r.text()
            .await
            .expect("body")
            .contains("<title>About</title>")
    );
    let (status, text) = raw(&s, "/about");
    assert_eq!(status, 308);
    assert!(text.contains("\r\nlocation: about/\r\n"), "{text}");
    // Without one: the app for a browser, 404 otherwise; never the names.
    for path in ["/listing/", "/assets/"] {
        let r = get(&s, path, &[("accept", BROWSER)]).await;
        let body = r.text().await.expect("body");
        assert_eq!(body, INDEX, "{path}");
        let r = get(&s, path, &[("accept", "*/*")]).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.expect("body").contains("a-file-name"));
    }
}

#[tokio::test]
async fn the_policy_is_configurable() {
    let dir = TempDir::new("web");
    let s = serve(
        &dir,
        &[(
            "ARCA_WEB__CSP",
            "default-src 'self'; img-src https://cdn.example.com",
        )],
    );
    let r = get(&s, "/", &[]).await;
    assert_eq!(
        header(&r, "content-security-policy"),
        "default-src 'self'; img-src https://cdn.example.com"
    );
    let dir = TempDir::new("web");
    let s = serve(&dir, &[("ARCA_WEB__CSP", "")]);
    let r = get(&s, "/", &[]).await;
    assert!(r.headers().get("content-security-policy").is_none());
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn without_a_root_nothing_is_served_at_the_root() {
    let s = Server::dev();
    problem(get(&s, "/", &[("accept", BROWSER)]).await, 404).await;
}

#[test]
fn a_root_that_is_not_a_folder_stops_the_start_naming_the_key() {
    let dir = TempDir::new("web");
    let file = dir.0.join("a-file");
    std::fs::write(&file, "x").expect("file");
    for root in [dir.0.join("missing"), file] {
        let out = Command::new(BIN)
            .args(["serve", "--dev"])
            .envs(store_env(&dir.0))
            .env("ARCA_SERVER__LISTEN", "127.0.0.1:0")
            .env("ARCA_WEB__ROOT", &root)
            .env_remove("ARCA_CONFIG")
            .output()
            .expect("arca serve");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("web.root"), "{stderr}");
    }
}
