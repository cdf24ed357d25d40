//! Black-box tests of the foundation: request ids, body limits, problem+json
//! for unknown routes and methods, metrics, configuration errors, dev mode
//! and graceful shutdown. Each starts the real binary on a random port.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn safe_request_id_is_echoed() {
    let s = Server::dev();
    let r = client()
        .get(s.url("/healthz"))
        .header("x-request-id", "abc.DEF_123-x")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-request-id"], "abc.DEF_123-x");
}

#[tokio::test]
async fn unsafe_or_long_request_id_is_replaced() {
    let s = Server::dev();
    for bad in ["has space", "semi;colon", &"a".repeat(129)] {
        let r = client()
            .get(s.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .expect("get");
        let id = r.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "generated ids are 32 hex digits");
    }
    let r = client().get(s.url("/healthz")).send().await.expect("get");
    assert!(
        r.headers().contains_key("x-request-id"),
        "a generated id is always present"
    );
}

#[tokio::test]
async fn oversized_json_body_is_413() {
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__MAX_BODY_BYTES".into(), "1000".into())],
        ..Opts::default()
    });
    let t = s.admin();
    define(
        &s,
        &t,
        "notes",
        json!({"access": {"create": {"roles": ["*"]}}}),
    )
    .await;
    let big = serde_json::to_string(&json!({"text": "x".repeat(2000)})).expect("json");
    let r = client()
        .post(s.url("/v1/collections/notes/documents"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    problem(r, 413).await;
    // Chunked, so there is no Content-Length to check up front.
    let mut req = format!(
        "POST /v1/collections/notes/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in big.as_bytes().chunks(300) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    req.push_str("0\r\n\r\n");
    let (status, text) = raw_request(&s.addr, req.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("application/problem+json"));
    // The definition route has the same limit.
    let r = client()
        .put(s.url("/v1/collections/other"))
        .bearer_auth(&t)
        .json(&json!({"schema": {"type": "object", "description": "y".repeat(2000)}}))
        .send()
        .await
        .expect("put");
    problem(r, 413).await;
}

#[tokio::test]
async fn compressed_bodies_are_415_and_a_byte_order_mark_is_ignored() {
    let s = Server::dev();
    let t = s.admin();
    let put = |ce: Option<&'static str>, body: Vec<u8>| {
        let mut req = client()
            .put(s.url("/v1/collections/things"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body);
        if let Some(ce) = ce {
            req = req.header("content-encoding", ce);
        }
        req.send()
    };
    // A body labelled as compressed is refused, not read as plain JSON
    // (this one is plain JSON, which the server used to accept).
    for ce in ["gzip", "br", "identity, deflate"] {
        let r = put(Some(ce), b"{}".to_vec()).await.expect("put");
        assert_eq!(r.headers()["accept-encoding"], "identity", "{ce}");
        let body = problem(r, 415).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("Content-Encoding"), "{detail}");
        assert!(
            detail.contains(ce.trim_start_matches("identity, ")),
            "{detail}"
        );
    }
    problem(s.get("/v1/collections/things", &t).await, 404).await;
    // `identity` is no coding at all.
    let r = put(Some("identity"), b"{}".to_vec()).await.expect("put");
    assert_eq!(r.status(), 201);
    // RFC 8259 lets a parser ignore a leading UTF-8 byte order mark.
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(br#"{"schema": {"type": "object", "title": "bom"}}"#);
    let r = put(None, with_bom).await.expect("put");
    assert_eq!(r.status(), 200);
    let def: Value = s.get_json("/v1/collections/things", &t).await;
    assert_eq!(def["schema"]["title"], "bom");
    // Only at the start: a BOM elsewhere is not JSON.
    let r = put(None, b"{\xEF\xBB\xBF}".to_vec()).await.expect("put");
    problem(r, 400).await;
}

#[tokio::test]
async fn non_json_content_type_is_415_and_bad_json_is_400() {
    let s = Server::dev();
    let t = s.admin();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = client()
            .put(s.url("/v1/collections/things"))
            .bearer_auth(&t)
            .body("{}");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        problem(req.send().await.expect("put"), 415).await;
    }
    for ct in ["application/json; charset=utf-8", "application/schema+json"] {
        let r = client()
            .put(s.url("/v1/collections/things"))
            .bearer_auth(&t)
            .header("content-type", ct)
            .body("{}")
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success(), "{ct}: {}", r.status());
    }
    let r = client()
        .put(s.url("/v1/collections/things"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{\"schema\": ")
        .send()
        .await
        .expect("put");
    let body = problem(r, 400).await;
    assert_eq!(body["type"], "urn:arca:problem:malformed-json");
    assert_eq!(
        body["detail"],
        "malformed JSON at line 1, column 11: EOF while parsing a value"
    );
    // Nesting past serde_json's depth limit is a 400 that says so (and no
    // stack overflow).
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = client()
        .put(s.url("/v1/collections/things"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(format!("{{\"schema\": {deep}}}"))
        .send()
        .await
        .expect("put");
    let body = problem(r, 400).await;
    assert_eq!(body["type"], "urn:arca:problem:malformed-json");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.ends_with(": recursion limit exceeded"), "{detail}");
}

#[tokio::test]
async fn unknown_route_is_404_problem_and_wrong_method_is_405_with_allow() {
    let s = Server::dev();
    let body = problem(
        client()
            .get(s.url("/no/such/route"))
            .send()
            .await
            .expect("get"),
        404,
    )
    .await;
    assert_eq!(body["type"], "urn:arca:problem:route-not-found");
    let r = client()
        .delete(s.url("/healthz"))
        .send()
        .await
        .expect("delete");
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET"), "Allow: {allow}");
    let body = problem(r, 405).await;
    assert_eq!(body["type"], "urn:arca:problem:method-not-allowed");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "items",
        json!({"access": {"read": {"roles": ["*"]}}}),
    )
    .await;
    let metric = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("http_requests_total{")
                    && l.contains("route=\"/v1/collections/{name}/documents/{id}\"")
                    && l.contains("status=\"404\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = metric(&s.metrics().await);
    for id in ["a", "b", "c"] {
        let r = client()
            .get(s.url(&format!("/v1/collections/items/documents/{id}")))
            .bearer_auth(&t)
            .send()
            .await;
        assert_eq!(r.expect("get").status(), 404);
    }
    let text = s.metrics().await;
    assert_eq!(metric(&text), before + 3, "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "latency histogram present"
    );
    assert!(
        text.contains("store_operation_duration_seconds"),
        "store latency present"
    );
    // A client-chosen method never becomes a label value (each would be
    // a new series kept forever): it is counted as `other`.
    let method = reqwest::Method::from_bytes(b"FROBNICATE").expect("method");
    let r = client()
        .request(method, s.url("/healthz"))
        .send()
        .await
        .expect("odd method");
    assert_eq!(r.status(), 405);
    let text = s.metrics().await;
    assert!(!text.contains("FROBNICATE"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains("method=\"other\"")
            && l.contains("status=\"405\"")),
        "{text}"
    );
}

/// Every store operation is timed (one wrapper around the engine), the
/// writes that replace and delete included.
#[tokio::test]
async fn every_store_operation_is_measured() {
    let s = Server::dev();
    let t = s.admin();
    define(
        &s,
        &t,
        "ops",
        json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]},
                          "update": {"roles": ["*"]}, "delete": {"roles": ["*"]}}}),
    )
    .await;
    let base = "/v1/collections/ops/documents";
    let r = client()
        .post(s.url(base))
        .bearer_auth(&t)
        .json(&json!({"_id": "d", "n": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201);
    assert_eq!(s.get(&format!("{base}/d"), &t).await.status(), 200);
    let r = client()
        .put(s.url(&format!("{base}/d")))
        .bearer_auth(&t)
        .json(&json!({"n": 2}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 200);
    assert_eq!(s.get(base, &t).await.status(), 200);
    assert_eq!(s.get("/v1/collections/ops/count", &t).await.status(), 200);
    assert_eq!(s.delete(&format!("{base}/d"), &t).await.status(), 204);
    assert_eq!(s.delete("/v1/collections/ops", &t).await.status(), 204);
    assert_eq!(s.get("/readyz", &t).await.status(), 200);
    let text = s.metrics().await;
    for op in [
        "ping",
        "catalog_generation",
        "collections",
        "put_collection",
        "delete_collection",
        "insert",
        "get",
        "replace",
        "delete",
        "find",
        "count",
    ] {
        let series = format!("store_operation_duration_seconds_count{{op=\"{op}\"}}");
        let n: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{op} is not measured: {text}");
    }
}

#[tokio::test]
async fn operations_endpoints_ignore_authorization() {
    let s = Server::dev();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client()
            .get(s.url(path))
            .header("authorization", "Bearer garbage")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
    }
}

fn run_arca(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("ARCA_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run arca")
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let out = run_arca(
        &["serve", "--dev"],
        &[("ARCA_SERVER__LISTEN", "not-an-address")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("ARCA_SERVER__LISTEN"),
        "{err}"
    );

    let out = run_arca(
        &["serve", "--dev"],
        &[("ARCA_SERVER__REQUEST_TIMEOUT", "30")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.request_timeout"));

    let dir = TempDir::new("cfg");
    let file = dir.0.join("arca.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_byte = 10\n",
    )
    .expect("write");
    let out = run_arca(&["--config", &path_str(&file), "serve", "--dev"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_body_byte"), "{err}");
}

/// The YAML block scalar after the first line containing `marker` at or
/// after `from`: the lines indented deeper than that line, dedented.
fn block_after(text: &str, from: &str, marker: &str) -> String {
    let start = text.find(from).expect("section");
    let rest = &text[start..];
    let at = rest.find(marker).expect("marker");
    let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent = |l: &str| l.len() - l.trim_start().len();
    let base = indent(&rest[line_start..]);
    let lines: Vec<&str> = rest[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .collect();
    let cut = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(cut..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_arca_toml_shipped_in_the_kubernetes_manifests_loads() {
    // The manifests ship arca.toml through kustomize configMapGenerators
    // (a change renames the ConfigMap and rolls the pods): the base's file,
    // and dev's own, which replaces it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("manifest");
    for (kustomization, generator) in [
        ("deploy/k8s/base/kustomization.yaml", "- name: arca-config"),
        (
            "deploy/k8s/overlays/dev/kustomization.yaml",
            "- name: arca-config",
        ),
    ] {
        let files = block_after(&read(kustomization), generator, "files:");
        assert_eq!(files.trim(), "- arca.toml", "{kustomization}: {files}");
    }
    let shipped = [
        ("base", read("deploy/k8s/base/arca.toml")),
        ("dev overlay", read("deploy/k8s/overlays/dev/arca.toml")),
    ];
    let dir = TempDir::new("k8s-cfg");
    for (name, toml) in shipped {
        assert!(toml.contains("[server]"), "{name}: {toml}");
        let file = dir.0.join("arca.toml");
        std::fs::write(&file, &toml).expect("write");
        let out = run_arca(&["--config", &path_str(&file), "config"], &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let effective = String::from_utf8_lossy(&out.stdout);
        assert!(
            effective.contains("listen = \"0.0.0.0:8080\""),
            "{name}: {effective}"
        );
        // /metrics has its own listener, off the API port the gateway routes.
        assert!(
            effective.contains("listen = \"0.0.0.0:9090\""),
            "{name}: {effective}"
        );
    }
}

#[test]
fn serve_without_issuer_or_dev_says_what_to_configure() {
    let dir = TempDir::new("noiss");
    let url = format!("sqlite://{}/a.db", dir.0.display());
    let out = run_arca(
        &["serve"],
        &[
            ("ARCA_STORE__URL", &url),
            ("ARCA_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.issuer") && err.contains("--dev"),
        "{err}"
    );
}

#[test]
fn dev_mode_refuses_a_public_address_unless_allowed() {
    let dir = TempDir::new("devremote");
    let url = format!("sqlite://{}/a.db", dir.0.display());
    let out = run_arca(
        &["serve", "--dev"],
        &[
            ("ARCA_STORE__URL", &url),
            ("ARCA_SERVER__LISTEN", "0.0.0.0:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev-allow-remote"));
}

#[test]
fn config_command_prints_effective_config_with_secrets_redacted() {
    let out = run_arca(
        &["config"],
        &[
            ("ARCA_STORE__URL", "sqlite://./x.db"),
            ("ARCA_AUTH__ISSUER", "https://idp.example.com"),
            ("ARCA_SERVER__MAX_BODY_BYTES", "4096"),
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_body_bytes = 4096"), "{text}");
    assert!(
        text.contains("issuer = \"https://idp.example.com\""),
        "{text}"
    );
    let out = run_arca(
        &["config"],
        &[("ARCA_STORE__URL", "sqlite://user:hunter2@x/y.db")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
}

#[tokio::test]
async fn dev_mode_prints_a_working_admin_token() {
    let s = Server::dev();
    let line = s
        .log_lines()
        .into_iter()
        .find(|l| l.starts_with("ARCA_TOKEN="))
        .expect("token line");
    let token = line.trim_start_matches("ARCA_TOKEN=");
    let r = s.get("/v1/collections", token).await;
    assert_eq!(r.status(), 200);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = s.data.0.join("dev-signing-key.p8");
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn logs_are_json_lines_with_request_id_and_route() {
    let s = Server::dev();
    let r = client()
        .get(s.url("/healthz"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let line = s
        .log_lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["message"] == "request completed" && v["span"]["request_id"] == "trace-me-1")
        .expect("a request log line with the request id");
    assert_eq!(line["span"]["route"], "/healthz");
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].is_number());
}

/// Reads until the server closes `c` (end of stream or reset), for at most
/// `within`; returns what was read and when the close came, or `None` if the
/// connection was still open at the end.
fn wait_closed(c: &mut std::net::TcpStream, within: Duration) -> Option<(Vec<u8>, Duration)> {
    use std::io::{ErrorKind, Read};
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match c.read(&mut buf) {
            Ok(0) => return Some((got, start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((got, start.elapsed())),
        }
    }
    None
}

/// A minimal HTTP/2 client (prior knowledge, cleartext) on a raw socket:
/// enough to send GETs, answer the server's SETTINGS and PINGs as any
/// client library does, and see its GOAWAY, which none of the clients
/// here exposes.
struct H2 {
    s: std::net::TcpStream,
    next_stream: u32,
}

/// HTTP/2 frame types used here.
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;

impl H2 {
    fn connect(addr: &str) -> Self {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        let mut c = Self { s, next_stream: 1 };
        c.frame(H2_SETTINGS, 0, 0, &[]);
        c
    }

    fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        use std::io::Write;
        let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).expect("frame");
    }

    /// Sends `GET path` and returns its stream.
    fn get(&mut self, path: &str) -> u32 {
        self.request("GET", path, &[], true)
    }

    /// Sends a request's headers (HPACK literals with indexed names, never
    /// indexed: `(static table index, value)`), ending the stream unless a
    /// body follows; returns the stream.
    fn request(&mut self, method: &str, path: &str, headers: &[(usize, &str)], end: bool) -> u32 {
        fn literal(block: &mut Vec<u8>, index: usize, value: &str) {
            // A 4-bit prefix for the name index, 7 bits for the length.
            integer(block, 0x00, 4, index);
            integer(block, 0x00, 7, value.len());
            block.extend_from_slice(value.as_bytes());
        }
        fn integer(block: &mut Vec<u8>, flags: u8, prefix: u32, mut n: usize) {
            let max = (1usize << prefix) - 1;
            if n < max {
                block.push(flags | u8::try_from(n).expect("fits"));
                return;
            }
            block.push(flags | u8::try_from(max).expect("fits"));
            n -= max;
            while n >= 128 {
                block.push(u8::try_from(n % 128).expect("fits") | 0x80);
                n /= 128;
            }
            block.push(u8::try_from(n).expect("fits"));
        }
        // :scheme http (indexed), then :method, :path, :authority.
        let mut block = vec![0x86];
        literal(&mut block, 2, method);
        literal(&mut block, 4, path);
        literal(&mut block, 1, "x");
        for (index, value) in headers {
            literal(&mut block, *index, value);
        }
        let stream = self.next_stream;
        self.next_stream += 2;
        // END_HEADERS, and END_STREAM when no body follows.
        self.frame(H2_HEADERS, if end { 0x5 } else { 0x4 }, stream, &block);
        stream
    }

    /// Sends a DATA frame, the last one of its stream if `end`.
    fn data(&mut self, stream: u32, bytes: &[u8], end: bool) {
        self.frame(0x0, u8::from(end), stream, bytes);
    }

    /// Reads frames for up to `within`, acknowledging SETTINGS and PINGs,
    /// until one of type `ty` on `stream` comes: `Some(true)` then,
    /// `Some(false)` if the server closed first, `None` at the time limit.
    fn wait_for(&mut self, ty: u8, stream: u32, within: Duration) -> Option<bool> {
        use std::io::{ErrorKind, Read};
        let start = Instant::now();
        loop {
            let left = within.checked_sub(start.elapsed())?;
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut head = [0u8; 9];
            match self.s.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(_) => return Some(false),
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (fty, flags) = (head[3], head[4]);
            let fstream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0u8; len];
            if self.s.read_exact(&mut payload).is_err() {
                return Some(false);
            }
            match (fty, flags & 0x1) {
                (H2_SETTINGS, 0) => self.frame(H2_SETTINGS, 0x1, 0, &[]),
                (H2_PING, 0) => self.frame(H2_PING, 0x1, 0, &payload),
                _ => {}
            }
            if fty == ty && fstream == stream {
                return Some(true);
            }
        }
    }
}

#[test]
fn idle_http2_connections_get_goaway_after_idle_timeout() {
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__IDLE_TIMEOUT".into(), "1s".into())],
        ..Opts::default()
    });
    // One request, then idle (answering the server's keep-alive pings).
    let mut idle = H2::connect(&s.addr);
    let stream = idle.get("/healthz");
    assert_eq!(
        idle.wait_for(H2_HEADERS, stream, Duration::from_secs(5)),
        Some(true)
    );
    let answered = Instant::now();
    // A client that keeps asking, every 300 ms for 2.4 s, is left alone.
    let mut busy = H2::connect(&s.addr);
    for _ in 0..8 {
        let stream = busy.get("/healthz");
        assert_eq!(
            busy.wait_for(H2_HEADERS, stream, Duration::from_secs(5)),
            Some(true),
            "an active connection was closed"
        );
        assert_eq!(
            busy.wait_for(H2_GOAWAY, 0, Duration::from_millis(300)),
            None
        );
    }
    // Meanwhile the idle one got GOAWAY about idle_timeout after its
    // request (its frames were buffered), then the close.
    assert_eq!(
        idle.wait_for(H2_GOAWAY, 0, Duration::from_secs(1)),
        Some(true)
    );
    let after = answered.elapsed();
    assert_eq!(
        idle.wait_for(0xff, 0, Duration::from_secs(3)),
        Some(false),
        "closed"
    );
    // The busy one, once it stops, goes the same way.
    let stopped = Instant::now();
    assert_eq!(
        busy.wait_for(H2_GOAWAY, 0, Duration::from_secs(5)),
        Some(true)
    );
    let busy_after = stopped.elapsed();
    assert!(
        busy_after >= Duration::from_millis(500) && busy_after < Duration::from_secs(3),
        "{busy_after:?}"
    );
    assert!(after < Duration::from_secs(4), "{after:?}");
    let idled = s.metric(r#"http_connections_timed_out_total{reason="idle"}"#);
    assert_eq!(idled, Some(2.0));
}

#[tokio::test]
async fn an_http2_request_running_past_idle_timeout_is_not_cut_short() {
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__IDLE_TIMEOUT".into(), "1s".into())],
        ..Opts::default()
    });
    let t = s.admin();
    let addr = s.addr.clone();
    let auth = format!("Bearer {t}");
    // A PUT whose body takes 2.5 s to arrive: no GOAWAY meanwhile, since
    // a request is running; the response comes, then idleness counts.
    let got = tokio::task::spawn_blocking(move || {
        let mut c = H2::connect(&addr);
        // Static table: 31 content-type, 23 authorization.
        let stream = c.request(
            "PUT",
            "/v1/collections/slowh2",
            &[(31, "application/json"), (23, &auth)],
            false,
        );
        let body = br#"{"schema": {"type": "object"}}"#;
        for (i, part) in body.chunks(7).enumerate() {
            assert_eq!(
                c.wait_for(H2_GOAWAY, 0, Duration::from_millis(500)),
                None,
                "GOAWAY while the body was arriving (part {i})"
            );
            c.data(stream, part, i == body.len().div_ceil(7) - 1);
        }
        let answered = c.wait_for(H2_HEADERS, stream, Duration::from_secs(5));
        let idle_after = Instant::now();
        let goaway = c.wait_for(H2_GOAWAY, 0, Duration::from_secs(5));
        (answered, goaway, idle_after.elapsed())
    })
    .await
    .expect("join");
    assert_eq!(got.0, Some(true), "the response came");
    assert_eq!(got.1, Some(true), "then GOAWAY once idle");
    assert!(
        got.2 >= Duration::from_millis(700),
        "GOAWAY {:?} after the response",
        got.2
    );
    let r = s.get("/v1/collections/slowh2", &t).await;
    assert_eq!(r.status(), 200, "the slow PUT created the collection");
}

#[tokio::test]
async fn a_body_still_arriving_at_the_request_timeout_is_408_and_closes() {
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__REQUEST_TIMEOUT".into(), "1s".into())],
        ..Opts::default()
    });
    let t = s.admin();
    let head = |len: usize| {
        format!(
            "PUT /v1/collections/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // Half a body, then nothing: the client's fault, so 408 (not the 503
    // of a slow server), and the connection closes (the rest could come).
    let addr = s.addr.clone();
    let stalled = format!("{}{{\"schema\":", head(100));
    let started = std::time::Instant::now();
    let (status, text) =
        tokio::task::spawn_blocking(move || raw_request(&addr, stalled.as_bytes()))
            .await
            .expect("join");
    assert_eq!(status, 408, "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{text}");
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(text.contains("urn:arca:problem:request-timeout"), "{text}");
    // Nothing was written, and the server serves on.
    problem(s.get("/v1/collections/slow", &t).await, 404).await;
    assert!(
        s.metric(
            "http_requests_total{route=\"/v1/collections/{name}\",method=\"PUT\",status=\"408\"}"
        )
        .is_some_and(|n| n == 1.0),
        "{}",
        s.metrics().await
    );
    // Over HTTP/2 (curl, prior knowledge) the body has no length header;
    // it stalls the same way. Closing curl's input after the deadline would
    // finish the body as malformed JSON (400): 408 shows the deadline cut it.
    let mut curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-T",
            "-",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .args([
            "-w",
            "%{http_code} %{http_version}",
            "-H",
            "content-type: application/json",
        ])
        .arg("-H")
        .arg(format!("authorization: Bearer {t}"))
        .arg(s.url("/v1/collections/slow"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    {
        use std::io::Write;
        let mut input = curl.stdin.take().expect("stdin");
        input.write_all(b"{\"schema\":").expect("write");
        input.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    let out = tokio::task::spawn_blocking(move || curl.wait_with_output())
        .await
        .expect("join")
        .expect("curl output");
    let out = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        out.starts_with("http/2 408") && out.ends_with("408 2"),
        "{out}"
    );
    // HTTP/2 has no `Connection` header: the stream ends, the connection stays.
    assert!(!out.contains("connection:"), "{out}");
    // A whole body sent in time is served as usual.
    let addr = s.addr.clone();
    let body = r#"{"schema": {"type": "object"}}"#;
    let whole = format!("{}{body}", head(body.len()))
        .replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    let (status, text) = tokio::task::spawn_blocking(move || raw_request(&addr, whole.as_bytes()))
        .await
        .expect("join");
    assert_eq!(status, 201, "{text}");
}

#[test]
fn silent_trickling_and_idle_connections_are_closed_after_idle_timeout() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__IDLE_TIMEOUT".into(), "1s".into())],
        ..Opts::default()
    });
    // Sends nothing at all.
    let mut silent = TcpStream::connect(&s.addr).expect("connect");
    // Sends its head one byte at a time, never finishing (slowloris).
    let mut trickle = TcpStream::connect(&s.addr).expect("connect");
    let mut writer = trickle.try_clone().expect("clone");
    let dripping = std::thread::spawn(move || {
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Starts HTTP/2's preface and stops: the protocol is still unknown.
    let mut half_preface = TcpStream::connect(&s.addr).expect("connect");
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .expect("preface");
    // One whole request, answered, then idle on keep-alive.
    let mut idle = TcpStream::connect(&s.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut buf = [0u8; 512];
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = idle.read(&mut buf).expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // The four, and the scrape's own connection. A connection is counted
    // when its task first runs, which under load can trail the client's
    // connect by a moment (one CI run scraped 4): waited for, briefly.
    let counted = Instant::now() + Duration::from_secs(2);
    loop {
        let open = s.metric("http_connections_open").expect("open gauge");
        if open >= 5.0 {
            break;
        }
        assert!(Instant::now() < counted, "http_connections_open {open}");
        std::thread::sleep(Duration::from_millis(10));
    }

    for (name, c) in [
        ("silent", &mut silent),
        ("half HTTP/2 preface", &mut half_preface),
        ("trickling", &mut trickle),
        ("idle", &mut idle),
    ] {
        let (got, after) = wait_closed(c, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name} connection still open after 5 s"));
        assert!(got.is_empty(), "{name}: unexpected bytes {got:?}");
        assert!(
            after < Duration::from_secs(3),
            "{name} closed late: {after:?}"
        );
    }
    dripping.join().expect("dripping");
    // The server still serves new connections, and counted the closed ones.
    assert_eq!(http_status(&s.url("/healthz")).expect("healthz"), 200);
    let idled = s.metric(r#"http_connections_timed_out_total{reason="idle"}"#);
    assert_eq!(idled, Some(4.0));
    let open = s.metric("http_connections_open").expect("open gauge");
    assert!(
        open <= 2.0,
        "http_connections_open {open} after the timeouts"
    );
}

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_api_listener() {
    let s = Server::start(Opts {
        env: vec![("ARCA_METRICS__LISTEN".into(), "127.0.0.1:0".into())],
        ..Opts::default()
    });
    let addr = s
        .log_lines()
        .iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "metrics listening")
                .then(|| v["listen"].as_str().map(str::to_owned))
                .flatten()
        })
        .expect("a 'metrics listening' log line");
    assert_ne!(addr, s.addr);
    // A request on the API listener shows up on the metrics listener.
    let plain = |path: &str| client().get(s.url(path)).send();
    assert_eq!(plain("/healthz").await.expect("healthz").status(), 200);
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(text.status(), 200);
    let text = text.text().await.expect("text");
    assert!(
        text.contains(r#"route="/healthz""#),
        "no /healthz series: {text}"
    );
    // Gone from the API listener and from its OpenAPI document; the metrics
    // listener serves nothing else.
    problem(plain("/metrics").await.expect("metrics"), 404).await;
    let spec: Value = plain("/openapi.json")
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    assert!(spec["paths"]["/metrics"].is_null());
    assert!(spec["paths"]["/healthz"].is_object());
    let other = client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("other");
    problem(other, 404).await;
}

#[test]
fn at_max_connections_new_clients_wait_until_one_closes() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let s = Server::start(Opts {
        env: vec![("ARCA_SERVER__MAX_CONNECTIONS".into(), "2".into())],
        ..Opts::default()
    });
    // Server::start's readiness checks closed their connections; wait until
    // the server has seen them close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.metric("http_connections_open") != Some(1.0) {
        assert!(Instant::now() < deadline, "connections did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = TcpStream::connect(&s.addr).expect("connect");
    let second = TcpStream::connect(&s.addr).expect("connect");
    // A third connects (the kernel's backlog) but is not served.
    let mut third = TcpStream::connect(&s.addr).expect("connect");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let waited = third.read(&mut buf);
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "served past the limit: {waited:?}"
    );
    // One closes: the third is served.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = third.read(&mut buf).expect("served after a slot freed");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    drop(second);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_after_idle_timeout() {
    use std::io::Write;
    let s = Server::start(Opts {
        env: vec![
            ("ARCA_SERVER__IDLE_TIMEOUT".into(), "1s".into()),
            // A page far larger than the sockets' buffers.
            ("ARCA_QUERY__MAX_PAGE_BYTES".into(), "67108864".into()),
        ],
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
    // 30 documents of ~900 KB: a 27 MB page, more than the two sockets'
    // buffers can hold.
    let big = "x".repeat(900_000);
    for i in 0..30 {
        let r = client()
            .post(s.url("/v1/collections/blobs/documents"))
            .bearer_auth(&t)
            .json(&json!({"_id": format!("{i:024x}"), "data": big}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    let mut c = std::net::TcpStream::connect(&s.addr).expect("connect");
    write!(
        c,
        "GET /v1/collections/blobs/documents?limit=30 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .expect("request");
    // Read nothing for a while: the server's writes stall.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (got, _) = wait_closed(&mut c, Duration::from_secs(10))
        .expect("the stalled connection was not closed");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .expect("length");
    assert!(length > 27_000_000, "{length}");
    assert!(
        got.len() - head_end < length,
        "the whole response arrived: the stalled write was not cut"
    );
    let cut = s.metric(r#"http_connections_timed_out_total{reason="write"}"#);
    assert_eq!(cut, Some(1.0));
    // A client that reads along gets the same page whole.
    let r = s.get("/v1/collections/blobs/documents?limit=30", &t).await;
    assert_eq!(r.bytes().await.expect("body").len(), length);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut s = Server::start(Opts {
        env: vec![("ARCA_SERVER__SHUTDOWN_DELAY".into(), "700ms".into())],
        ..Opts::default()
    });
    let t = s.admin();
    define(
        &s,
        &t,
        "jobs",
        json!({"access": {"create": {"roles": ["*"]}}}),
    )
    .await;
    // An in-flight request: a body sent slowly, still arriving at SIGTERM.
    let addr = s.addr.clone();
    let token = t.clone();
    let slow = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let body = br#"{"step": 1}"#;
        let mut c = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            c,
            "POST /v1/collections/jobs/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("head");
        c.write_all(&body[..3]).expect("part");
        std::thread::sleep(Duration::from_millis(1200));
        c.write_all(&body[3..]).expect("rest");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // During shutdown_delay: still accepting, but not ready.
    let r = client()
        .get(s.url("/readyz"))
        .send()
        .await
        .expect("readyz during delay");
    assert_eq!(r.status(), 503);
    let out = slow.join().expect("slow client");
    assert!(
        out.starts_with("HTTP/1.1 201"),
        "in-flight request completed: {out}"
    );
    let status = s.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // And the listener is closed.
    assert!(std::net::TcpStream::connect(&s.addr).is_err());
    // Every commit is in arca.db itself: the WAL was folded back at exit,
    // so copying the stopped server's arca.db alone loses nothing.
    let wal = s.data.0.join("arca.db-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "the WAL still holds commits after a clean stop");
}

#[tokio::test]
async fn healthcheck_command_reflects_the_server() {
    let s = Server::dev();
    let run = |listen: &str| {
        Command::new(BIN)
            .arg("healthcheck")
            .env("ARCA_SERVER__LISTEN", listen)
            .env_remove("ARCA_CONFIG")
            .status()
            .expect("arca healthcheck")
    };
    assert!(run(&s.addr).success());
    let port = s.addr.rsplit(':').next().expect("port").to_owned();
    assert!(
        run(&format!("0.0.0.0:{port}")).success(),
        "a wildcard address means this host"
    );
    assert!(
        !run(&format!("127.0.0.1:{}", free_port())).success(),
        "nothing listening: unhealthy"
    );
}
