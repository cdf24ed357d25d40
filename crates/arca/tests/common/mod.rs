//! Test support: starts the real `arca` binary on a random loopback port
//! with its own data directory, and the real OIDC provider fixture
//! (`oidc-provider` on Node) when a test needs an IdP.
#![allow(dead_code)]

pub mod sse;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_arca");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("arca-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collects a child's stdout and stderr lines (on reader threads).
pub fn capture_output(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
    }
    lines
}

/// Which engine the servers of this test run use: `ARCA_TEST_STORE` =
/// `sqlite` (the default) or `mongodb`. With `mongodb`, each data
/// directory gets its own database on the MongoDB at
/// `ARCA_TEST_MONGODB_URI`, or else on a stand-in: this test process's
/// own (`standin_uri`) when `ARCA_TEST_MONGO_PYTHON` names its Python,
/// else the one at `ARCA_TEST_STANDIN_URI`. On the stand-in the engine
/// runs with `store.mongodb.verify_matches` (its comparisons cross type
/// brackets, see docs/query.md).
pub fn mongodb() -> bool {
    match std::env::var("ARCA_TEST_STORE").as_deref() {
        Ok("mongodb") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("ARCA_TEST_STORE={other}: expected sqlite or mongodb"),
    }
}

/// Whether this run's MongoDB is the stand-in (no `ARCA_TEST_MONGODB_URI`):
/// for the few places a test must make room for one of its recorded
/// quirks (README, "What ran against what").
pub fn on_standin() -> bool {
    mongodb() && std::env::var("ARCA_TEST_MONGODB_URI").is_err()
}

/// The store settings of a server on `data` (the same database for the
/// same directory, so a restart finds its data).
pub fn store_env(data: &Path) -> Vec<(String, String)> {
    if !mongodb() {
        return vec![(
            "ARCA_STORE__URL".to_string(),
            format!("sqlite://{}/arca.db", data.display()),
        )];
    }
    let (base, standin) = match std::env::var("ARCA_TEST_MONGODB_URI") {
        Ok(uri) => (uri, false),
        Err(_) => (standin_uri(), true),
    };
    // The directory's name is unique (process id and time): so is this.
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().replace(['-', '.'], "_"))
        .unwrap_or_default();
    let db = format!("t_{}", &name[name.len().saturating_sub(40)..]);
    let (scheme, rest) = base.split_once("://").expect("a URI");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let options = rest[end..]
        .find('?')
        .map(|q| &rest[end + q..])
        .unwrap_or("");
    let mut env = vec![(
        "ARCA_STORE__URL".to_string(),
        format!("{scheme}://{}/{db}{options}", &rest[..end]),
    )];
    if standin {
        env.push((
            "ARCA_STORE__MONGODB__VERIFY_MATCHES".to_string(),
            "true".to_string(),
        ));
    }
    env
}

/// The store settings of an `arca import` into the store of `data`: those
/// of `store_env`, and on the stand-in 30 s per store operation. Its
/// writes cost time in proportion to the collection's size and it answers
/// a few hundred a second, so an import's writes in flight (64) queue past
/// the default 5 s there as the collection grows (one CI run lost an
/// 800-document import at line 760); MongoDB and the embedded engine keep
/// the default.
pub fn import_env(data: &Path) -> Vec<(String, String)> {
    let mut env = store_env(data);
    if on_standin() {
        env.push(("ARCA_STORE__TIMEOUT".to_string(), "30s".to_string()));
    }
    env
}

/// The stand-in's URI for this test process. The stand-in (mongoeco)
/// fails a transaction's commit when any other commit happened on the
/// whole server since it began, where MongoDB conflicts per document; with
/// every document write in a transaction (the event log), tests sharing
/// one stand-in would make each other retry. So with
/// `ARCA_TEST_MONGO_PYTHON` each test process starts its own (under a
/// second); it exits when this process does (its stdin closes). Without
/// it, the shared one at `ARCA_TEST_STANDIN_URI`.
pub fn standin_uri() -> String {
    static OWN: std::sync::OnceLock<(String, Mutex<Child>)> = std::sync::OnceLock::new();
    let Ok(python) = std::env::var("ARCA_TEST_MONGO_PYTHON") else {
        return std::env::var("ARCA_TEST_STANDIN_URI").expect(
            "ARCA_TEST_STORE=mongodb needs ARCA_TEST_MONGODB_URI, ARCA_TEST_MONGO_PYTHON \
             (the stand-in's Python) or ARCA_TEST_STANDIN_URI",
        );
    };
    let (uri, _) = OWN.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/mongo-standin/serve.py"
        );
        let mut child = Command::new(&python)
            .args([script, "0", "memory"])
            .env("STANDIN_EXIT_ON_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the stand-in's first line");
        let uri = line
            .strip_prefix("READY ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the stand-in did not start: {line:?}"))
            .to_owned();
        // Kept, with its stdin's write end, as long as this process lives.
        (uri, Mutex::new(child))
    });
    uri.clone()
}

/// A running `arca serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub addr: String,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub data: Arc<TempDir>,
    pub env: Vec<(String, String)>,
    pub dev: bool,
}

/// How to start a server.
pub struct Opts {
    pub dev: bool,
    pub env: Vec<(String, String)>,
    pub data: Option<Arc<TempDir>>,
    pub wait_ready: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            dev: true,
            env: Vec::new(),
            data: None,
            wait_ready: true,
        }
    }
}

impl Server {
    /// A dev-mode server with default settings.
    pub fn dev() -> Self {
        Self::start(Opts::default())
    }

    pub fn start(opts: Opts) -> Self {
        let data = opts.data.unwrap_or_else(|| Arc::new(TempDir::new("data")));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        if opts.dev {
            cmd.arg("--dev");
        }
        let mut env = vec![
            ("ARCA_SERVER__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("ARCA_LOG__FORMAT".to_string(), "json".to_string()),
        ];
        env.extend(store_env(&data.0));
        env.extend(opts.env.iter().cloned());
        cmd.env_remove("RUST_LOG").env_remove("ARCA_CONFIG");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn arca");
        let lines = capture_output(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(a) = lines.lock().expect("lines").iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "arca listening")
                    .then(|| v["listen"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "arca exited early with {status}: {:?}",
                    lines.lock().expect("lines")
                );
            }
            assert!(
                Instant::now() < deadline,
                "arca did not start: {:?}",
                lines.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let server = Self {
            child,
            base: format!("http://{addr}"),
            addr,
            lines,
            data,
            env,
            dev: opts.dev,
        };
        if opts.wait_ready {
            server.wait_ready();
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One series of `/metrics` (`name` or `name{labels}` as exposed),
    /// read with a blocking GET; `None` when absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = http_body(&self.url("/metrics"))?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// `GET path` with `token` as the bearer.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.bodiless(reqwest::Method::GET, path, token).await
    }

    /// `GET path` with `token` as the bearer, its body parsed as JSON
    /// (whatever the status).
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get(path, token)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// `DELETE path` with `token` as the bearer.
    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.bodiless(reqwest::Method::DELETE, path, token).await
    }

    async fn bodiless(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        client()
            .request(method.clone(), self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The Prometheus exposition text of `/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http_status(&self.url("/readyz"))
                && r == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "arca never became ready: {:?}",
                self.lines.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Mints a dev token with `arca token` against this server's data dir.
    pub fn token(&self, sub: &str, roles: &[&str], tenant: Option<&str>) -> String {
        self.token_with_claims(sub, roles, tenant, &[])
    }

    /// Same, with further claims as `NAME=VALUE` (`arca token --claim`).
    pub fn token_with_claims(
        &self,
        sub: &str,
        roles: &[&str],
        tenant: Option<&str>,
        claims: &[&str],
    ) -> String {
        let mut cmd = Command::new(BIN);
        cmd.arg("token").arg("--sub").arg(sub);
        for r in roles {
            cmd.arg("--role").arg(r);
        }
        if let Some(t) = tenant {
            cmd.arg("--tenant").arg(t);
        }
        for c in claims {
            cmd.arg("--claim").arg(c);
        }
        cmd.env_remove("ARCA_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        stdout_of(&mut cmd, "arca token")
    }

    pub fn admin(&self) -> String {
        self.token("admin-user", &["admin"], None)
    }

    /// Sends SIGTERM (or SIGKILL) to the server.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "arca did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain blocking GET (no async runtime needed): status and body.
pub fn raw_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status of a plain blocking GET (used while waiting for readiness).
pub fn http_status(url: &str) -> std::io::Result<u16> {
    raw_get(url).map(|(status, _)| status)
}

/// The body of a plain blocking GET when it answers 200.
pub fn http_body(url: &str) -> Option<String> {
    raw_get(url)
        .ok()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Defines a collection as admin and asserts success.
pub async fn define(server: &Server, token: &str, name: &str, def: Value) {
    let r = client()
        .put(server.url(&format!("/v1/collections/{name}")))
        .bearer_auth(token)
        .json(&def)
        .send()
        .await
        .expect("put collection");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert!(
        status == 201 || status == 200,
        "define {name}: {status} {body}"
    );
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:arca:problem:")),
        "{body}"
    );
    assert!(body["title"].is_string(), "{body}");
    body
}

/// The OIDC provider fixture (`oidc-provider` on Node, see shared/idp).
pub struct Idp {
    pub child: Child,
    pub issuer: String,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

/// Where the fixture is installed (`scripts/test` installs it).
pub fn idp_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ARCA_TEST_IDP_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/arca/idp")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Idp {
    /// Starts the provider on a free port, retrying on another port if the
    /// chosen one was taken meanwhile (ports are picked, released, then
    /// bound: another process can slip in between).
    pub fn start_any(env: &[(&str, &str)]) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(free_port(), env, Duration::from_secs(15)) {
                Ok(idp) => return idp,
                Err(e) => last = e,
            }
        }
        panic!("the IdP did not start on any of 5 ports: {last}");
    }

    /// Starts the provider on `port` with extra environment (`FA_COMPAT`,
    /// `AUDIENCE`, `JWKS_FILE`, `JWKS_OUT`...), waiting until discovery answers.
    pub fn start(port: u16, env: &[(&str, &str)]) -> Self {
        Self::try_start(port, env, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(port: u16, env: &[(&str, &str)], within: Duration) -> Result<Self, String> {
        let dir = idp_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the OIDC provider fixture is not installed in {}: run ./scripts/test, which installs it",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("provider.mjs"))
            .env("PORT", port.to_string())
            .current_dir(&dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn node");
        let lines = capture_output(&mut child);
        let issuer = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + within;
        loop {
            // The discovery document must name this issuer: a 200 from some
            // other process that took the port does not count.
            if http_body(&format!("{issuer}/.well-known/openid-configuration"))
                .is_some_and(|b| b.contains(&format!("\"issuer\":\"{issuer}\"")))
            {
                break;
            }
            if let Ok(Some(s)) = child.try_wait() {
                return Err(format!(
                    "IdP on port {port} exited with {s}: {:?}",
                    lines.lock().expect("lines")
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "IdP on port {port} did not answer: {:?}",
                    lines.lock().expect("lines")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            issuer,
            port,
            lines,
        })
    }

    /// A client-credentials access token.
    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let r = client()
            .post(format!("{}/oauth2/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        let v: Value = r.json().await.expect("token json");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {v}"))
            .to_owned()
    }

    /// Same, with `client_secret_post` authentication.
    pub async fn token_post(&self, client_id: &str, secret: &str) -> String {
        let r = client()
            .post(format!("{}/oauth2/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
            .send()
            .await
            .expect("token request");
        let v: Value = r.json().await.expect("token json");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {v}"))
            .to_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Sends raw bytes as an HTTP/1.1 request and returns (status, raw response).
pub fn raw_request(addr: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Forges an edge-case token with `fixtures/idp/sign.mjs` (see there).
pub fn forge(keys_file: &Path, spec: Value) -> String {
    let mut cmd = Command::new("node");
    cmd.arg(idp_dir().join("sign.mjs"))
        .arg(keys_file)
        .arg(spec.to_string());
    stdout_of(&mut cmd, "node sign.mjs")
}

/// Runs `cmd`, asserts it succeeded, returns its trimmed stdout.
pub fn stdout_of(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
