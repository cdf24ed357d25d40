//! Files and images over HTTP, on the real binary (and, with
//! `ARCA_TEST_STORE=mongodb`, on GridFS): each image format (made here with
//! the `image` crate), hostile images (a decompression bomb, truncated
//! files, HTML and SVG declared as PNG), every `Range` form, 304,
//! thumbnails and their bounds, signed links, tenancy and delete rights,
//! 50 concurrent uploads, memory per upload, SIGTERM and SIGKILL mid-upload,
//! upload time budgets, `Idempotency-Key` on uploads, backup and
//! restore with files, and files listed newest first (one's own, or an
//! admin's whole tenant's).

mod common;
use common::*;

use std::io::{Read, Write};
use std::time::Duration;

use image::{DynamicImage, ImageFormat, RgbImage};
use sha2::{Digest, Sha256};

/// An RGB test picture (a gradient, so encoders have something to do).
fn picture(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
    }))
}

fn encoded(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /v1/files` with a raw body.
async fn post_raw(
    s: &Server,
    token: &str,
    bytes: Vec<u8>,
    content_type: Option<&str>,
    filename: Option<&str>,
) -> reqwest::Response {
    let mut url = s.url("/v1/files");
    if let Some(f) = filename {
        url = format!("{url}?filename={}", form_urlencoded_byte(f.as_bytes()));
    }
    let mut req = client().post(url).bearer_auth(token).body(bytes);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.expect("upload")
}

/// Percent-encodes every byte but unreserved ASCII.
fn form_urlencoded_byte(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                char::from(*b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Uploads and asserts 201; the metadata.
async fn uploaded(s: &Server, token: &str, bytes: Vec<u8>, content_type: Option<&str>) -> Value {
    let r = post_raw(s, token, bytes, content_type, Some("upload.bin")).await;
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).expect("json")
}

fn id_of(meta: &Value) -> String {
    meta["id"].as_str().expect("id").to_owned()
}

async fn get_bytes(
    s: &Server,
    path: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = s.get(path, token).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("body").to_vec())
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_image_format_is_sniffed_stored_and_served_whole() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    let img = picture(300, 200);
    for (format, name) in [
        (ImageFormat::Png, "png"),
        (ImageFormat::Jpeg, "jpeg"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::WebP, "webp"),
    ] {
        let bytes = encoded(&img, format);
        // Declared as something else: the bytes decide.
        let meta = uploaded(&s, &t, bytes.clone(), Some("application/octet-stream")).await;
        assert_eq!(meta["content_type"], format!("image/{name}"), "{meta}");
        assert_eq!(
            meta["image"],
            json!({"width": 300, "height": 200, "format": name})
        );
        assert_eq!(meta["size"], bytes.len());
        assert_eq!(meta["sha256"], hex_sha256(&bytes));
        assert_eq!(meta["filename"], "upload.bin");
        assert_eq!(id_of(&meta).len(), 32);
        let id = id_of(&meta);
        let (status, h, body) = get_bytes(&s, &format!("/v1/files/{id}"), &t).await;
        assert_eq!(status, 200);
        assert_eq!(body, bytes, "{name}: the bytes come back exactly");
        assert_eq!(header(&h, "content-type"), format!("image/{name}"));
        assert_eq!(header(&h, "etag"), format!("\"{}\"", hex_sha256(&bytes)));
        assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        assert_eq!(header(&h, "accept-ranges"), "bytes");
        assert!(header(&h, "content-disposition").starts_with("inline;"));
        assert!(
            h.get("content-security-policy").is_none(),
            "images are shown"
        );
        let again = s.get_json(&format!("/v1/files/{id}/metadata"), &t).await;
        assert_eq!(again, meta);
    }
}

#[tokio::test]
async fn multipart_uploads_take_one_file_part() {
    let s = Server::dev();
    let t = s.token("ana", &[], None);
    let png = encoded(&picture(20, 10), ImageFormat::Png);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(png.clone())
            .file_name("holiday photo.png")
            .mime_str("image/png")
            .expect("mime"),
    );
    let r = client()
        .post(s.url("/v1/files"))
        .bearer_auth(&t)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let meta: Value = r.json().await.expect("json");
    assert_eq!(meta["filename"], "holiday photo.png");
    assert_eq!(meta["size"], png.len());
    assert_eq!(meta["image"]["format"], "png");
    let (_, _, body) = get_bytes(&s, &format!("/v1/files/{}", id_of(&meta)), &t).await;
    assert_eq!(body, png);
    // A text part declared as such keeps its declared type.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"hello".to_vec())
            .file_name("a.txt")
            .mime_str("text/plain")
            .expect("mime"),
    );
    let r = client()
        .post(s.url("/v1/files"))
        .bearer_auth(&t)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let meta: Value = r.json().await.expect("json");
    assert_eq!(meta["content_type"], "text/plain");
    assert_eq!(meta["image"], Value::Null);
    // Another part, two parts, or no file part: 400.
    for form in [
        reqwest::multipart::Form::new().text("other", "x"),
        reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(b"a".to_vec()))
            .text("extra", "y"),
        reqwest::multipart::Form::new(),
    ] {
        let r = client()
            .post(s.url("/v1/files"))
            .bearer_auth(&t)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        problem(r, 400).await;
    }
}

#[tokio::test]
async fn hostile_uploads_are_refused_without_a_panic() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    // A decompression bomb: a complete PNG whose header claims
    // 100,000 x 100,000 pixels (its data: a few KB of deflated zeros).
    let bomb = png_claiming(100_000, 100_000);
    let r = post_raw(&s, &t, bomb, Some("image/png"), None).await;
    let p = problem(r, 422).await;
    assert_eq!(p["type"], "urn:arca:problem:invalid-file");
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("max_image_pixels"),
        "{p}"
    );
    // Truncated images of each format.
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
    ] {
        let bytes = encoded(&picture(64, 64), format);
        let cut = bytes[..bytes.len() / 2].to_vec();
        let r = post_raw(&s, &t, cut, None, None).await;
        let p = problem(r, 422).await;
        assert_eq!(p["type"], "urn:arca:problem:invalid-file", "{format:?}");
    }
    // An empty body.
    let r = post_raw(&s, &t, Vec::new(), Some("image/png"), None).await;
    assert_eq!(
        problem(r, 422).await["type"],
        "urn:arca:problem:invalid-file"
    );
    // The server still serves.
    let ok = uploaded(&s, &t, b"still fine".to_vec(), Some("text/plain")).await;
    assert_eq!(ok["size"], 10);
    // No log line speaks of a panic.
    assert!(!s.log_lines().iter().any(|l| l.contains("panicked")));
}

/// A whole PNG claiming `w` x `h` pixels, its image data a short run of
/// deflated zeros (a "bomb": tiny, and enormous once decoded).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 20]).expect("deflate");
    chunk(&mut png, b"IDAT", &z.finish().expect("deflate"));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn active_content_is_an_attachment_in_a_sandbox() {
    let s = Server::dev();
    let t = s.token("ana", &[], None);
    let html = b"<html><body><script>alert(document.cookie)</script></body></html>".to_vec();
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec();
    for (bytes, declared) in [
        (html.clone(), "image/png"),
        (svg.clone(), "image/png"),
        (svg.clone(), "image/svg+xml"),
        (html.clone(), "text/html"),
        (b"alert(1)".to_vec(), "application/javascript"),
        (b"<?xml version=\"1.0\"?><a/>".to_vec(), "application/xml"),
    ] {
        let meta = uploaded(&s, &t, bytes.clone(), Some(declared)).await;
        assert_eq!(meta["image"], Value::Null, "{declared}: not an image");
        let id = id_of(&meta);
        let (status, h, body) = get_bytes(&s, &format!("/v1/files/{id}"), &t).await;
        assert_eq!(status, 200);
        assert_eq!(body, bytes);
        assert!(
            header(&h, "content-disposition").starts_with("attachment;"),
            "{declared}: {h:?}"
        );
        assert_eq!(header(&h, "content-security-policy"), "sandbox");
        assert_eq!(header(&h, "x-content-type-options"), "nosniff");
        // And no thumbnail: it is not an image.
        let r = s.get(&format!("/v1/files/{id}/thumbnail"), &t).await;
        assert_eq!(
            problem(r, 415).await["type"],
            "urn:arca:problem:unsupported-media-type"
        );
    }
}

#[tokio::test]
async fn hostile_file_names_are_cleaned_and_encoded() {
    let s = Server::dev();
    let t = s.token("ana", &[], None);
    // About 10 KB of unicode.
    let long = "日本".repeat(1700);
    for (raw, kept) in [
        ("../../etc/passwd", "passwd".to_owned()),
        ("a\u{1}b\u{7f}\r\nc.txt", "abc.txt".to_owned()),
        ("say \"hi\"; x=1.txt", "say \"hi\"; x=1.txt".to_owned()),
        (long.as_str(), long.chars().take(255).collect::<String>()),
        ("..", "file".to_owned()),
    ] {
        let r = post_raw(&s, &t, b"x".to_vec(), Some("text/plain"), Some(raw)).await;
        assert_eq!(r.status(), 201, "{raw:?}");
        let meta: Value = r.json().await.expect("json");
        assert_eq!(meta["filename"], kept, "{raw:?}");
        let (_, h, _) = get_bytes(&s, &format!("/v1/files/{}", id_of(&meta)), &t).await;
        let cd = header(&h, "content-disposition");
        assert!(cd.starts_with("attachment; filename=\""), "{cd}");
        assert!(cd.contains("filename*=UTF-8''"), "{cd}");
        assert!(
            cd.is_ascii() && !cd.contains('\r') && !cd.contains('\n'),
            "{cd}"
        );
    }
}

#[tokio::test]
async fn every_range_form_and_conditional_get() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let meta = uploaded(&s, &t, bytes.clone(), Some("application/octet-stream")).await;
    let path = format!("/v1/files/{}", id_of(&meta));
    let n = bytes.len();
    let ranged = |range: &'static str| {
        let (url, t) = (s.url(&path), t.clone());
        async move {
            let r = client()
                .get(url)
                .bearer_auth(t)
                .header("range", range)
                .header("accept-encoding", "gzip")
                .send()
                .await
                .expect("get");
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.bytes().await.expect("body").to_vec())
        }
    };
    for (range, from, to) in [
        ("bytes=0-99", 0, 100),
        ("bytes=99990-", 99_990, n),
        ("bytes=-10", n - 10, n),
        ("bytes=50000-200000", 50_000, n),
        ("bytes=70000-70000", 70_000, 70_001),
    ] {
        let (status, h, body) = ranged(range).await;
        assert_eq!(status, 206, "{range}");
        assert_eq!(body, bytes[from..to], "{range}");
        assert_eq!(
            header(&h, "content-range"),
            format!("bytes {from}-{}/{n}", to - 1),
            "{range}"
        );
        assert_eq!(header(&h, "content-length"), (to - from).to_string());
        assert!(
            h.get("content-encoding").is_none(),
            "{range}: never compressed"
        );
    }
    // Unsatisfiable: 416 with the size.
    for range in ["bytes=100000-", "bytes=200000-300000"] {
        let (status, h, body) = ranged(range).await;
        assert_eq!(status, 416, "{range}");
        assert_eq!(header(&h, "content-range"), format!("bytes */{n}"));
        let p: Value = serde_json::from_slice(&body).expect("problem");
        assert_eq!(p["type"], "urn:arca:problem:range-not-satisfiable");
    }
    // Several ranges, or a malformed header: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=9-1", "pages=1-2"] {
        let (status, h, body) = ranged(range).await;
        assert_eq!(status, 200, "{range}");
        assert_eq!(body.len(), n);
        assert!(h.get("content-encoding").is_none());
    }
    // If-None-Match with the ETag: 304.
    let etag = format!("\"{}\"", hex_sha256(&bytes));
    let r = client()
        .get(s.url(&path))
        .bearer_auth(&t)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    assert_eq!(header(r.headers(), "etag"), etag);
    let r = client()
        .get(s.url(&path))
        .bearer_auth(&t)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    // If-Range with another tag: the whole file.
    let r = client()
        .get(s.url(&path))
        .bearer_auth(&t)
        .header("range", "bytes=0-9")
        .header("if-range", "\"old\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    // A text file asked for with gzip: sent as stored (ranges stay true).
    let text = uploaded(
        &s,
        &t,
        "hello world ".repeat(1000).into_bytes(),
        Some("text/plain"),
    )
    .await;
    let r = client()
        .get(s.url(&format!("/v1/files/{}", id_of(&text))))
        .bearer_auth(&t)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.bytes().await.expect("b").len(), 12_000);
}

/// A JPEG whose EXIF says "rotate 90 degrees clockwise to display"
/// (orientation 6).
fn jpeg_with_orientation_6(w: u32, h: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let exif = [
        b'M', b'M', 0, 42, 0, 0, 0, 8, // TIFF header, IFD at 8
        0, 1, // one entry
        0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation = 6
        0, 0, 0, 0, // no next IFD
    ];
    let rgb = picture(w, h).to_rgb8();
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    enc.set_exif_metadata(exif.to_vec()).expect("exif");
    enc.write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("jpeg");
    out
}

#[tokio::test]
async fn thumbnails_are_bounded_oriented_and_never_upscaled() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    let wide = uploaded(&s, &t, encoded(&picture(400, 100), ImageFormat::Png), None).await;
    let id = id_of(&wide);
    let thumb = |query: String, accept: &'static str| {
        let (url, t) = (
            s.url(&format!("/v1/files/{id}/thumbnail{query}")),
            t.clone(),
        );
        async move {
            let r = client()
                .get(url)
                .bearer_auth(t)
                .header("accept", accept)
                .send()
                .await
                .expect("thumb");
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.bytes().await.expect("b").to_vec())
        }
    };
    for (query, dims) in [
        ("?size=64", (64, 16)),
        ("?size=16", (16, 4)),
        ("", (256, 64)),
        ("?size=1024", (400, 100)),
    ] {
        let (status, h, body) = thumb(query.into(), "image/*").await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(header(&h, "content-type"), "image/jpeg");
        let img = image::load_from_memory_with_format(&body, ImageFormat::Jpeg).expect("jpeg");
        assert_eq!((img.width(), img.height()), dims, "{query}");
    }
    let (status, h, body) = thumb("?size=64".into(), "image/webp,image/*").await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "image/webp");
    let img = image::load_from_memory_with_format(&body, ImageFormat::WebP).expect("webp");
    assert_eq!((img.width(), img.height()), (64, 16));
    // 304 with the thumbnail's own ETag.
    let tag = header(&h, "etag");
    let r = client()
        .get(s.url(&format!("/v1/files/{id}/thumbnail?size=64")))
        .bearer_auth(&t)
        .header("accept", "image/webp")
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("thumb");
    assert_eq!(r.status(), 304);
    // Bounds.
    for bad in ["?size=15", "?size=1025", "?size=abc", "?size=0"] {
        let (status, _, body) = thumb(bad.into(), "*/*").await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    // EXIF orientation 6: a 200 x 100 picture is shown 100 x 200.
    let turned = uploaded(&s, &t, jpeg_with_orientation_6(200, 100), None).await;
    assert_eq!(turned["image"]["format"], "jpeg");
    let r = s
        .get(
            &format!("/v1/files/{}/thumbnail?size=100", id_of(&turned)),
            &t,
        )
        .await;
    assert_eq!(r.status(), 200);
    let img = image::load_from_memory(&r.bytes().await.expect("b")).expect("decodes");
    assert_eq!((img.width(), img.height()), (50, 100));
}

#[tokio::test]
async fn a_thumbnail_is_made_once_under_concurrent_requests() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    let meta = uploaded(
        &s,
        &t,
        encoded(&picture(1200, 900), ImageFormat::Jpeg),
        None,
    )
    .await;
    let made = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("arca_thumbnails_made_total ")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let before = made(&s.metrics().await);
    let url = s.url(&format!("/v1/files/{}/thumbnail?size=200", id_of(&meta)));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, t) = (url.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("thumb");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("b").to_vec()
        }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.push(task.await.expect("task"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one thumbnail for all"
    );
    assert_eq!(made(&s.metrics().await) - before, 1.0, "made once");
    // Deleting the file deletes its thumbnails: the cache is gone with it.
    assert_eq!(
        s.delete(&format!("/v1/files/{}", id_of(&meta)), &t)
            .await
            .status(),
        204
    );
    let r = client()
        .get(&url)
        .bearer_auth(&t)
        .send()
        .await
        .expect("thumb");
    assert_eq!(r.status(), 404);
    // And the store operations of files are measured.
    let text = s.metrics().await;
    for op in [
        "begin_file",
        "write_file",
        "read_upload",
        "commit_file",
        "file_meta",
        "read_file",
        "thumbnail",
        "put_thumbnail",
        "delete_file",
    ] {
        assert!(
            text.contains(&format!(
                "store_operation_duration_seconds_count{{op=\"{op}\"}}"
            )),
            "{op} is not measured"
        );
    }
}

/// The callers of the tenancy tests' tokens.
struct People {
    /// A member of tenant t1.
    ana: String,
    /// Another member of t1.
    bia: String,
    /// An admin of t1.
    boss: String,
    /// An admin of t2 with Ana's subject.
    other: String,
    /// Ana's subject without a tenant.
    plain: String,
}

fn people(s: &Server) -> People {
    People {
        ana: s.token("ana", &[], Some("t1")),
        bia: s.token("bia", &[], Some("t1")),
        boss: s.token("boss", &["admin"], Some("t1")),
        other: s.token("ana", &["admin"], Some("t2")),
        plain: s.token("ana", &[], None),
    }
}

#[tokio::test]
async fn tenants_never_reach_each_others_files_and_only_owners_or_admins_delete() {
    let s = Server::dev();
    let People {
        ana,
        bia,
        boss,
        other,
        plain,
    } = people(&s);
    let meta = uploaded(&s, &ana, encoded(&picture(40, 40), ImageFormat::Png), None).await;
    let id = id_of(&meta);
    let mut paths = vec![
        format!("/v1/files/{id}"),
        format!("/v1/files/{id}/metadata"),
        format!("/v1/files/{id}/thumbnail"),
    ];
    // Another tenant (even its admin) and the untenanted space: 404 on
    // every route.
    for t in [&other, &plain] {
        for p in &paths {
            let r = s.get(p, t).await;
            assert_eq!(
                problem(r, 404).await["type"],
                "urn:arca:problem:file-not-found",
                "{p}"
            );
        }
        let r = client()
            .post(s.url(&format!("/v1/files/{id}/links")))
            .bearer_auth(t)
            .send()
            .await
            .expect("link");
        problem(r, 404).await;
        problem(s.delete(&format!("/v1/files/{id}"), t).await, 404).await;
    }
    // Without a token: 401.
    for p in &paths {
        let r = client().get(s.url(p)).send().await.expect("get");
        assert_eq!(r.status(), 401, "{p}");
    }
    let r = client()
        .post(s.url("/v1/files"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    // A malformed id is simply not found.
    paths.push("/v1/files/..%2F..%2Fetc".into());
    for p in [
        "/v1/files/nope",
        "/v1/files/ABCDEF00ABCDEF00ABCDEF00ABCDEF00/metadata",
    ] {
        problem(s.get(p, &ana).await, 404).await;
    }
    // Same tenant: any caller reads; only the owner or an admin deletes.
    assert_eq!(s.get(&format!("/v1/files/{id}"), &bia).await.status(), 200);
    let r = s.delete(&format!("/v1/files/{id}"), &bia).await;
    assert_eq!(problem(r, 403).await["type"], "urn:arca:problem:forbidden");
    assert_eq!(
        s.delete(&format!("/v1/files/{id}"), &ana).await.status(),
        204
    );
    problem(s.get(&format!("/v1/files/{id}"), &ana).await, 404).await;
    let second = id_of(&uploaded(&s, &ana, b"x".to_vec(), None).await);
    assert_eq!(
        s.delete(&format!("/v1/files/{second}"), &boss)
            .await
            .status(),
        204
    );
    // The untenanted space sees its own files.
    let mine = id_of(&uploaded(&s, &plain, b"untenanted".to_vec(), None).await);
    assert_eq!(
        s.get(&format!("/v1/files/{mine}"), &plain).await.status(),
        200
    );
    problem(s.get(&format!("/v1/files/{mine}"), &ana).await, 404).await;
}

/// `GET /v1/files` with `query` as `token`: status and JSON body.
async fn listing(s: &Server, query: &str, token: &str) -> (u16, Value) {
    let r = s.get(&format!("/v1/files{query}"), token).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every file of a listing (`extra`: more query parameters), walked in
/// pages of `limit`.
async fn walk(s: &Server, token: &str, extra: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut query = format!("?limit={limit}{extra}");
    loop {
        let (status, page) = listing(s, &query, token).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= limit, "{page}");
        all.extend(items.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit, "a page before the last is full");
                query = format!("?limit={limit}{extra}&after={next}");
            }
            None => break,
        }
    }
    all
}

/// Newest first; files stamped in the same millisecond by id, descending.
fn newest_first(mut files: Vec<Value>) -> Vec<Value> {
    files.sort_by(|a, b| {
        let key = |m: &Value| (m["created_at"].as_str().map(str::to_owned), id_of(m));
        key(b).cmp(&key(a))
    });
    files
}

#[tokio::test]
async fn callers_list_their_files_and_admins_their_tenants_newest_first() {
    let s = Server::dev();
    let People {
        ana,
        bia,
        boss,
        other,
        plain,
    } = people(&s);
    let (mut anas, mut bias) = (Vec::new(), Vec::new());
    for n in 0..6 {
        let bytes = format!("file {n}").into_bytes();
        if n % 3 == 1 {
            bias.push(uploaded(&s, &bia, bytes, None).await);
        } else {
            anas.push(uploaded(&s, &ana, bytes, None).await);
        }
    }
    anas.push(uploaded(&s, &ana, encoded(&picture(8, 4), ImageFormat::Png), None).await);
    let t2 = uploaded(&s, &other, b"t2's".to_vec(), None).await;
    let untenanted = uploaded(&s, &plain, b"nobody's tenant".to_vec(), None).await;
    let anas = newest_first(anas);
    let bias = newest_first(bias);
    let everyone = newest_first([anas.clone(), bias.clone()].concat());
    for limit in [1, 2, 3, 5, 20] {
        assert_eq!(
            walk(&s, &ana, "", limit).await,
            anas,
            "ana's, pages of {limit}"
        );
        assert_eq!(
            walk(&s, &bia, "&all=false", limit).await,
            bias,
            "bia's, pages of {limit}"
        );
        assert_eq!(
            walk(&s, &boss, "&all=true", limit).await,
            everyone,
            "the tenant's, pages of {limit}"
        );
    }
    // The admin's own files: none.
    assert_eq!(walk(&s, &boss, "", 5).await, Vec::<Value>::new());
    // Each item is the metadata as `GET /v1/files/{id}/metadata` gives it.
    let (status, first) = listing(&s, "", &ana).await;
    assert_eq!(status, 200);
    assert_eq!(first["next"], Value::Null, "5 files fit the default 20");
    let newest = &first["items"][0];
    let (_, _, meta) = get_bytes(&s, &format!("/v1/files/{}/metadata", id_of(newest)), &ana).await;
    assert_eq!(
        &serde_json::from_slice::<Value>(&meta).expect("json"),
        newest
    );
    assert_eq!(newest, &anas[0]);
    // Other tenants and the untenanted space see theirs only.
    assert_eq!(walk(&s, &other, "&all=true", 5).await, vec![t2.clone()]);
    assert_eq!(walk(&s, &plain, "", 5).await, vec![untenanted]);
    // Every file of the tenant is for admins only.
    let r = s.get("/v1/files?all=true", &ana).await;
    assert!(
        problem(r, 403).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("admin")
    );
    // A cursor continues its own listing only, within the caller's tenant.
    let (_, page) = listing(&s, "?limit=1&all=true", &boss).await;
    let next = page["next"].as_str().expect("next").to_owned();
    let (status, theirs) = listing(&s, &format!("?all=true&after={next}"), &other).await;
    assert_eq!(status, 200);
    let theirs = theirs["items"].as_array().expect("items");
    assert!(theirs.iter().all(|m| m == &t2), "{theirs:?}");
    let r = s.get(&format!("/v1/files?after={next}"), &boss).await;
    assert!(
        problem(r, 400).await["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("another listing")
    );
    // A deleted file leaves the lists.
    let gone = id_of(&anas[1]);
    assert_eq!(
        s.delete(&format!("/v1/files/{gone}"), &ana).await.status(),
        204
    );
    let left: Vec<String> = walk(&s, &ana, "", 2).await.iter().map(id_of).collect();
    let kept: Vec<String> = anas.iter().map(id_of).filter(|i| *i != gone).collect();
    assert_eq!(left, kept);
    let left = walk(&s, &boss, "&all=true", 4).await.len();
    assert_eq!(left, everyone.len() - 1);
    // Bad input: 400 naming the problem.
    let mut edited = next.clone().into_bytes();
    let last = edited.len() - 1;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).expect("ascii");
    for (query, says) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=x", "limit"),
        ("?limit=2&limit=3", "given twice"),
        ("?all=yes", "all must be"),
        ("?after=nonsense", "cursor"),
        (&format!("?all=true&after={edited}") as &str, "cursor"),
        ("?after=%FF", "UTF-8"),
    ] {
        let r = s.get(&format!("/v1/files{query}"), &boss).await;
        let p = problem(r, 400).await;
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(says),
            "{query}: {p}"
        );
    }
    // Without a token (a link's signature included): 401.
    let r = client().get(s.url("/v1/files")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    let link: Value = client()
        .post(s.url(&format!("/v1/files/{}/links", id_of(&anas[0]))))
        .bearer_auth(&ana)
        .send()
        .await
        .expect("link")
        .json()
        .await
        .expect("json");
    let url = link["url"].as_str().expect("url");
    let signature = url.split_once('?').expect("query").1.to_owned();
    let r = client()
        .get(s.url(&format!("/v1/files?all=true&{signature}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn require_tenant_refuses_uploads_without_a_tenant_claim() {
    let s = Server::start(Opts {
        env: vec![("ARCA_AUTH__REQUIRE_TENANT".into(), "true".into())],
        ..Opts::default()
    });
    let plain = s.token("ana", &[], None);
    let r = post_raw(&s, &plain, b"x".to_vec(), None, None).await;
    problem(r, 403).await;
    let t = s.token("ana", &[], Some("t1"));
    assert_eq!(
        post_raw(&s, &t, b"x".to_vec(), None, None).await.status(),
        201
    );
}

#[tokio::test]
async fn signed_links_serve_one_file_without_a_token_until_they_expire() {
    let s = Server::start(Opts {
        env: vec![("ARCA_FILES__LINK_TTL".into(), "2s".into())],
        ..Opts::default()
    });
    let t = s.token("ana", &[], Some("t1"));
    let png = encoded(&picture(300, 150), ImageFormat::Png);
    let a = id_of(&uploaded(&s, &t, png.clone(), None).await);
    let b = id_of(&uploaded(&s, &t, b"other file".to_vec(), None).await);
    let r = client()
        .post(s.url(&format!("/v1/files/{a}/links")))
        .bearer_auth(&t)
        .send()
        .await
        .expect("link");
    assert_eq!(r.status(), 201);
    let link: Value = r.json().await.expect("json");
    assert_eq!(link["expires_in"], 2);
    let url = link["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with(&format!("/v1/files/{a}?")), "{url}");
    let anonymous = |path: String| async move {
        let r = client().get(path).send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("b").to_vec())
    };
    // The bytes and the thumbnails of that file, without a token.
    assert_eq!(anonymous(s.url(&url)).await, (200, png.clone()));
    let query = url.split_once('?').expect("query").1.to_owned();
    let (status, thumb) =
        anonymous(s.url(&format!("/v1/files/{a}/thumbnail?size=32&{query}"))).await;
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&thumb).expect("thumb").width(), 32);
    // Not its metadata, not another file, not tampered with.
    assert_eq!(
        anonymous(s.url(&format!("/v1/files/{a}/metadata?{query}")))
            .await
            .0,
        401
    );
    assert_eq!(
        anonymous(s.url(&format!("/v1/files/{b}?{query}"))).await.0,
        401
    );
    let tampered = query.replace("tid=t1", "tid=t2");
    assert_eq!(
        anonymous(s.url(&format!("/v1/files/{a}?{tampered}")))
            .await
            .0,
        401
    );
    let exp: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("exp="))
        .expect("exp")
        .parse()
        .expect("n");
    let later = query.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    assert_eq!(
        anonymous(s.url(&format!("/v1/files/{a}?{later}"))).await.0,
        401
    );
    let mut broken = query.clone();
    broken.push('A');
    assert_eq!(
        anonymous(s.url(&format!("/v1/files/{a}?{broken}"))).await.0,
        401
    );
    // Expired.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(s.url(&url)).send().await.expect("get");
    let p = problem(r, 401).await;
    assert!(p["detail"].as_str().expect("d").contains("expired"), "{p}");
}

#[tokio::test]
async fn links_survive_one_key_rotation_and_another_replica_accepts_them() {
    let s = Server::start(Opts {
        env: vec![("ARCA_FILES__LINK_TTL".into(), "1h".into())],
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    let id = id_of(&uploaded(&s, &t, b"rotate me".to_vec(), None).await);
    let link = |s: &Server| {
        let (url, t) = (s.url(&format!("/v1/files/{id}/links")), t.clone());
        async move {
            let r = client()
                .post(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("link");
            let v: Value = r.json().await.expect("json");
            v["url"].as_str().expect("url").to_owned()
        }
    };
    let first = link(&s).await;
    // A second replica on the same store accepts it (the key is in the
    // store, not in the process).
    let replica = Server::start(Opts {
        data: Some(s.data.clone()),
        env: vec![("ARCA_FILES__LINK_TTL".into(), "1h".into())],
        ..Opts::default()
    });
    assert_eq!(
        client()
            .get(replica.url(&first))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let rotate = || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["rotate-key", "links"]).envs(s.env.clone());
        stdout_of(&mut cmd, "arca rotate-key")
    };
    assert!(rotate().contains("rotated"));
    // The previous key still verifies.
    assert_eq!(
        client()
            .get(s.url(&first))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(replica.url(&first))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    // A second rotation retires it: a server reading the keys now (each
    // rereads them within 30 s) refuses it, and accepts new links.
    rotate();
    let third = Server::start(Opts {
        data: Some(s.data.clone()),
        env: vec![("ARCA_FILES__LINK_TTL".into(), "1h".into())],
        ..Opts::default()
    });
    assert_eq!(
        client()
            .get(third.url(&first))
            .send()
            .await
            .expect("get")
            .status(),
        401
    );
    let fresh = link(&third).await;
    assert_eq!(
        client()
            .get(third.url(&fresh))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    // A server still holding the older keys rereads them when a link
    // fails to verify, so a link signed with the new key works there too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        client()
            .get(replica.url(&fresh))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["rotate-key", "cursor"]).envs(s.env.clone());
    assert_eq!(
        cmd.output().expect("run").status.code(),
        Some(2),
        "only links rotate"
    );
}

#[tokio::test]
async fn fifty_concurrent_uploads_all_land_intact() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let (url, t) = (s.url("/v1/files"), t.clone());
        tasks.push(tokio::spawn(async move {
            let bytes: Vec<u8> = (0..(300_000 + i * 1000))
                .map(|j| (j * (i + 1) % 251) as u8)
                .collect();
            let r = client()
                .post(url)
                .bearer_auth(t)
                .body(bytes.clone())
                .send()
                .await
                .expect("upload");
            assert_eq!(r.status(), 201);
            let meta: Value = r.json().await.expect("json");
            (id_of(&meta), bytes)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (id, bytes) = task.await.expect("task");
        let (status, _, body) = get_bytes(&s, &format!("/v1/files/{id}"), &t).await;
        assert_eq!(status, 200);
        assert!(body == bytes, "{id}: the bytes came back changed");
        assert!(ids.insert(id), "ids are unique");
    }
}

/// The server's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn an_upload_is_never_held_whole_in_memory() {
    let s = Server::start(Opts {
        env: vec![("ARCA_FILES__MAX_BYTES".into(), (200u64 << 20).to_string())],
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    // Warm up (first allocations, thread stacks).
    uploaded(&s, &t, vec![1u8; 1 << 20], None).await;
    let before = peak_rss_kib(&s);
    // 160 MiB, streamed in 64 KiB pieces (64 MiB on MongoDB: the stand-in
    // is a Python server that keeps every byte in memory, and the bound
    // below is still well under the file's size).
    let total: usize = if common::mongodb() {
        64 << 20
    } else {
        160 << 20
    };
    let chunks = futures_util::stream::iter(
        (0..total / (64 << 10))
            .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; 64 << 10]))),
    );
    let r = client()
        .post(s.url("/v1/files"))
        .bearer_auth(&t)
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let meta: Value = r.json().await.expect("json");
    assert_eq!(meta["size"], total);
    // And read back whole, streamed too.
    let r = s.get(&format!("/v1/files/{}", id_of(&meta)), &t).await;
    let mut stream = r.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        n += chunk.expect("chunk").len();
    }
    assert_eq!(n, total);
    let grown = peak_rss_kib(&s).saturating_sub(before);
    let bound = if common::mongodb() { 24 } else { 48 };
    assert!(
        grown < bound * 1024,
        "a {} MiB upload and download grew the server's peak memory by {grown} KiB",
        total >> 20
    );
}

/// Sends an upload's head and the first `sent` of `total` bytes on a raw
/// connection, returning it to send the rest.
fn partial_upload(s: &Server, token: &str, total: usize, sent: usize) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(&s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        c,
        "POST /v1/files?filename=slow.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
    )
    .expect("head");
    c.write_all(&vec![7u8; sent]).expect("body");
    c.flush().expect("flush");
    c
}

fn read_response(mut c: std::net::TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn an_upload_in_flight_at_sigterm_completes() {
    let data = std::sync::Arc::new(TempDir::new("files-term"));
    let mut s = Server::start(Opts {
        data: Some(data.clone()),
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    let total = 3 << 20;
    let mut c = partial_upload(&s, &t, total, 1 << 20);
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    c.write_all(&vec![7u8; total - (1 << 20)]).expect("rest");
    let (status, text) = read_response(c);
    assert_eq!(status, 201, "{text}");
    let status = s.wait_exit(Duration::from_secs(30));
    assert!(status.success());
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.get(..32))
        .expect("id")
        .to_owned();
    // After a restart the file is there, whole.
    let s = Server::start(Opts {
        data: Some(data),
        ..Opts::default()
    });
    let (status, _, body) = get_bytes(&s, &format!("/v1/files/{id}"), &t).await;
    assert_eq!(status, 200);
    assert_eq!(body, vec![7u8; total]);
}

#[tokio::test]
async fn a_kill_mid_upload_leaves_nothing_visible_or_half_written() {
    let data = std::sync::Arc::new(TempDir::new("files-kill"));
    let mut s = Server::start(Opts {
        data: Some(data.clone()),
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    let done = uploaded(&s, &t, b"committed before".to_vec(), None).await;
    let c = partial_upload(&s, &t, 4 << 20, 2 << 20);
    std::thread::sleep(Duration::from_millis(500));
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
    drop(c);
    if !common::mongodb() {
        // Only the committed file was placed; the half upload is a
        // temporary file at most.
        assert_eq!(placed(&data.0.join("files")), vec![16]);
        // Age the leftovers as if a day had passed: the next start sweeps
        // them.
        for f in std::fs::read_dir(data.0.join("files/tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
            std::fs::File::options()
                .write(true)
                .open(f.path())
                .and_then(|h| h.set_modified(old))
                .expect("age");
        }
    }
    let s = Server::start(Opts {
        data: Some(data.clone()),
        ..Opts::default()
    });
    let (status, _, body) = get_bytes(&s, &format!("/v1/files/{}", id_of(&done)), &t).await;
    assert_eq!((status, body), (200, b"committed before".to_vec()));
    if !common::mongodb() {
        tmp_drains(&data.0);
        assert_eq!(placed(&data.0.join("files")), vec![16]);
    }
}

/// The sizes of the files placed under the embedded engine's `files`
/// folder (temporary files aside).
fn placed(root: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for shard in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            sizes.push(f.metadata().expect("meta").len());
        }
    }
    sizes.sort_unstable();
    sizes
}

/// Waits until the embedded engine's temporary upload folder is empty.
fn tmp_drains(data: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = std::fs::read_dir(data.join("files/tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} temporary files left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_retried_with_its_idempotency_key_is_stored_once() {
    let data = std::sync::Arc::new(TempDir::new("files-idem"));
    let s = Server::start(Opts {
        data: Some(data.clone()),
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    let post = |key: &str, bytes: &[u8]| {
        client()
            .post(s.url("/v1/files?filename=notes.txt"))
            .bearer_auth(&t)
            .header("idempotency-key", key)
            .header("content-type", "text/plain")
            .body(bytes.to_vec())
            .send()
    };
    let first = post("upload-1", b"the first bytes").await.expect("post");
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = header(first.headers(), "location");
    let first: Value = first.json().await.expect("json");
    // The retry is answered with the first upload's answer.
    let again = post("upload-1", b"the first bytes").await.expect("post");
    assert_eq!(again.status(), 201);
    assert_eq!(header(again.headers(), "idempotent-replayed"), "true");
    assert_eq!(header(again.headers(), "location"), location);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again, first);
    // The same key for other bytes is another request.
    let other = post("upload-1", b"other bytes").await.expect("post");
    assert_eq!(other.status(), 422);
    let other: Value = other.json().await.expect("json");
    assert_eq!(other["type"], "urn:arca:problem:idempotency-key-reused");
    // A malformed key is refused before the body counts.
    let bad = post("two words", b"x").await.expect("post");
    assert_eq!(bad.status(), 400);
    // Retries at once: every 201 names one file; the others wait (409).
    let tries = (0..6).map(|_| post("upload-2", b"sent six times at once"));
    let mut ids = std::collections::BTreeSet::new();
    for r in futures_util::future::join_all(tries).await {
        let r = r.expect("post");
        match r.status().as_u16() {
            201 => {
                let meta: Value = r.json().await.expect("json");
                ids.insert(id_of(&meta));
            }
            409 => assert!(r.headers().get("retry-after").is_some()),
            other => panic!("status {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().expect("one id");
    let (status, _, body) = get_bytes(&s, &format!("/v1/files/{id}"), &t).await;
    assert_eq!((status, body), (200, b"sent six times at once".to_vec()));
    let (status, _, body) = get_bytes(&s, &location, &t).await;
    assert_eq!((status, body), (200, b"the first bytes".to_vec()));
    if !common::mongodb() {
        // Two files placed; every retry's bytes were thrown away.
        tmp_drains(&data.0);
        assert_eq!(placed(&data.0.join("files")), vec![15, 22]);
    }
}

#[tokio::test]
async fn uploads_have_their_own_time_budget_and_limits() {
    let s = Server::start(Opts {
        env: vec![
            ("ARCA_SERVER__REQUEST_TIMEOUT".into(), "1s".into()),
            ("ARCA_FILES__UPLOAD_TIMEOUT".into(), "4s".into()),
            ("ARCA_FILES__MAX_BYTES".into(), "1000000".into()),
        ],
        ..Opts::default()
    });
    let t = s.token("ana", &[], None);
    // Slower than server.request_timeout, within files.upload_timeout.
    let mut c = partial_upload(&s, &t, 300_000, 100_000);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(900));
        c.write_all(&vec![7u8; 100_000]).expect("more");
    }
    let (status, text) = read_response(c);
    assert_eq!(status, 201, "{text}");
    // Slower than files.upload_timeout: 408.
    let c = partial_upload(&s, &t, 300_000, 100_000);
    let started = std::time::Instant::now();
    let (status, text) = read_response(c);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("files.upload_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // Content-Length over files.max_bytes: 413 before any body is read.
    let mut c = std::net::TcpStream::connect(&s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("t");
    write!(c, "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 1000001\r\n\r\n").expect("head");
    let mut head = [0u8; 12];
    c.read_exact(&mut head).expect("answer without the body");
    assert_eq!(&head[9..12], b"413");
    // A body without a length that grows past it: 413 too.
    let chunks = futures_util::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 50_000]))),
    );
    let r = client()
        .post(s.url("/v1/files"))
        .bearer_auth(&t)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(
            problem(r, 413).await["type"],
            "urn:arca:problem:payload-too-large"
        ),
        // The server may answer and close before the client finished.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // JSON routes keep their own body limit and timeout.
    let r = client()
        .post(s.url("/v1/files"))
        .bearer_auth(&t)
        .header("content-encoding", "gzip")
        .body("x")
        .send()
        .await
        .expect("post");
    problem(r, 415).await;
}

#[tokio::test]
async fn backup_while_uploading_and_restore_carry_the_files() {
    let s = Server::dev();
    let t = s.token("ana", &[], Some("t1"));
    if common::mongodb() {
        return; // MongoDB backups are mongodump's (GridFS included): documents.rs checks the message.
    }
    let png = encoded(&picture(120, 80), ImageFormat::Png);
    let image_id = id_of(&uploaded(&s, &t, png.clone(), None).await);
    // A thumbnail in the cache, which the backup carries too.
    assert_eq!(
        s.get(&format!("/v1/files/{image_id}/thumbnail?size=32"), &t)
            .await
            .status(),
        200
    );
    let deleted = id_of(&uploaded(&s, &t, b"gone before the backup".to_vec(), None).await);
    assert_eq!(
        s.delete(&format!("/v1/files/{deleted}"), &t).await.status(),
        204
    );
    // Uploads keep coming, one after another, while the backup runs.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u8)>::new()));
    let writer = {
        let (url, t, acked) = (s.url("/v1/files"), t.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..40u8 {
                let r = client()
                    .post(&url)
                    .bearer_auth(&t)
                    .body(vec![i; 200_000])
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.expect("json");
                acked.lock().expect("acked").push((id_of(&v), i));
            }
        })
    };
    while acked.lock().expect("acked").len() < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_backup = acked.lock().expect("acked").len();
    let out = TempDir::new("files-backup");
    let dest = out.0.join("backup.tar");
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("backup").arg(&dest).envs(s.env.clone());
    let summary = stdout_of(&mut cmd, "arca backup");
    assert!(summary.contains("stored files"), "{summary}");
    writer.await.expect("writer");
    let uploaded_during = acked.lock().expect("acked").clone();
    let restored = std::sync::Arc::new(TempDir::new("files-restored"));
    tar::Archive::new(std::fs::File::open(&dest).expect("archive"))
        .unpack(&restored.0)
        .expect("extract");
    std::fs::copy(
        s.data.0.join("dev-signing-key.p8"),
        restored.0.join("dev-signing-key.p8"),
    )
    .expect("key");
    let r = Server::start(Opts {
        data: Some(restored),
        ..Opts::default()
    });
    let (status, _, body) = get_bytes(&r, &format!("/v1/files/{image_id}"), &t).await;
    assert_eq!((status, body), (200, png));
    assert_eq!(
        r.get(&format!("/v1/files/{image_id}/thumbnail?size=32"), &t)
            .await
            .status(),
        200
    );
    assert_eq!(
        r.get(&format!("/v1/files/{deleted}"), &t).await.status(),
        404
    );
    // One point in time: the uploads in it are the first k (k at least
    // those acknowledged before the backup began), each one whole.
    let mut present = Vec::new();
    for (id, i) in &uploaded_during {
        let (status, _, body) = get_bytes(&r, &format!("/v1/files/{id}"), &t).await;
        match status {
            200 => {
                assert!(body == vec![*i; 200_000], "{id}: not whole");
                present.push(true);
            }
            404 => present.push(false),
            other => panic!("{id}: {other}"),
        }
    }
    let k = present.iter().take_while(|p| **p).count();
    assert!(
        k >= before_backup,
        "{k} of the {before_backup} acknowledged before"
    );
    assert!(present[k..].iter().all(|p| !p), "a gap: {present:?}");
}
