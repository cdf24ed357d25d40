//! `Authenticator`: turns a bearer token into an `Identity`.
//!
//! Keys come from the IdP's JWKS (found by OIDC discovery or configured),
//! fetched at start with retries and backoff (the IdP may start after Arca),
//! refreshed in the background, and refetched when a token names an unknown
//! `kid` — at most once per `jwks_min_refetch`, so random kids cannot turn
//! into a flood of JWKS requests. Verified tokens are cached by the SHA-256
//! of the token until they expire, so a repeat request skips the signature
//! check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};
use sha2::Digest;

use crate::dev::{DEV_AUDIENCE, DEV_ISSUER, DevKeys};
use crate::identity::{Identity, dotted, roles_from, tenant_from};
use crate::keys::{KeySet, is_accepted};
use crate::settings::AuthSettings;

/// Largest accepted token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. The text is safe to show: it never contains the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Over `MAX_TOKEN_BYTES`.
    #[error("token larger than 16 KiB")]
    TooLarge,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// `none`, HMAC, or an unknown algorithm.
    #[error("signing algorithm not accepted")]
    Algorithm,
    /// No key with the token's `kid` (even after a refetch).
    #[error("unknown signing key")]
    UnknownKey,
    /// The key named by `kid` is not of the token's algorithm.
    #[error("signing key does not match the token's algorithm")]
    KeyMismatch,
    /// Signature check failed.
    #[error("bad signature")]
    Signature,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` not accepted.
    #[error("audience not accepted")]
    Audience,
    /// `iss` not accepted.
    #[error("issuer not accepted")]
    Issuer,
    /// A required claim is missing.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// A claim has the wrong form.
    #[error("{0}")]
    BadClaim(String),
    /// No keys loaded yet (the IdP has not answered since start).
    #[error("signing keys not loaded yet")]
    KeysUnavailable,
}

/// Where keys come from.
enum KeySource {
    /// `--dev`: one local key, never refetched.
    Dev,
    /// An IdP: discovery from the issuer, or a configured JWKS URL.
    Remote { http: reqwest::Client },
}

/// Verifies bearer tokens and keeps the keys current.
pub struct Authenticator {
    settings: AuthSettings,
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    source: KeySource,
    keys: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    refetch_gate: tokio::sync::Mutex<Option<Instant>>,
    cache: Option<quick_cache::sync::Cache<[u8; 32], Arc<Identity>>>,
    fetches: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// An authenticator for an IdP: keys are fetched by `run_refresh`.
    pub fn remote(settings: AuthSettings) -> Result<Arc<Self>, String> {
        if settings.issuer.is_none() && settings.jwks_url.is_none() {
            return Err("set auth.issuer (or auth.jwks_url), or run with --dev".into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("arca/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let issuer = settings.issuer.clone();
        let audiences = settings.audience.as_ref().map(|a| a.values());
        Ok(Arc::new(Self::build(
            settings,
            issuer,
            audiences,
            KeySource::Remote { http },
            KeySet::default(),
            false,
        )))
    }

    /// An authenticator that never fetches keys and verifies nothing: for
    /// offline tools (`arca openapi`) that only need the settings.
    pub fn inert(settings: AuthSettings) -> Arc<Self> {
        let issuer = settings.issuer.clone();
        let audiences = settings.audience.as_ref().map(|a| a.values());
        let http = reqwest::Client::new();
        Arc::new(Self::build(
            settings,
            issuer,
            audiences,
            KeySource::Remote { http },
            KeySet::default(),
            false,
        ))
    }

    /// An authenticator that trusts only the dev key.
    pub fn dev(settings: AuthSettings, keys: &DevKeys) -> Result<Arc<Self>, String> {
        let set = keys.key_set()?;
        Ok(Arc::new(Self::build(
            settings,
            Some(DEV_ISSUER.into()),
            Some(vec![DEV_AUDIENCE.into()]),
            KeySource::Dev,
            set,
            true,
        )))
    }

    fn build(
        settings: AuthSettings,
        issuer: Option<String>,
        audiences: Option<Vec<String>>,
        source: KeySource,
        keys: KeySet,
        loaded: bool,
    ) -> Self {
        let cache = (settings.token_cache_size > 0)
            .then(|| quick_cache::sync::Cache::new(settings.token_cache_size));
        Self {
            settings,
            issuer,
            audiences,
            source,
            keys: RwLock::new(Arc::new(keys)),
            loaded: AtomicBool::new(loaded),
            refetch_gate: tokio::sync::Mutex::new(None),
            cache,
            fetches: AtomicU64::new(0),
        }
    }

    /// The auth settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The issuer tokens must carry.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Whether this authenticator trusts only the local dev key.
    pub fn is_dev(&self) -> bool {
        matches!(self.source, KeySource::Dev)
    }

    /// Whether keys are loaded (readiness).
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// JWKS fetches so far (metrics and tests).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn current_keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Keeps the keys loaded: retries with backoff until the first load
    /// succeeds (pods start in any order), then refreshes every
    /// `auth.jwks_refresh`. Returns at once in dev mode.
    pub async fn run_refresh(self: Arc<Self>) {
        if matches!(self.source, KeySource::Dev) {
            return;
        }
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.fetch_and_install().await {
                Ok(n) => {
                    tracing::info!(keys = n, "signing keys loaded");
                    backoff = Duration::from_millis(250);
                    tokio::time::sleep(self.settings.jwks_refresh.0).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot load signing keys");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Fetches the JWKS (after discovery when needed) and installs it.
    async fn fetch_and_install(&self) -> Result<usize, String> {
        let KeySource::Remote { http } = &self.source else {
            return Ok(self.current_keys().len());
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let jwks_url = match (&self.settings.jwks_url, &self.issuer) {
            (Some(url), _) => url.clone(),
            (None, Some(issuer)) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Value = get_json(http, &url).await?;
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
                    return Err(format!(
                        "discovery at {url} names another issuer than auth.issuer"
                    ));
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("discovery at {url} has no jwks_uri"))?
                    .to_owned()
            }
            (None, None) => return Err("no issuer or JWKS URL configured".into()),
        };
        let doc: Value = get_json(http, &jwks_url).await?;
        let set = KeySet::from_jwks(&doc)?;
        if set.is_empty() {
            return Err(format!(
                "the JWKS at {jwks_url} holds no usable signing key"
            ));
        }
        let n = set.len();
        let old = self.current_keys();
        // A key that disappeared may have been revoked: forget tokens it
        // verified rather than trusting them until they expire.
        if !old.kids_kept_in(&set)
            && let Some(c) = &self.cache
        {
            c.clear();
        }
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Refetches the JWKS for an unknown `kid`, at most once per
    /// `jwks_min_refetch` whatever the number of callers.
    async fn refetch_for_unknown_kid(&self, kid: &str) {
        if matches!(self.source, KeySource::Dev) {
            return;
        }
        let mut last = self.refetch_gate.lock().await;
        if self.current_keys().has_kid(kid) {
            return; // another caller's refetch brought it
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.jwks_min_refetch.0) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_and_install().await {
            tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
        }
    }

    /// Verifies `token` and returns the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let cache_key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(c) = &self.cache
            && let Some(id) = c.get(&cache_key)
        {
            // The leeway applies to cached tokens as to fresh ones.
            if id.expires_at + self.settings.leeway.0.as_secs() > now_secs() {
                return Ok(id);
            }
            c.remove(&cache_key);
        }
        // A compact JWS is exactly three segments; `decode_header` alone
        // would read a longer token's first two as its header.
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed);
        }
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                AuthError::Algorithm
            }
            // `none` and other names the crate does not know fail as JSON;
            // an accepted name means the header is broken some other way.
            _ if peek_alg(token).is_some_and(|a| {
                a.parse::<jsonwebtoken::Algorithm>()
                    .map_or(true, |a| !is_accepted(a))
            }) =>
            {
                AuthError::Algorithm
            }
            _ => AuthError::Malformed,
        })?;
        if !is_accepted(header.alg) {
            return Err(AuthError::Algorithm);
        }
        if !self.is_ready() {
            return Err(AuthError::KeysUnavailable);
        }
        let mut keys = self.current_keys();
        if let Some(kid) = header.kid.as_deref()
            && !keys.has_kid(kid)
        {
            self.refetch_for_unknown_kid(kid).await;
            keys = self.current_keys();
            if !keys.has_kid(kid) {
                return Err(AuthError::UnknownKey);
            }
        }
        let candidates = keys.candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty() {
            return Err(if header.kid.is_some() {
                AuthError::KeyMismatch
            } else {
                AuthError::UnknownKey
            });
        }
        let validation = self.validation(header.alg);
        let mut last_err = AuthError::Signature;
        for vk in candidates {
            match decode::<Map<String, Value>>(token, &vk.key, &validation) {
                Ok(data) => {
                    let id = Arc::new(self.identity(data.claims)?);
                    if let Some(c) = &self.cache {
                        c.insert(cache_key, id.clone());
                    }
                    return Ok(id);
                }
                Err(e) => last_err = map_jwt_error(e.kind()),
            }
        }
        Err(last_err)
    }

    fn validation(&self, alg: jsonwebtoken::Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway.0.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audiences {
            Some(auds) => {
                v.set_audience(auds);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::BadClaim("sub must be a non-empty string".into())),
        };
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let roles = roles_from(dotted(&claims, &self.settings.roles_claim));
        let tenant = tenant_from(dotted(&claims, &self.settings.tenant_claim))
            .map_err(AuthError::BadClaim)?;
        Ok(Identity {
            sub,
            roles,
            tenant,
            claims,
            expires_at,
        })
    }
}

/// The `alg` of a token's header, read without trusting anything else.
fn peek_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::BadClaim(format!("claim {c} has the wrong form"))
        }
        _ => AuthError::Malformed,
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let res = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", res.status()));
    }
    let bytes = res.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if bytes.len() > 1 << 20 {
        return Err(format!("GET {url}: response larger than 1 MiB"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_none_is_reported_as_an_algorithm_refusal() {
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJhIjoxfQ.";
        assert_eq!(peek_alg(token).as_deref(), Some("none"));
        assert!(
            decode_header(token).is_err(),
            "none is not a crate algorithm"
        );
    }
}
