//! `web.root`: a folder of static files (a built front-end: a web SPA, an
//! Expo web export) served at `/` from disk, so an app needs no second
//! server. Every route of the API, the docs, the console and operations
//! wins: only paths no route matched get here, and those under the
//! reserved prefixes (`/v1/`, `/docs`, `/openapi.json`, `/console`,
//! `/healthz`, `/readyz`, `/metrics`) stay 404 problems.
//!
//! What a request gets, for `GET` and `HEAD` only:
//! - a file: its bytes, or its precompressed `.br` / `.gz` sibling when
//!   the client accepts that coding (`Content-Encoding`, `Vary`); a weak
//!   `ETag` (size, modification time, inode and coding) with
//!   `If-None-Match` -> 304; `Cache-Control: public, max-age=31536000,
//!   immutable` for fingerprinted files (a content hash in the name, or
//!   under a `web.immutable` folder), `no-cache` for the rest (HTML
//!   always), so a new release is seen at once;
//! - a folder: its `index.html` (a path without the final `/` is
//!   redirected to it first); never a listing;
//! - nothing there: the root `index.html` when the request accepts HTML
//!   (a browser navigating to a client-side route), else 404.
//!
//! Every answer carries `web.csp` (default: `default_csp`), `nosniff` and
//! a referrer policy. Paths are percent-decoded segment by segment: a `.`
//! or `..` segment, or a segment holding `/`, `\` or NUL once decoded, is
//! 400; hidden names (`.env`, `.git`, but not `.well-known`) are never
//! served; and every file is opened by its canonical path, which must lie
//! inside the canonical root, so a symbolic link pointing outside serves
//! nothing.
//!
//! Hand-written rather than tower-http's `ServeDir`: that one lists no
//! folder either but knows neither the HTML fallback, the symlink
//! containment, the fingerprint rule nor ETags, and would add its own
//! dependencies; this is one file over `tokio::fs`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use crate::config::{Config, origin_of};
use crate::error::{ApiError, ProblemKind};
use crate::state::AppState;

/// First path segments that belong to the server, never to the site.
const RESERVED: &[&str] = &[
    "v1",
    "docs",
    "openapi.json",
    "console",
    "healthz",
    "readyz",
    "metrics",
];

/// Files up to this size are read whole; larger ones are streamed.
const READ_WHOLE: u64 = 1 << 20;

/// The chunk size of a streamed file.
const CHUNK: usize = 64 << 10;

/// How long a fingerprinted file may be cached (a year, the most
/// browsers honour).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The default `Content-Security-Policy` of the site: everything from this
/// origin only, no plugins, no framing; inline styles allowed (many UI
/// libraries and Expo's web export inject them), inline scripts not;
/// `connect-src` adds the OIDC issuer's origin, which a browser app
/// signing in with the authorization code flow calls for its tokens.
pub fn default_csp(issuer_origin: Option<&str>) -> String {
    let connect = match issuer_origin {
        Some(o) => format!("'self' {o}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: blob:; font-src 'self' data:; connect-src {connect}; \
         object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The served folder and how it is served.
#[derive(Debug)]
pub struct Site {
    /// `web.root`, canonical (symbolic links resolved).
    root: PathBuf,
    /// The headers every answer carries.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `web.immutable`, each as `folder/`.
    immutable: Vec<String>,
}

impl Site {
    /// The site `web.root` names (`None` when unset); an error naming the
    /// key when the folder cannot be served.
    pub fn open(cfg: &Config) -> Result<Option<Self>, String> {
        let Some(root) = &cfg.web.root else {
            return Ok(None);
        };
        let canonical = std::fs::canonicalize(root)
            .map_err(|e| format!("web.root: {}: {e}", root.display()))?;
        if !canonical.is_dir() {
            return Err(format!("web.root: {} is not a folder", root.display()));
        }
        let csp = match &cfg.web.csp {
            Some(csp) => csp.clone(),
            None => default_csp(cfg.auth.issuer.as_deref().and_then(origin_of).as_deref()),
        };
        let mut headers = vec![
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("strict-origin-when-cross-origin"),
            ),
        ];
        if !csp.is_empty() {
            let value = HeaderValue::from_str(&csp)
                .map_err(|_| "web.csp: not a valid header value".to_owned())?;
            headers.push((header::CONTENT_SECURITY_POLICY, value));
        }
        Ok(Some(Self {
            root: canonical,
            headers,
            immutable: cfg
                .web
                .immutable
                .iter()
                .map(|p| format!("{}/", p.trim_matches('/')))
                .collect(),
        }))
    }

    /// The answer to a `GET` (or `HEAD`) of `raw_path` (as sent,
    /// percent-encoded).
    async fn serve(&self, head: bool, raw_path: &str, headers: &HeaderMap) -> Response {
        let mut res = match segments(raw_path) {
            Ok(segs) => self.answer(head, raw_path, &segs, headers).await,
            Err(e) => e.into_response(),
        };
        for (name, value) in &self.headers {
            res.headers_mut().insert(name.clone(), value.clone());
        }
        res
    }

    async fn answer(
        &self,
        head: bool,
        raw_path: &str,
        segs: &[String],
        headers: &HeaderMap,
    ) -> Response {
        let hidden = segs
            .iter()
            .any(|s| s.starts_with('.') && s != ".well-known");
        let found = if hidden { None } else { self.find(segs).await };
        match found {
            Some(Found::File(path, meta)) => {
                let rel = segs.join("/");
                self.file(head, &rel, &path, &meta, headers).await
            }
            Some(Found::Folder(_)) if !raw_path.ends_with('/') => {
                // Relative, so it also works behind a path prefix.
                let last = raw_path.rsplit('/').next().unwrap_or_default();
                let location = format!("{last}/");
                match HeaderValue::from_str(&location) {
                    Ok(v) => {
                        (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response()
                    }
                    Err(_) => self.fallback(head, headers).await,
                }
            }
            Some(Found::Folder(dir)) => match self.inside(&dir.join("index.html")).await {
                Some(Found::File(path, meta)) => {
                    let mut rel = segs.join("/");
                    rel.push_str("/index.html");
                    self.file(head, &rel, &path, &meta, headers).await
                }
                _ => self.fallback(head, headers).await,
            },
            None => self.fallback(head, headers).await,
        }
    }

    /// What `segs` names under the root, if it lies inside it.
    async fn find(&self, segs: &[String]) -> Option<Found> {
        let mut path = self.root.clone();
        path.extend(segs);
        self.inside(&path).await
    }

    /// `path` by its canonical name, if that is a file or a folder inside
    /// the root (a symbolic link may point anywhere; its target counts).
    async fn inside(&self, path: &Path) -> Option<Found> {
        let real = tokio::fs::canonicalize(path).await.ok()?;
        if !real.starts_with(&self.root) {
            tracing::debug!(path = %path.display(), "a web path leads outside web.root");
            return None;
        }
        let meta = tokio::fs::metadata(&real).await.ok()?;
        if meta.is_file() {
            Some(Found::File(real, meta))
        } else if meta.is_dir() {
            Some(Found::Folder(real))
        } else {
            None
        }
    }

    /// Nothing at the path: the root's `index.html` for a request that
    /// accepts HTML (client-side routing), else 404.
    async fn fallback(&self, head: bool, headers: &HeaderMap) -> Response {
        if accepts_html(headers)
            && let Some(Found::File(path, meta)) = self.inside(&self.root.join("index.html")).await
        {
            return self.file(head, "index.html", &path, &meta, headers).await;
        }
        ApiError::new(ProblemKind::RouteNotFound, "no such file").into_response()
    }

    /// A file, in the best coding the client accepts.
    async fn file(
        &self,
        head: bool,
        rel: &str,
        path: &Path,
        meta: &std::fs::Metadata,
        headers: &HeaderMap,
    ) -> Response {
        let accepted = headers.get_all(header::ACCEPT_ENCODING);
        let mut chosen = None;
        for (coding, ext) in [("br", "br"), ("gzip", "gz")] {
            if !crate::openapi::accepts_encoding(accepted.iter(), coding) {
                continue;
            }
            let mut sibling = path.as_os_str().to_owned();
            sibling.push(format!(".{ext}"));
            if let Some(Found::File(p, m)) = self.inside(Path::new(&sibling)).await {
                chosen = Some((coding, p, m));
                break;
            }
        }
        let (coding, path, meta) = match &chosen {
            Some((c, p, m)) => (Some(*c), p.as_path(), m),
            None => (None, path, meta),
        };
        let etag = weak_etag(meta, coding.unwrap_or("identity"));
        let cache = if is_html(rel) {
            "no-cache"
        } else if self.immutable.iter().any(|p| rel.starts_with(p.as_str()))
            || rel.rsplit('/').next().is_some_and(fingerprinted)
        {
            IMMUTABLE
        } else {
            "no-cache"
        };
        let mut res = if crate::conditions::not_modified(headers, etag.to_str().unwrap_or_default())
        {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            match body(head, path, meta.len()).await {
                Ok(body) => {
                    let mut res = Response::new(body);
                    let h = res.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(content_type(rel)),
                    );
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
                    if let Some(c) = coding {
                        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
                    }
                    res
                }
                // Gone since it was found (a deploy replacing the folder),
                // or not readable by this process: as if absent.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    tracing::warn!(path = %path.display(), error = %e, "a web.root file could not be read");
                    return ApiError::new(ProblemKind::RouteNotFound, "no such file")
                        .into_response();
                }
                Err(e) => {
                    return ApiError::internal(format!("reading {}: {e}", path.display()))
                        .into_response();
                }
            }
        };
        let h = res.headers_mut();
        h.insert(header::ETAG, etag);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        res
    }
}

/// What a path names.
enum Found {
    File(PathBuf, std::fs::Metadata),
    Folder(PathBuf),
}

/// The handler of every path no route matched: the site when there is one
/// and the request may be for it, else 404 problem+json.
pub async fn fallback(State(state): State<AppState>, req: Request) -> Response {
    let site = state.site();
    let method = req.method();
    let path = req.uri().path();
    let for_site = (method == Method::GET || method == Method::HEAD)
        && !segments(path)
            .ok()
            .and_then(|s| s.into_iter().next())
            .is_some_and(|first| RESERVED.contains(&first.as_str()));
    match site {
        Some(site) if for_site => {
            let mut res = site
                .serve(method == Method::HEAD, path, req.headers())
                .await;
            res.extensions_mut()
                .insert(crate::middleware::RouteLabel("web"));
            res
        }
        _ => crate::middleware::route_not_found(req.uri().clone())
            .await
            .into_response(),
    }
}

/// The path's segments, percent-decoded one by one (empty ones dropped);
/// 400 for anything that could name a file outside the folder.
fn segments(raw: &str) -> Result<Vec<String>, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("this path cannot name a file: {why}"));
    let mut out = Vec::new();
    for seg in raw.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| bad("it is not UTF-8 once percent-decoded"))?;
        if decoded == "." || decoded == ".." {
            return Err(bad("`.` and `..` segments are not allowed"));
        }
        if decoded.contains(['/', '\\', '\0']) {
            return Err(bad("a segment holds `/`, `\\` or NUL once percent-decoded"));
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

/// The body of a file (empty for `HEAD`): read whole when small, else
/// streamed in chunks.
async fn body(head: bool, path: &Path, len: u64) -> std::io::Result<Body> {
    if head {
        return Ok(Body::empty());
    }
    if len <= READ_WHOLE {
        return Ok(Body::from(tokio::fs::read(path).await?));
    }
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok(Body::from_stream(chunks))
}

/// A weak tag of one version of a file in one coding.
fn weak_etag(meta: &std::fs::Metadata, coding: &str) -> HeaderValue {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for n in [
        meta.len(),
        meta.ino(),
        u64::try_from(meta.mtime()).unwrap_or(0),
        u64::try_from(meta.mtime_nsec()).unwrap_or(0),
    ] {
        std::hash::Hasher::write_u64(&mut hasher, n);
    }
    std::hash::Hasher::write(&mut hasher, coding.as_bytes());
    let tag = format!("W/\"{:016x}\"", std::hash::Hasher::finish(&hasher));
    HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// Whether the request accepts HTML: `text/html` or
/// `application/xhtml+xml` listed with a non-zero quality (`*/*` alone is
/// not enough: API clients send it, and they get a 404).
fn accepts_html(headers: &HeaderMap) -> bool {
    crate::respond::accepts(headers, |range| {
        range.eq_ignore_ascii_case("text/html")
            || range.eq_ignore_ascii_case("application/xhtml+xml")
    })
}

fn extension(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_html(rel: &str) -> bool {
    matches!(extension(rel).as_str(), "html" | "htm")
}

/// The content type of a file, by its extension.
fn content_type(rel: &str) -> &'static str {
    match extension(rel).as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// Whether a file name carries a content hash (the build renames the file
/// when its content changes, so it may be cached for ever): a `.`- or
/// `-`-separated part of 8 to 64 hex digits with a digit and a letter
/// (webpack, Angular, Create React App, Expo, md5 names), or a name ending
/// in `-` and 8 base64url characters with a digit, an upper- and a
/// lower-case letter (Vite and Rollup). When unsure, a file is not
/// immutable: it is revalidated, which costs a 304.
pub fn fingerprinted(name: &str) -> bool {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let hex = stem.split(['.', '-']).any(|part| {
        (8..=64).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && part.bytes().any(|b| b.is_ascii_digit())
            && part.bytes().any(|b| b.is_ascii_alphabetic())
    });
    let base64url = stem.len() > 9 && {
        let (head, hash) = stem.split_at(stem.len() - 8);
        head.ends_with('-')
            && hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && hash.bytes().any(|b| b.is_ascii_digit())
            && hash.bytes().any(|b| b.is_ascii_uppercase())
            && hash.bytes().any(|b| b.is_ascii_lowercase())
    };
    hex || base64url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_recognised_and_plain_names_are_not() {
        for name in [
            "index-D4-o5Ts2.js",
            "index-C1lhsU3y.css",
            "main.8e5f2a1c.chunk.js",
            "main.1a2b3c4d5e6f7a8b.js",
            "entry-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d.js",
            "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c.png",
        ] {
            assert!(fingerprinted(name), "{name}");
        }
        for name in [
            "index.html",
            "logo.svg",
            "app.js",
            "my-component2.js",
            "report-20240101.pdf",
            "chunk-deadbeef.js",
            "apple-touch-icon.png",
            "vendor-react.js",
        ] {
            assert!(!fingerprinted(name), "{name}");
        }
    }

    #[test]
    fn traversal_in_any_encoding_is_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/%2E%2E/x",
            "/a/..%2f..%2fetc",
            "/a%5c..%5cb",
            "/a%00b",
            "/./x",
            "/%ff",
        ] {
            let e = segments(bad).expect_err(bad);
            assert_eq!(e.kind(), ProblemKind::BadRequest, "{bad}");
        }
        assert_eq!(
            segments("//assets/a%20b.js").expect("ok"),
            vec!["assets".to_owned(), "a b.js".to_owned()]
        );
        assert_eq!(segments("/").expect("root"), Vec::<String>::new());
        assert_eq!(
            segments("/a..b/c.").expect("dots inside names"),
            ["a..b", "c."]
        );
    }

    #[test]
    fn html_is_accepted_only_when_named() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).expect("value"));
            m
        };
        assert!(accepts_html(&h(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!accepts_html(&h("*/*")));
        assert!(!accepts_html(&h("application/json")));
        assert!(!accepts_html(&h("text/html;q=0")));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn the_default_policy_allows_the_issuer_for_connections_only() {
        let csp = default_csp(Some("https://auth.example.com"));
        assert!(csp.contains("connect-src 'self' https://auth.example.com;"));
        assert!(csp.contains("script-src 'self';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(default_csp(None).contains("connect-src 'self';"));
    }
}
