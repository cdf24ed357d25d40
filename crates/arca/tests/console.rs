//! The web console (`/console`): its headers and policy, `console.enabled`,
//! `/console/config.json`, the `--dev` link, and the console itself driven
//! end to end in headless Chromium by `tests/console/e2e.py` (Playwright
//! for Python in the venv `scripts/test` makes, Debian's Chromium) against
//! the real binary, signing in with tokens and through the OIDC provider
//! fixture, and a shorter walk in Firefox (`tests/console/firefox/`,
//! puppeteer-core over WebDriver BiDi, Debian's Firefox ESR).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The policy of every console response, in dev mode (no issuer to reach).
const DEV_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

/// Every file of the console and the type it is served with.
const FILES: &[(&str, &str)] = &[
    ("/console/", "text/html; charset=utf-8"),
    ("/console/index.html", "text/html; charset=utf-8"),
    ("/console/console.css", "text/css; charset=utf-8"),
    ("/console/icon.svg", "image/svg+xml"),
    ("/console/js/main.js", "text/javascript; charset=utf-8"),
    (
        "/console/js/pages/documents.js",
        "text/javascript; charset=utf-8",
    ),
    ("/console/config.json", "application/json"),
];

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn assert_security_headers(r: &reqwest::Response, csp: &str, what: &str) {
    assert_eq!(header(r, "content-security-policy"), csp, "{what}");
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header(r, "x-frame-options"), "DENY", "{what}");
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy() {
    let s = Server::dev();
    let c = client();
    for (path, content_type) in FILES {
        let r = c.get(s.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), *content_type, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        assert_security_headers(&r, DEV_CSP, path);
        let etag = header(&r, "etag").to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{path}: a strong ETag, got {etag:?}"
        );
        assert!(!r.bytes().await.expect("body").is_empty(), "{path}");
        // Revalidation: the same tag gives 304 with no body.
        let again = c
            .get(s.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("revalidate");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(header(&again, "etag"), etag, "{path}");
        assert_security_headers(&again, DEV_CSP, path);
    }

    // gzip for those who accept it, identical bytes once decoded.
    let plain = c
        .get(s.url("/console/js/main.js"))
        .send()
        .await
        .expect("plain");
    assert_eq!(header(&plain, "content-encoding"), "");
    assert_eq!(header(&plain, "vary"), "accept-encoding");
    let plain = plain.bytes().await.expect("body");
    let gz = c
        .get(s.url("/console/js/main.js"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("gzip");
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    let gz = gz.bytes().await.expect("body");
    assert!(gz.len() < plain.len());
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, plain);

    // /console sends the browser to /console/ (relative, so a proxy prefix
    // is kept), which the page's relative links need.
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirects
        .get(s.url("/console"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 308);
    assert_eq!(header(&r, "location"), "console/");
    assert_security_headers(&r, DEV_CSP, "/console");

    // Public: no token needed, and a bad one is not even looked at.
    let r = c
        .get(s.url("/console/"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);

    // An unknown file is a 404 problem, still under the policy.
    let r = c
        .get(s.url("/console/js/nope.js"))
        .send()
        .await
        .expect("get");
    assert_security_headers(&r, DEV_CSP, "404");
    problem(r, 404).await;
    // Only the embedded files answer: no path reaches anything else
    // (sent raw, as a client that does not normalise paths would).
    for path in [
        "/console/../openapi.json",
        "/console/%2e%2e/Cargo.toml",
        "/console/js/../../README.md",
    ] {
        let (status, raw) = raw_request(
            &s.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 404, "{path}: {raw}");
        assert!(
            raw.contains("urn:arca:problem:route-not-found"),
            "{path}: {raw}"
        );
    }

    // A page, not an API: the OpenAPI document does not list it.
    let doc: Value = c
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| !p.starts_with("/console")));
}

#[tokio::test]
async fn console_enabled_false_turns_it_off() {
    let s = Server::start(Opts {
        env: vec![("ARCA_CONSOLE__ENABLED".into(), "false".into())],
        ..Opts::default()
    });
    let c = client();
    for path in [
        "/console",
        "/console/",
        "/console/config.json",
        "/console/js/main.js",
    ] {
        let r = c.get(s.url(path)).send().await.expect("get");
        assert_eq!(header(&r, "content-security-policy"), "", "{path}");
        problem(r, 404).await;
    }
    // The rest of the server is unaffected, and the banner links no console.
    assert_eq!(s.get("/v1/collections", &s.admin()).await.status(), 200);
    let lines = s.log_lines();
    assert!(lines.iter().any(|l| l.starts_with("ARCA_TOKEN=")));
    assert!(!lines.iter().any(|l| l.contains("/console")), "{lines:?}");
}

#[test]
fn arca_config_shows_the_console_section() {
    let out = Command::new(BIN)
        .arg("config")
        .env_remove("ARCA_CONFIG")
        .env("ARCA_AUTH__ISSUER", "https://login.example.com/t/v2.0")
        .env("ARCA_CONSOLE__CLIENT_ID", "arca-console")
        .output()
        .expect("arca config");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "[console]\nenabled = true\nclient_id = \"arca-console\"\nscope = \"openid\"\n"
        ),
        "{text}"
    );
    let out = Command::new(BIN)
        .arg("config")
        .env_remove("ARCA_CONFIG")
        .env("ARCA_CONSOLE__CLIENT_ID", "arca-console")
        .output()
        .expect("arca config");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`console.client_id`: needs auth.issuer"),
        "the error names the key"
    );
}

/// The keys `/console/config.json` may have, at every depth: anything
/// else could be a setting that was never meant to leave the server.
fn assert_only_public_keys(v: &Value) {
    let allowed = [
        "version",
        "dev",
        "oidc",
        "issuer",
        "client_id",
        "scope",
        "claims",
        "roles",
        "tenant",
        "admin",
        "schema_admin",
        "features",
        "files",
        "events",
    ];
    if let Some(m) = v.as_object() {
        for (k, inner) in m {
            assert!(allowed.contains(&k.as_str()), "unexpected key {k}: {v}");
            assert_only_public_keys(inner);
        }
    }
}

#[tokio::test]
async fn the_console_config_holds_no_secret() {
    let s = Server::dev();
    let text = client()
        .get(s.url("/console/config.json"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["dev"], true);
    assert_eq!(
        v["oidc"],
        Value::Null,
        "dev mode signs in with dev tokens only"
    );
    assert_eq!(v["claims"], json!({"roles": "roles", "tenant": "tid"}));
    assert_eq!(v["features"], json!({"files": true, "events": true}));
    assert_only_public_keys(&v);
    // The dev signing key (DER), in any encoding it could leak in.
    use base64::Engine;
    let key = std::fs::read(s.data.0.join("dev-signing-key.p8")).expect("dev key");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let token = s
        .log_lines()
        .iter()
        .find_map(|l| l.strip_prefix("ARCA_TOKEN=").map(str::to_owned))
        .expect("the dev token");
    for secret in [
        base64::engine::general_purpose::STANDARD.encode(&key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
        hex,
        token,
        "PRIVATE".into(),
        "eyJ".into(),
    ] {
        assert!(!text.contains(&secret), "config.json holds {secret}");
    }
    assert!(!text.contains(&s.data.0.display().to_string()), "no paths");
}

#[tokio::test]
async fn with_an_issuer_and_a_client_id_the_console_signs_in_there() {
    // No IdP runs: the server starts anyway (not ready), and the console's
    // routes do not need one.
    let s = Server::start(Opts {
        dev: false,
        wait_ready: false,
        env: vec![
            (
                "ARCA_AUTH__ISSUER".into(),
                "http://127.0.0.1:9/realms/Arca".into(),
            ),
            ("ARCA_CONSOLE__CLIENT_ID".into(), "arca-console".into()),
            (
                "ARCA_CONSOLE__SCOPE".into(),
                "openid api://arca/access".into(),
            ),
            ("ARCA_AUTH__ROLES_CLAIM".into(), "realm_access.roles".into()),
        ],
        ..Opts::default()
    });
    let r = client()
        .get(s.url("/console/config.json"))
        .send()
        .await
        .expect("get");
    let csp = header(&r, "content-security-policy").to_owned();
    assert!(
        csp.contains("connect-src 'self' http://127.0.0.1:9;"),
        "the issuer's origin, for discovery and the token exchange: {csp}"
    );
    assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["oidc"],
        json!({"issuer": "http://127.0.0.1:9/realms/Arca", "client_id": "arca-console",
               "scope": "openid api://arca/access"})
    );
    assert_eq!(v["dev"], false);
    assert_eq!(v["claims"]["roles"], "realm_access.roles");
    assert_only_public_keys(&v);
}

#[test]
fn the_dev_banner_links_the_console_with_the_token_in_the_fragment() {
    let s = Server::dev();
    let lines = s.log_lines();
    let token = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARCA_TOKEN="))
        .expect("the dev token");
    let prefix = format!(
        "console (signs in as dev-admin): http://{}/console/#token=",
        s.addr
    );
    let link_token = lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no console link in {lines:?}"));
    assert_eq!(link_token, token);
}

/// The Python with Playwright that `scripts/test` installs.
fn playwright_python() -> PathBuf {
    let python = std::env::var("ARCA_TEST_CONSOLE_PYTHON").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".cache/arca/console-venv/bin/python")
        },
        PathBuf::from,
    );
    let ok = Command::new(&python)
        .args(["-c", "import playwright"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "Playwright for Python is needed at {} (set ARCA_TEST_CONSOLE_PYTHON): ./scripts/test installs it",
        python.display()
    );
    python
}

fn e2e_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/console/e2e.py")
}

/// Runs the end-to-end script; its step lines go to the test's output.
fn run_e2e(cmd: &mut Command) {
    let out = cmd.output().expect("run tests/console/e2e.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the console's end-to-end run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console e2e: all steps passed"), "{stdout}");
}

#[test]
fn the_console_works_end_to_end_in_chromium() {
    let python = playwright_python();
    let s = Server::dev();
    let token = s
        .log_lines()
        .iter()
        .find_map(|l| l.strip_prefix("ARCA_TOKEN=").map(str::to_owned))
        .expect("the dev token");
    let mut cmd = Command::new(python);
    cmd.arg(e2e_script())
        .args(["dev", "--base", &s.base, "--token", &token, "--arca", BIN])
        .env_remove("ARCA_CONFIG")
        // `arca token` in the script mints with this server's dev key.
        .envs(s.env.iter().cloned());
    if let Ok(dir) = std::env::var("ARCA_CONSOLE_SCREENSHOTS") {
        cmd.args(["--screenshots", &dir]);
    }
    run_e2e(&mut cmd);
}

#[test]
fn the_console_signs_in_through_the_identity_provider() {
    let python = playwright_python();
    let idp = Idp::start_any(&[]);
    let s = Server::start(Opts {
        dev: false,
        env: vec![
            ("ARCA_AUTH__ISSUER".into(), idp.issuer.clone()),
            ("ARCA_AUTH__AUDIENCE".into(), "api://arca".into()),
            ("ARCA_CONSOLE__CLIENT_ID".into(), "arca-console".into()),
        ],
        ..Opts::default()
    });
    run_e2e(Command::new(python).arg(e2e_script()).args([
        "oidc",
        "--base",
        &s.base,
        "--issuer",
        &idp.issuer,
    ]));
}

/// Where `scripts/test` installed puppeteer-core for the Firefox run.
fn firefox_driver_dir() -> PathBuf {
    let dir = std::env::var("ARCA_TEST_CONSOLE_FIREFOX_DIR").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".cache/arca/console-firefox")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is needed in {} (set ARCA_TEST_CONSOLE_FIREFOX_DIR): ./scripts/test installs it",
        dir.display()
    );
    dir
}

#[test]
fn the_console_works_in_firefox() {
    let installed = firefox_driver_dir();
    let s = Server::dev();
    let token = s
        .log_lines()
        .iter()
        .find_map(|l| l.strip_prefix("ARCA_TOKEN=").map(str::to_owned))
        .expect("the dev token");
    // The repository's script, beside the installed packages (ES modules
    // resolve `puppeteer-core` from the script's own folder).
    let run = TempDir::new("console-firefox");
    std::os::unix::fs::symlink(installed.join("node_modules"), run.0.join("node_modules"))
        .expect("link node_modules");
    let script = run.0.join("smoke.mjs");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/console/firefox/smoke.mjs"),
        &script,
    )
    .expect("copy smoke.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args(["--base", &s.base, "--token", &token])
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("console firefox: all steps passed"),
        "the console's Firefox run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
