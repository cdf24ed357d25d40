//! `arca copy` moves a whole store between engines: SQLite -> MongoDB (the
//! stand-in, or `ARCA_TEST_MONGODB_URI`) -> SQLite, and the last store
//! holds exactly the first one's definitions and documents (ids,
//! revisions, timestamps, owners, tenants) and stored files (metadata and
//! bytes). A non-empty target is refused unless `--resume`, which then
//! skips what is there.

mod common;

use std::sync::Arc;

use arca_store::{ExportPosition, SqliteOptions, SqliteStore, Store};
use common::*;

fn mongodb_base() -> String {
    std::env::var("ARCA_TEST_MONGODB_URI")
        .or_else(|_| std::env::var("ARCA_TEST_STANDIN_URI"))
        .expect("ARCA_TEST_MONGODB_URI or ARCA_TEST_STANDIN_URI (scripts/test starts a stand-in)")
}

/// `base` with `/db` as its database.
fn with_database(base: &str, db: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URI");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let options = rest[end..]
        .find('?')
        .map(|q| &rest[end + q..])
        .unwrap_or("");
    format!("{scheme}://{}/{db}{options}", &rest[..end])
}

fn copy(from: &str, to: &str, resume: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["copy", "--from", from, "--to", to]);
    if resume {
        cmd.arg("--resume");
    }
    cmd.env_remove("ARCA_CONFIG")
        .env("ARCA_STORE__MONGODB__VERIFY_MATCHES", "true")
        .output()
        .expect("arca copy")
}

/// Every definition, every document and every file (all tenants) of a
/// SQLite store.
async fn dump(path: &std::path::Path) -> (Vec<Value>, Vec<String>, Vec<String>) {
    let store = SqliteStore::open(&SqliteOptions {
        path: path.to_owned(),
        synchronous_full: false,
        readers: 1,
        read_timeout: std::time::Duration::from_secs(30),
        reader_cache_kib: 2000,
    })
    .expect("open");
    let mut defs = Vec::new();
    let mut docs = Vec::new();
    for c in store.collections().await.expect("collections") {
        defs.push(
            json!({"name": c.name.as_str(), "schema": c.schema, "access": c.access,
            "indexes": c.indexes.iter().map(arca_core::IndexDef::to_json).collect::<Vec<_>>(),
            "created_at": c.created_at, "updated_at": c.updated_at}),
        );
        let mut after: Option<ExportPosition> = None;
        loop {
            let page = store
                .export(&c.name, after.as_ref(), 100)
                .await
                .expect("export");
            let Some((t, last)) = page.last() else { break };
            after = Some(ExportPosition {
                tenant: t.key().to_owned(),
                id: last.system.id.clone(),
            });
            let n = page.len();
            for (t, d) in page {
                docs.push(format!(
                    "{}|{}|{}",
                    c.name,
                    t.key(),
                    serde_json::to_string(&d).expect("json")
                ));
            }
            if n < 100 {
                break;
            }
        }
    }
    let mut files = Vec::new();
    for (tenant, meta) in store.export_files(None, 1000).await.expect("files") {
        #[allow(clippy::disallowed_methods)] // the test reads as an operator
        let scope = arca_core::Scope::operator(tenant.clone());
        let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
            store
                .read_file(&scope, &meta.id, 0..meta.size)
                .await
                .expect("read"),
        )
        .await
        .expect("bytes");
        files.push(format!(
            "{}|{}|{:?}",
            tenant.key(),
            serde_json::to_string(&meta).expect("json"),
            chunks.concat()
        ));
    }
    (defs, docs, files)
}

#[tokio::test]
async fn a_store_copied_to_mongodb_and_back_is_the_same_store() {
    let first = Arc::new(TempDir::new("copy-a"));
    {
        // The first store, through the API: two collections (one with a
        // unique index), three tenants, documents changed after creation.
        let s = Server::start(Opts {
            data: Some(first.clone()),
            env: vec![(
                "ARCA_STORE__URL".into(),
                format!("sqlite://{}/arca.db", first.0.display()),
            )],
            ..Opts::default()
        });
        let admin = s.admin();
        let access = json!({"read": {"roles": ["*"]}, "create": {"roles": ["*"]}, "update": {"roles": ["*"]}});
        define(
            &s,
            &admin,
            "people",
            json!({"access": access,
            "indexes": [{"fields": {"email": 1}, "unique": true}]}),
        )
        .await;
        define(
            &s,
            &admin,
            "notes",
            json!({"access": access,
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}),
        )
        .await;
        for (tenant, who) in [(None, "ana"), (Some("acme"), "bob"), (Some("zeta"), "cy")] {
            let t = s.token(who, &["member"], tenant);
            for i in 0..30 {
                let r = client()
                    .post(s.url("/v1/collections/people/documents"))
                    .bearer_auth(&t)
                    .json(&json!({"_id": format!("p{i}"), "email": format!("{i}@x"), "f": 1.0, "big": 9007199254740993_i64}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                let r = client()
                    .post(s.url("/v1/collections/notes/documents"))
                    .bearer_auth(&t)
                    .json(&json!({"n": i, "nested": {"a": [1, "x", null]}}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
            }
            // A file per tenant, over several GridFS chunks.
            let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
            let r = client()
                .post(s.url(&format!("/v1/files?filename={who}.bin")))
                .bearer_auth(&t)
                .body(bytes)
                .send()
                .await
                .expect("upload");
            assert_eq!(r.status(), 201);
            let r = client()
                .patch(s.url("/v1/collections/people/documents/p3"))
                .bearer_auth(&t)
                .json(&json!({"email": "changed@x"}))
                .send()
                .await
                .expect("patch");
            assert_eq!(r.status(), 200);
        }
    }
    let a = format!("sqlite://{}/arca.db", first.0.display());
    let m = with_database(&mongodb_base(), &format!("t_copy_{}", std::process::id()));
    let last = TempDir::new("copy-b");
    let b = format!("sqlite://{}/arca.db", last.0.display());
    for (from, to) in [(&a, &m), (&m, &b)] {
        let out = copy(from, to, false);
        assert!(
            out.status.success(),
            "{from} -> {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("copied 2 collection(s) and 180 document(s), 3 file(s)"),
            "{summary}"
        );
    }
    assert_eq!(
        dump(&first.0.join("arca.db")).await,
        dump(&last.0.join("arca.db")).await
    );

    // A target with collections is refused; --resume finishes (here: finds
    // everything there already).
    let again = copy(&m, &b, false);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = copy(&m, &b, true);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let resumed = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.contains("(180 already there)"), "{resumed}");
    assert!(resumed.contains("(3 file(s) already there)"), "{resumed}");
    let (first_dump, last_dump) = (
        dump(&first.0.join("arca.db")).await,
        dump(&last.0.join("arca.db")).await,
    );
    assert_eq!(first_dump.2.len(), 3, "three files");
    assert_eq!(first_dump, last_dump);
}
