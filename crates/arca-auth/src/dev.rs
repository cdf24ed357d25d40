//! `--dev` mode: a local Ed25519 key pair kept in the data directory (the
//! private key file is created with mode 0600), the only key the server then
//! trusts, and token minting for it (`arca token`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::keys::{KeySet, VerifyingKey};

/// The issuer of dev tokens.
pub const DEV_ISSUER: &str = "urn:arca:dev";
/// The audience of dev tokens.
pub const DEV_AUDIENCE: &str = "arca";
const KEY_FILE: &str = "dev-signing-key.p8";

/// The dev key pair.
pub struct DevKeys {
    encoding: EncodingKey,
    public_x: String,
    kid: String,
    path: PathBuf,
}

impl DevKeys {
    /// Loads the key pair from `data_dir`, creating it on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
        let path = data_dir.join(KEY_FILE);
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(&path)?,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
            format!(
                "{} is not an Ed25519 PKCS#8 key; delete it to make a new one",
                path.display()
            )
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let public_x = URL_SAFE_NO_PAD.encode(&public);
        let kid = format!("dev-{}", &hex_sha256(&public)[..16]);
        Ok(Self {
            encoding: EncodingKey::from_ed_der(&der),
            public_x,
            kid,
            path,
        })
    }

    /// Where the private key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key set that trusts exactly this key.
    pub fn key_set(&self) -> Result<KeySet, String> {
        let key = DecodingKey::from_ed_components(&self.public_x).map_err(|e| e.to_string())?;
        let mut set = KeySet::default();
        set.insert(
            self.kid.clone(),
            VerifyingKey {
                key,
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                alg: Some("EdDSA".into()),
            },
        );
        Ok(set)
    }

    /// Mints an access token. `roles_claim` and `tenant_claim` are the
    /// configured claim names (dotted names become nested objects).
    /// Refuses what the server would then refuse (an empty subject,
    /// tenant or role) and extra claims that would be overwritten by the
    /// standard ones, rather than mint a token that cannot work.
    pub fn mint(&self, req: &MintRequest<'_>) -> Result<String, String> {
        if req.sub.is_empty() {
            return Err("the subject (--sub) must not be empty".into());
        }
        if req.tenant.is_some_and(str::is_empty) {
            return Err("the tenant (--tenant) must not be empty".into());
        }
        if req.roles.iter().any(String::is_empty) {
            return Err("a role (--role) must not be empty".into());
        }
        let first = |name: &str| name.split('.').next().unwrap_or(name).to_owned();
        let reserved = ["iss", "aud", "sub", "iat", "exp"]
            .map(str::to_owned)
            .into_iter()
            .chain([first(req.roles_claim), first(req.tenant_claim)]);
        for name in reserved {
            if req.extra.contains_key(&name) {
                return Err(format!(
                    "the claim {name} is set by arca token itself (--sub, --role, --tenant, --ttl)"
                ));
            }
        }
        if req.ttl < MIN_TTL || req.ttl > MAX_TTL {
            return Err(format!(
                "the lifetime (--ttl) must be from {} s to {} days",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs() / 86_400
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut claims = req.extra.clone();
        claims.insert("iss".into(), DEV_ISSUER.into());
        claims.insert("aud".into(), DEV_AUDIENCE.into());
        claims.insert("sub".into(), req.sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + req.ttl.as_secs()).into());
        set_dotted(
            &mut claims,
            req.roles_claim,
            Value::from(req.roles.to_vec()),
        );
        if let Some(t) = req.tenant {
            set_dotted(&mut claims, req.tenant_claim, t.into());
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// The shortest lifetime of a dev token.
const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest lifetime of a dev token (a year: it is for development).
const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// What a dev token says.
pub struct MintRequest<'a> {
    /// `sub`.
    pub sub: &'a str,
    /// Roles.
    pub roles: &'a [String],
    /// Tenant, if any.
    pub tenant: Option<&'a str>,
    /// Lifetime.
    pub ttl: Duration,
    /// Configured roles claim name.
    pub roles_claim: &'a str,
    /// Configured tenant claim name.
    pub tenant_claim: &'a str,
    /// Further claims (set before the standard ones, which win).
    pub extra: &'a Map<String, Value>,
}

fn set_dotted(claims: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = claims;
    for p in parts {
        let slot = cur
            .entry(p.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else { return };
        cur = next;
    }
    cur.insert(last.to_owned(), value);
}

fn create_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "cannot generate a key pair".to_owned())?;
    let der = doc.as_ref().to_vec();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(&der)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(der)
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_claim_names_nest() {
        let mut c = Map::new();
        set_dotted(&mut c, "realm_access.roles", Value::from(vec!["a"]));
        assert_eq!(
            Value::Object(c),
            serde_json::json!({"realm_access": {"roles": ["a"]}})
        );
    }

    #[test]
    fn tokens_the_server_would_refuse_are_not_minted() {
        let dir = std::env::temp_dir().join(format!("arca-dev-mint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = DevKeys::load_or_create(&dir).expect("create");
        let extra = Map::new();
        let roles = vec!["editor".to_owned()];
        let base = MintRequest {
            sub: "alice",
            roles: &roles,
            tenant: Some("acme"),
            ttl: Duration::from_secs(3600),
            roles_claim: "realm_access.roles",
            tenant_claim: "tid",
            extra: &extra,
        };
        keys.mint(&base).expect("a good request");
        let empty_role = vec![String::new()];
        let exp = Map::from_iter([("exp".to_owned(), Value::from(1))]);
        let realm = Map::from_iter([("realm_access".to_owned(), Value::from(1))]);
        for (req, needle) in [
            (MintRequest { sub: "", ..base }, "--sub"),
            (
                MintRequest {
                    tenant: Some(""),
                    ..base
                },
                "--tenant",
            ),
            (
                MintRequest {
                    roles: &empty_role,
                    ..base
                },
                "--role",
            ),
            (
                MintRequest {
                    ttl: Duration::ZERO,
                    ..base
                },
                "--ttl",
            ),
            // Far enough to overflow `now + ttl` if it were added.
            (
                MintRequest {
                    ttl: Duration::from_secs(u64::MAX),
                    ..base
                },
                "--ttl",
            ),
            (
                MintRequest {
                    extra: &exp,
                    ..base
                },
                "claim exp",
            ),
            (
                MintRequest {
                    extra: &realm,
                    ..base
                },
                "claim realm_access",
            ),
        ] {
            let e = keys.mint(&req).expect_err("refused");
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("arca-dev-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = DevKeys::load_or_create(&dir).expect("create");
        let b = DevKeys::load_or_create(&dir).expect("load");
        assert_eq!(a.kid, b.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
