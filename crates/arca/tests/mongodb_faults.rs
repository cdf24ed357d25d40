//! The MongoDB engine when the database goes away: a stand-in this test
//! owns (file-backed, so it keeps its data across a restart) is stopped
//! and started again while a client writes and reads through Arca. No
//! request may hang, each failure is `503 store-unavailable` with
//! `Retry-After`, `/readyz` follows the database, and no acknowledged
//! write is lost. (A real MongoDB cannot be stopped from here: this test
//! always runs on its own stand-in, whatever `ARCA_TEST_MONGODB_URI` says.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A stand-in on a fixed port and file.
struct Standin {
    child: Child,
}

impl Standin {
    fn start(port: u16, file: &std::path::Path) -> Self {
        let python = std::env::var("ARCA_TEST_MONGO_PYTHON").expect(
            "ARCA_TEST_MONGO_PYTHON (the stand-in's Python, as scripts/test installs it) is needed",
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/mongo-standin/serve.py"
        );
        let mut child = Command::new(&python)
            .arg(script)
            .arg(port.to_string())
            .arg("sqlite")
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the stand-in");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("its first line");
        assert!(
            line.starts_with("READY "),
            "the stand-in did not start: {line:?}"
        );
        Self { child }
    }

    /// Kills it at once (no shutdown), as a lost primary.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_database_is_503_without_hangs_and_nothing_acknowledged_is_lost() {
    let dir = TempDir::new("faults");
    let port = free_port();
    let file = dir.0.join("standin.db");
    let standin = Standin::start(port, &file);
    let s = Server::start(Opts {
        env: vec![
            (
                "ARCA_STORE__URL".into(),
                format!("mongodb://127.0.0.1:{port}/faults?directConnection=true"),
            ),
            ("ARCA_STORE__MONGODB__VERIFY_MATCHES".into(), "true".into()),
            ("ARCA_STORE__TIMEOUT".into(), "1s".into()),
        ],
        ..Opts::default()
    });
    let t = s.admin();
    define(
        &s,
        &t,
        "notes",
        json!({"access": {"read": {"roles": ["*"]}, "create": {"roles": ["*"]}}}),
    )
    .await;
    let url = s.url("/v1/collections/notes/documents");

    // A client writing one document after another, keeping the ids that
    // were acknowledged, and checking every response's shape and time.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url, t) = (stop.clone(), url.clone(), t.clone());
        tokio::spawn(async move {
            let c = client();
            let (mut acked, mut refused, mut slowest) = (Vec::new(), 0u32, Duration::ZERO);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("n{i:05}");
                i += 1;
                let started = Instant::now();
                let r = c
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&json!({"_id": id, "i": i}))
                    .send()
                    .await
                    .expect("a response, never a dropped connection");
                slowest = slowest.max(started.elapsed());
                match r.status().as_u16() {
                    201 => acked.push(id),
                    503 => {
                        assert_eq!(
                            r.headers().get("retry-after").map(|v| v.as_bytes()),
                            Some(&b"1"[..])
                        );
                        let body: Value = r.json().await.expect("problem");
                        assert_eq!(body["type"], "urn:arca:problem:store-unavailable");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // A create that reached the database before its
                    // answer was lost, retried by nobody here: impossible.
                    other => panic!("unexpected status {other}"),
                }
            }
            (acked, refused, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    standin.kill();

    // While it is gone: reads fail fast with 503, readiness is 503.
    let started = Instant::now();
    let r = s.get("/v1/collections/notes/documents", &t).await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a read hung: {:?}",
        started.elapsed()
    );
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if http_status(&s.url("/readyz")).ok() == Some(503) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "/readyz never turned 503");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Back, on the same port and data: Arca recovers without a restart.
    let _standin = Standin::start(port, &file);
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if http_status(&s.url("/readyz")).ok() == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "/readyz never came back to 200");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, refused, slowest) = load.await.expect("load");
    assert!(refused > 0, "the outage was seen by the writer");
    assert!(
        acked.len() > 10,
        "writes succeeded before and after: {}",
        acked.len()
    );
    assert!(
        slowest < Duration::from_secs(4),
        "a write hung for {slowest:?}"
    );

    // Every acknowledged write is there.
    for id in &acked {
        let r = s
            .get(&format!("/v1/collections/notes/documents/{id}"), &t)
            .await;
        assert_eq!(r.status(), 200, "acknowledged {id} is lost");
    }
}

/// A MongoDB URI's password never shows: not in `arca config`, the start
/// log, the logs of failing requests, errors or `/metrics` (here with a
/// database that is not there at all: the server starts, is not ready,
/// and says why without the password).
#[tokio::test]
async fn the_uri_password_never_shows() {
    let port = free_port();
    let uri = format!("mongodb://arca:s3cr3t-pw@127.0.0.1:{port}/x?authSource=admin");
    let config = std::process::Command::new(BIN)
        .arg("config")
        .env("ARCA_STORE__URL", &uri)
        .env_remove("ARCA_CONFIG")
        .output()
        .expect("arca config");
    let text = String::from_utf8_lossy(&config.stdout);
    assert!(config.status.success(), "{text}");
    assert!(
        !text.contains("s3cr3t") && text.contains("arca:***@"),
        "{text}"
    );
    let s = Server::start(Opts {
        env: vec![
            ("ARCA_STORE__URL".into(), uri.clone()),
            ("ARCA_STORE__TIMEOUT".into(), "500ms".into()),
        ],
        wait_ready: false,
        ..Opts::default()
    });
    assert_eq!(http_status(&s.url("/readyz")).ok(), Some(503));
    let t = s.admin();
    let r = s.get("/v1/collections/notes/documents", &t).await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("body");
    let metrics = s.metrics().await;
    // Give the logs a moment to be read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = s.log_lines().join("\n");
    for (what, text) in [("body", &body), ("metrics", &metrics), ("logs", &logs)] {
        assert!(
            !text.contains("s3cr3t"),
            "the password is in the {what}: {text}"
        );
    }
    assert!(
        logs.contains("arca:***@"),
        "the start log names the store: {logs}"
    );
}
