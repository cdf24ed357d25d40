//! The suite's file cases: uploads streamed and committed, ranges, tenancy,
//! thumbnails and secret rotation, through the `Store` trait only.

use arca_core::FileId;
use arca_store::{FileMeta, ImageFacts, StoreError, ThumbFormat, ThumbKey};
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::*;

fn file_id(n: u8) -> FileId {
    FileId::from_random([n; 16])
}

fn meta(id: &FileId, size: u64) -> FileMeta {
    FileMeta {
        id: id.clone(),
        owner: "u1".into(),
        filename: "photo.png".into(),
        content_type: "image/png".into(),
        size,
        sha256: "ab".repeat(32),
        created_at: T0.into(),
        image: Some(ImageFacts {
            width: 3,
            height: 2,
            format: "png".into(),
        }),
    }
}

/// `n` bytes of a pattern that tells every offset apart.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

/// Uploads `bytes` in chunks of `chunk` and commits it as `id`.
async fn upload(store: &dyn Store, s: &Scope, id: &FileId, bytes: &[u8], chunk: usize) {
    let mut w = store.begin_file(s, id).await.expect("begin");
    for part in bytes.chunks(chunk.max(1)) {
        w.write(Bytes::copy_from_slice(part)).await.expect("write");
    }
    w.commit(meta(id, bytes.len() as u64))
        .await
        .expect("commit");
}

async fn read(store: &dyn Store, s: &Scope, id: &FileId, r: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .read_file(s, id, r)
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("stream");
    chunks.concat()
}

pub async fn files_stream_in_and_out_by_range<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let s = tenant_scope("t1");
    let id = file_id(1);
    // Over two GridFS chunks (255 KiB), written in uneven pieces.
    let bytes = pattern(600 * 1024 + 7);
    // Read back before the commit, then committed.
    let mut w = store.begin_file(&s, &id).await.expect("begin");
    for part in bytes.chunks(70_001) {
        w.write(Bytes::copy_from_slice(part)).await.expect("write");
    }
    let back: Vec<Bytes> = w
        .written()
        .await
        .expect("written")
        .try_collect()
        .await
        .expect("read back");
    assert_eq!(back.concat(), bytes);
    w.commit(meta(&id, bytes.len() as u64))
        .await
        .expect("commit");
    assert_eq!(
        store.file_meta(&s, &id).await.expect("meta"),
        Some(meta(&id, bytes.len() as u64)),
        "stored exactly as given"
    );
    let n = bytes.len() as u64;
    assert_eq!(read(store, &s, &id, 0..n).await, bytes);
    let k = 255 * 1024u64;
    for r in [
        0..1,
        k - 1..k + 1,
        k..2 * k,
        5..n,
        n - 1..n,
        300_000..300_000,
    ] {
        assert_eq!(
            read(store, &s, &id, r.clone()).await,
            bytes[r.start as usize..r.end as usize],
            "{r:?}"
        );
    }
    // An empty file is a file too.
    let empty = file_id(2);
    upload(store, &s, &empty, &[], 1).await;
    assert_eq!(
        store
            .file_meta(&s, &empty)
            .await
            .expect("meta")
            .map(|m| m.size),
        Some(0)
    );
    assert!(read(store, &s, &empty, 0..0).await.is_empty());
}

pub async fn an_upload_is_invisible_until_committed_and_gone_when_aborted<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let s = tenant_scope("");
    let id = file_id(3);
    let mut w = store.begin_file(&s, &id).await.expect("begin");
    w.write(Bytes::from_static(b"half")).await.expect("write");
    assert_eq!(store.file_meta(&s, &id).await, Ok(None));
    // What was written can be read back before the commit (for checks).
    let back: Vec<Bytes> = w
        .written()
        .await
        .expect("written")
        .try_collect()
        .await
        .expect("read back");
    assert_eq!(back.concat(), b"half");
    assert!(matches!(
        store.read_file(&s, &id, 0..4).await.err(),
        Some(StoreError::NotFound)
    ));
    w.abort().await;
    assert_eq!(store.file_meta(&s, &id).await, Ok(None));
    // Dropped without a commit: nothing either, and the id stays usable.
    let mut w = store.begin_file(&s, &id).await.expect("begin");
    w.write(Bytes::from_static(b"dropped"))
        .await
        .expect("write");
    drop(w);
    assert_eq!(store.file_meta(&s, &id).await, Ok(None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    upload(store, &s, &id, b"whole", 2).await;
    assert_eq!(read(store, &s, &id, 0..5).await, b"whole");
}

pub async fn files_never_cross_tenants<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let (a, b) = (tenant_scope("t1"), tenant_scope("t2"));
    let id = file_id(4);
    upload(store, &a, &id, b"tenant one", 4).await;
    let thumb = ThumbKey {
        size: 64,
        format: ThumbFormat::Jpeg,
    };
    store
        .put_thumbnail(&a, &id, thumb, b"small".to_vec())
        .await
        .expect("thumb");
    assert_eq!(store.file_meta(&b, &id).await, Ok(None));
    assert!(matches!(
        store.read_file(&b, &id, 0..3).await.err(),
        Some(StoreError::NotFound)
    ));
    assert_eq!(store.thumbnail(&b, &id, thumb).await, Ok(None));
    assert_eq!(
        store.put_thumbnail(&b, &id, thumb, b"x".to_vec()).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.delete_file(&b, &id).await, Ok(None));
    assert_eq!(store.file_meta(&tenant_scope(""), &id).await, Ok(None));
    // The same id in another tenant is another file.
    upload(store, &b, &id, b"tenant two", 3).await;
    assert_eq!(read(store, &a, &id, 0..10).await, b"tenant one");
    assert_eq!(read(store, &b, &id, 0..10).await, b"tenant two");
    assert!(store.delete_file(&b, &id).await.expect("delete").is_some());
    assert_eq!(read(store, &a, &id, 0..10).await, b"tenant one");
    assert_eq!(
        store.thumbnail(&a, &id, thumb).await,
        Ok(Some(b"small".to_vec()))
    );
}

pub async fn thumbnails_are_kept_until_their_file_goes<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let s = tenant_scope("t1");
    let id = file_id(5);
    upload(store, &s, &id, b"image bytes", 100).await;
    let jpeg = ThumbKey {
        size: 128,
        format: ThumbFormat::Jpeg,
    };
    let webp = ThumbKey {
        size: 128,
        format: ThumbFormat::Webp,
    };
    assert_eq!(store.thumbnail(&s, &id, jpeg).await, Ok(None));
    store
        .put_thumbnail(&s, &id, jpeg, b"first".to_vec())
        .await
        .expect("put");
    // A second put of the same key (a racing replica) keeps the first.
    store
        .put_thumbnail(&s, &id, jpeg, b"second".to_vec())
        .await
        .expect("put again");
    store
        .put_thumbnail(&s, &id, webp, b"webp".to_vec())
        .await
        .expect("put webp");
    assert_eq!(
        store.thumbnail(&s, &id, jpeg).await,
        Ok(Some(b"first".to_vec()))
    );
    assert_eq!(
        store.thumbnail(&s, &id, webp).await,
        Ok(Some(b"webp".to_vec()))
    );
    let removed = store.delete_file(&s, &id).await.expect("delete");
    assert_eq!(removed.map(|m| m.id), Some(id.clone()));
    assert_eq!(store.thumbnail(&s, &id, jpeg).await, Ok(None));
    assert_eq!(store.file_meta(&s, &id).await, Ok(None));
    assert!(matches!(
        store.read_file(&s, &id, 0..1).await.err(),
        Some(StoreError::NotFound)
    ));
    assert_eq!(
        store.put_thumbnail(&s, &id, jpeg, b"late".to_vec()).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.delete_file(&s, &id).await, Ok(None));
}

pub async fn rotating_a_secret_keeps_the_previous_one<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let first = store.secret("links").await.expect("secret");
    store.rotate_secret("links").await.expect("rotate");
    let second = store.secret("links").await.expect("secret");
    assert_ne!(first, second);
    assert_eq!(store.secret("links.previous").await, Ok(first));
    store.rotate_secret("links").await.expect("rotate again");
    assert_eq!(store.secret("links.previous").await, Ok(second));
    assert_ne!(store.secret("links").await.expect("secret"), second);
}

pub async fn export_files_walks_every_tenant_in_order<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let mut want = Vec::new();
    for (tenant, n) in [("zeta", 9u8), ("", 7), ("acme", 8), ("acme", 6)] {
        let id = file_id(n);
        upload(store, &tenant_scope(tenant), &id, &[n; 3], 2).await;
        want.push((tenant.to_owned(), id));
    }
    want.sort();
    let mut got = Vec::new();
    let mut after: Option<(String, FileId)> = None;
    loop {
        let page = store
            .export_files(after.as_ref().map(|(t, i)| (t.as_str(), i)), 3)
            .await
            .expect("export");
        let n = page.len();
        for (tenant, m) in page {
            assert_eq!(m, meta(&m.id, 3), "the metadata as stored");
            got.push((tenant.key().to_owned(), m.id));
        }
        after = got.last().cloned();
        if n < 3 {
            break;
        }
    }
    assert_eq!(got, want);
}

pub async fn list_files_walks_a_tenant_newest_first<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    let acme = tenant_scope("acme");
    // Ties on `created_at` (files made in the same millisecond) order by id,
    // descending; another tenant's files are never listed.
    let stamps = [
        (1u8, "u1", "2026-01-01T00:00:00.000Z"),
        (2, "u1", "2026-01-01T00:00:01.000Z"),
        (3, "u2", "2026-01-01T00:00:01.000Z"),
        (4, "u1", "2026-01-01T00:00:02.500Z"),
        (5, "u1", "2025-12-31T23:59:59.999Z"),
        (6, "u2", "2026-01-01T00:00:01.000Z"),
        (7, "u2", "2024-06-01T00:00:00.000Z"),
    ];
    for (n, owner, at) in stamps {
        let id = file_id(n);
        let mut w = store.begin_file(&acme, &id).await.expect("begin");
        w.write(Bytes::from_static(b"x")).await.expect("write");
        w.commit(FileMeta {
            owner: owner.into(),
            created_at: at.into(),
            ..meta(&id, 1)
        })
        .await
        .expect("commit");
    }
    upload(store, &tenant_scope("zeta"), &file_id(9), b"z", 1).await;
    upload(store, &tenant_scope(""), &file_id(8), b"n", 1).await;
    let walk = |owner: Option<&'static str>, size: usize| {
        let acme = acme.clone();
        async move {
            let mut got = Vec::new();
            let mut after: Option<(String, FileId)> = None;
            loop {
                let page = store
                    .list_files(
                        &acme,
                        owner,
                        after.as_ref().map(|(at, i)| (at.as_str(), i)),
                        size,
                    )
                    .await
                    .expect("list");
                assert!(page.len() <= size, "a page holds at most `limit` files");
                let n = page.len();
                after = page.last().map(|m| (m.created_at.clone(), m.id.clone()));
                got.extend(page.into_iter().map(|m| m.id));
                if n < size {
                    break got;
                }
            }
        }
    };
    let ids = |ns: &[u8]| -> Vec<FileId> { ns.iter().copied().map(file_id).collect() };
    for size in [1usize, 2, 3, 7, 8] {
        assert_eq!(
            walk(None, size).await,
            ids(&[4, 6, 3, 2, 1, 5, 7]),
            "all, pages of {size}"
        );
        assert_eq!(
            walk(Some("u1"), size).await,
            ids(&[4, 2, 1, 5]),
            "u1's, pages of {size}"
        );
        assert_eq!(
            walk(Some("u2"), size).await,
            ids(&[6, 3, 7]),
            "u2's, pages of {size}"
        );
    }
    assert_eq!(walk(Some("nobody"), 3).await, Vec::<FileId>::new());
    let zeta = store
        .list_files(&tenant_scope("zeta"), None, None, 10)
        .await
        .expect("list");
    assert_eq!(zeta, vec![meta(&file_id(9), 1)], "the metadata as stored");
    assert_eq!(
        store
            .list_files(&tenant_scope("other"), None, None, 10)
            .await,
        Ok(Vec::new())
    );
    // A deleted file leaves the listing.
    store.delete_file(&acme, &file_id(3)).await.expect("delete");
    assert_eq!(walk(None, 10).await, ids(&[4, 6, 2, 1, 5, 7]));
    assert_eq!(walk(Some("u2"), 10).await, ids(&[6, 7]));
}
