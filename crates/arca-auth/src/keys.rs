//! A set of verification keys built from a JWKS document. Only asymmetric
//! keys are kept: `oct` (HMAC) keys and unknown key types are dropped, so a
//! token can never be checked against a shared secret.

use std::collections::HashMap;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// One usable key and the constraints its JWK declares.
pub struct VerifyingKey {
    /// The key.
    pub key: DecodingKey,
    /// `kty` of the JWK: `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// `crv` for EC/OKP keys.
    pub crv: Option<String>,
    /// `alg` when the JWK pins one.
    pub alg: Option<String>,
}

impl VerifyingKey {
    /// Whether this key may verify a token signed with `alg` (no key
    /// confusion: the key type, the curve and any pinned `alg` must fit).
    pub fn fits(&self, alg: Algorithm) -> bool {
        let name = alg_name(alg);
        if self.alg.as_deref().is_some_and(|a| a != name) {
            return false;
        }
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kty == "RSA",
            Algorithm::ES256 => self.kty == "EC" && self.crv.as_deref() == Some("P-256"),
            Algorithm::ES384 => self.kty == "EC" && self.crv.as_deref() == Some("P-384"),
            Algorithm::EdDSA => self.kty == "OKP" && self.crv.as_deref() == Some("Ed25519"),
            // HMAC and any algorithm added to the crate later.
            _ => false,
        }
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// Whether `alg` is one Arca accepts (asymmetric only).
pub fn is_accepted(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    )
}

/// Keys by `kid`, plus those without one.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    anonymous: Vec<VerifyingKey>,
}

impl KeySet {
    /// Builds a set from a JWKS document (`{"keys": [...]}`), skipping keys
    /// that are symmetric, not for signatures, or unparseable.
    pub fn from_jwks(doc: &Value) -> Result<Self, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no \"keys\" array")?;
        let mut set = KeySet::default();
        for k in keys {
            let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
            if !matches!(kty, "RSA" | "EC" | "OKP") {
                tracing::warn!(kty, "JWKS key skipped: only RSA, EC and OKP keys are used");
                continue;
            }
            if k.get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                tracing::warn!("JWKS key skipped: unparseable");
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                tracing::warn!("JWKS key skipped: unusable key material");
                continue;
            };
            let vk = VerifyingKey {
                key,
                kty: kty.to_owned(),
                crv: k.get("crv").and_then(Value::as_str).map(str::to_owned),
                alg: k.get("alg").and_then(Value::as_str).map(str::to_owned),
            };
            match k.get("kid").and_then(Value::as_str) {
                Some(kid) => {
                    set.by_kid.insert(kid.to_owned(), vk);
                }
                None => set.anonymous.push(vk),
            }
        }
        Ok(set)
    }

    /// Adds one key under `kid` (dev mode).
    pub fn insert(&mut self, kid: String, key: VerifyingKey) {
        self.by_kid.insert(kid, key);
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a key with this id is known.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Whether every key id of `self` is still in `other`.
    pub fn kids_kept_in(&self, other: &KeySet) -> bool {
        self.by_kid.keys().all(|k| other.by_kid.contains_key(k))
    }

    /// Candidate keys for a token: the one named by `kid`, or, without a
    /// `kid`, every key without an id that fits the algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&VerifyingKey> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .into_iter()
                .filter(|k| k.fits(alg))
                .collect(),
            None => self.anonymous.iter().filter(|k| k.fits(alg)).collect(),
        }
    }
}
