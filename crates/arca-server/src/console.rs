//! `/console`: the web console. Its pages are plain HTML, CSS and
//! JavaScript modules kept in `crates/arca-server/console/` and embedded in
//! the binary with `include_bytes!`: nothing is built, downloaded or read
//! from disk at run time. The console is a client like any other: it calls
//! the public API with the signed-in caller's token and has no privileges
//! of its own, so these routes are public and need no token (they ignore an
//! `Authorization` header, which browsers do not send here anyway). They
//! are not in the OpenAPI document: they are a page, not an API.
//!
//! Every response here carries a strict `Content-Security-Policy` (scripts
//! only from this origin, no inline script or eval, Trusted Types required
//! so no HTML string can reach a script sink, no framing), `nosniff` and
//! `Referrer-Policy: no-referrer`. Assets are gzip-compressed once, at
//! first use, and revalidated by a strong `ETag` (`Cache-Control:
//! no-cache`): their names carry no version, so a browser must never mix
//! the modules of two releases.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::origin_of;
use crate::error::{ApiError, ProblemKind};
use crate::openapi::accepts_gzip;
use crate::state::AppState;

/// One embedded file of the console.
struct Asset {
    /// Its path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../console/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console consists of. A file missing here is missing
/// from the binary (and a test loads each page in a browser).
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/main.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/api.js", JS),
    asset!("js/session.js", JS),
    asset!("js/oidc.js", JS),
    asset!("js/jsonedit.js", JS),
    asset!("js/pages/signin.js", JS),
    asset!("js/pages/collections.js", JS),
    asset!("js/pages/definition.js", JS),
    asset!("js/pages/documents.js", JS),
    asset!("js/pages/document.js", JS),
    asset!("js/pages/access.js", JS),
    asset!("js/pages/events.js", JS),
    asset!("js/pages/files.js", JS),
];

/// An asset as sent: plain and gzip-compressed, with its strong `ETag`.
struct Prepared {
    content_type: HeaderValue,
    plain: Bytes,
    gzip: Bytes,
    etag: HeaderValue,
}

impl Prepared {
    fn of(content_type: &'static str, bytes: Bytes) -> Self {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let gzip = gz
            .write_all(&bytes)
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        Self {
            content_type: HeaderValue::from_static(content_type),
            etag: strong_etag(&bytes),
            plain: bytes,
            gzip: gzip.into(),
        }
    }

    /// The response to `headers` (a GET or HEAD): 304 when `If-None-Match`
    /// names this version, else the bytes, gzip-encoded when accepted.
    fn respond(&self, headers: &HeaderMap) -> Response {
        let mut res =
            if crate::conditions::not_modified(headers, self.etag.to_str().unwrap_or_default()) {
                StatusCode::NOT_MODIFIED.into_response()
            } else if accepts_gzip(headers.get_all(header::ACCEPT_ENCODING).iter()) {
                let mut res = self.gzip.clone().into_response();
                res.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                res
            } else {
                self.plain.clone().into_response()
            };
        let ok = res.status() == StatusCode::OK;
        let h = res.headers_mut();
        if ok {
            h.insert(header::CONTENT_TYPE, self.content_type.clone());
        }
        h.insert(header::ETAG, self.etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        res
    }
}

/// `"<16 hex digits>"`: a hash of the bytes, stable across restarts and
/// builds (`DefaultHasher::new` has fixed keys), so an unchanged file
/// keeps its tag across releases.
fn strong_etag(bytes: &[u8]) -> HeaderValue {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hasher::write(&mut hasher, bytes);
    let tag = format!("\"{:016x}\"", std::hash::Hasher::finish(&hasher));
    HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The embedded assets, prepared once (compressing them all takes a few
/// milliseconds, paid by the first console request, not by the start).
fn prepared() -> &'static [(&'static str, Prepared)] {
    static PREPARED: OnceLock<Vec<(&'static str, Prepared)>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                (
                    a.path,
                    Prepared::of(a.content_type, Bytes::from_static(a.bytes)),
                )
            })
            .collect()
    })
}

fn asset(path: &str) -> Option<&'static Prepared> {
    prepared().iter().find(|(p, _)| *p == path).map(|(_, a)| a)
}

/// The console's `Content-Security-Policy`. `connect-src` adds the OIDC
/// issuer's origin when the console signs in there (discovery and the
/// token exchange are requests from the page); nothing else may be
/// fetched, framed, posted to or loaded from elsewhere.
pub fn content_security_policy(issuer_origin: Option<&str>) -> String {
    let connect = match issuer_origin {
        Some(o) => format!("'self' {o}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'"
    )
}

/// What the page reads at start (`/console/config.json`): where to sign
/// in and how to read the token's claims. Nothing here is a secret: it is
/// what any caller could learn from the discovery document and the docs.
fn client_config(state: &AppState) -> serde_json::Value {
    let cfg = state.config();
    let auth = state.auth();
    let dev = auth.is_dev();
    // In dev mode the server trusts only its local key: an issuer in the
    // configuration is not used, so the console must not offer it.
    let oidc = match (&cfg.auth.issuer, &cfg.console.client_id) {
        (Some(issuer), Some(client_id)) if !dev => json!({
            "issuer": issuer,
            "client_id": client_id,
            "scope": cfg.console.scope,
        }),
        _ => serde_json::Value::Null,
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "dev": dev,
        "oidc": oidc,
        "claims": {"roles": cfg.auth.roles_claim, "tenant": cfg.auth.tenant_claim},
        "roles": {"admin": cfg.auth.admin_role, "schema_admin": cfg.auth.schema_admin()},
        // Pages for APIs that this server does not have (yet, or turned
        // off) stay out of the navigation.
        "features": {"files": true, "events": cfg.events.enabled},
    })
}

/// The console routes (`/console`, `/console/`, `/console/config.json`
/// and the embedded files), each response with the security headers.
pub fn router(state: &AppState) -> Router<AppState> {
    let dev = state.auth().is_dev();
    let issuer_origin = state
        .config()
        .console
        .client_id
        .as_ref()
        .filter(|_| !dev)
        .and(state.config().auth.issuer.as_deref())
        .and_then(origin_of);
    let headers = Arc::new(security_headers(&content_security_policy(
        issuer_origin.as_deref(),
    )));
    let config = Arc::new(Prepared::of(
        "application/json",
        Bytes::from(serde_json::to_vec(&client_config(state)).unwrap_or_default()),
    ));
    Router::new()
        // Relative, so the redirect also works behind a path prefix; the
        // page's own links are relative to `/console/`.
        .route(
            "/console",
            get(|| async {
                (
                    StatusCode::PERMANENT_REDIRECT,
                    [(header::LOCATION, "console/")],
                )
            }),
        )
        .route("/console/", get(index))
        .route(
            "/console/config.json",
            get(move |h: HeaderMap| async move { config.respond(&h) }),
        )
        .route("/console/{*path}", get(file))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let headers = headers.clone();
                async move {
                    let mut res = next.run(req).await;
                    for (name, value) in headers.iter() {
                        res.headers_mut().insert(name.clone(), value.clone());
                    }
                    res
                }
            },
        ))
}

/// The headers every console response carries.
fn security_headers(csp: &str) -> Vec<(HeaderName, HeaderValue)> {
    let csp = HeaderValue::from_str(csp).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    vec![
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // For browsers older than frame-ancestors.
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

async fn index(headers: HeaderMap) -> Response {
    match asset("index.html") {
        Some(a) => a.respond(&headers),
        None => ApiError::internal("the console's index.html is not embedded").into_response(),
    }
}

async fn file(
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match asset(&path) {
        Some(a) => a.respond(&headers),
        None => {
            let shown: String = path.chars().take(200).collect();
            ApiError::new(
                ProblemKind::RouteNotFound,
                format!("no console file {shown}"),
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_known_type_and_content() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            let ext = a.path.rsplit('.').next().unwrap_or_default();
            let expected = match ext {
                "html" => HTML,
                "js" => JS,
                "css" => "text/css; charset=utf-8",
                "svg" => "image/svg+xml",
                other => panic!("{}: unexpected extension {other}", a.path),
            };
            assert_eq!(a.content_type, expected, "{}", a.path);
        }
    }

    /// No script of the console builds HTML from strings or evaluates
    /// code: data reaches the page only as text. (The CSP and Trusted
    /// Types enforce it in browsers; this keeps it true in the source.)
    #[test]
    fn no_asset_uses_html_or_code_sinks() {
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).expect("utf-8");
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setTimeout('",
                "setTimeout(\"",
                "createContextualFragment",
                "DOMParser",
            ] {
                assert!(!text.contains(sink), "{} uses {sink}", a.path);
            }
        }
    }

    #[test]
    fn index_loads_only_relative_module_scripts_and_no_inline_code() {
        let index = std::str::from_utf8(asset("index.html").expect("index").plain.as_ref())
            .expect("utf-8")
            .to_owned();
        assert!(index.contains(r#"<script type="module" src="js/main.js"></script>"#));
        assert_eq!(index.matches("<script").count(), 1, "one script tag");
        assert!(!index.contains("style="), "no inline style");
        let handler = index.split(' ').skip(1).any(|w| {
            w.starts_with("on")
                && w.split_once('=').is_some_and(|(name, _)| {
                    name.len() > 2 && name.bytes().all(|b| b.is_ascii_lowercase())
                })
        });
        assert!(!handler, "no inline event handler attributes");
        assert!(!index.contains("http"), "no absolute URL");
    }

    #[test]
    fn the_policy_allows_the_issuer_only_for_connections() {
        let csp = content_security_policy(Some("https://login.example.com"));
        assert!(csp.contains("connect-src 'self' https://login.example.com;"));
        assert!(csp.contains("script-src 'self';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(csp.matches("login.example.com").count(), 1);
        assert!(content_security_policy(None).contains("connect-src 'self';"));
    }

    #[test]
    fn etags_revalidate() {
        let a = Prepared::of(JS, Bytes::from_static(b"export const x = 1;\n"));
        let mut h = HeaderMap::new();
        assert_eq!(a.respond(&h).status(), 200);
        h.insert(header::IF_NONE_MATCH, a.etag.clone());
        let res = a.respond(&h);
        assert_eq!(res.status(), 304);
        assert_eq!(res.headers()[header::ETAG], a.etag);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(a.respond(&h).status(), 200);
    }
}
