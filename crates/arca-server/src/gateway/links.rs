//! Signed links: a file's own URL with `exp` (expiry, Unix seconds), `tid`
//! (the tenant, absent for the untenanted space) and `sig`, an HMAC-SHA256
//! over the file id, the tenant and the expiry with a key kept in the
//! store (`links`, shared by every replica). A browser's `<img src>`
//! cannot send a bearer token; the link stands in for one, for that file's
//! bytes and thumbnails only, until it expires.
//!
//! Rotation: `arca rotate-key links` makes a new key and keeps the old one
//! as `links.previous`; links signed with either verify, so links already
//! handed out keep working for their lifetime (each server reloads the keys
//! within `KEYS_TTL`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};

use arca_core::FileId;

/// How long a server uses the keys it read before reading them again (a
/// rotation reaches every replica within this).
pub const KEYS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// A link's query parameters, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParams {
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// The tenant key (`""`: the untenanted space).
    pub tenant: String,
    /// The signature, base64url.
    pub sig: String,
}

/// What is signed: a fixed label (so no other signature of these keys can
/// pass for a link), the id, the tenant and the expiry.
fn message(id: &FileId, tenant: &str, exp: u64) -> Vec<u8> {
    format!("arca-file-link/v1\n{id}\n{tenant}\n{exp}").into_bytes()
}

fn mac(key: &[u8; 32]) -> Hmac<sha2::Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"))
}

/// The signature of a link to `id` in `tenant` expiring at `exp`.
pub fn sign(key: &[u8; 32], id: &FileId, tenant: &str, exp: u64) -> String {
    let mut m = mac(key);
    m.update(&message(id, tenant, exp));
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

/// The query string of a link (`exp=..&tid=..&sig=..`).
pub fn query(key: &[u8; 32], id: &FileId, tenant: &str, exp: u64) -> String {
    let sig = sign(key, id, tenant, exp);
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("exp", &exp.to_string());
    if !tenant.is_empty() {
        q.append_pair("tid", tenant);
    }
    q.append_pair("sig", &sig);
    q.finish()
}

/// The link parameters of a query string: `None` when it carries no
/// `sig` (not a link), `Some(Err)` when it carries a malformed one.
pub fn parse(raw: Option<&str>) -> Option<Result<LinkParams, ()>> {
    let (mut exp, mut tid, mut sig) = (None, None, None);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let slot = match k.as_ref() {
            "exp" => &mut exp,
            "tid" => &mut tid,
            "sig" => &mut sig,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            // A repeated parameter: which one was signed is ambiguous.
            return Some(Err(()));
        }
    }
    let sig = sig?;
    let Some(exp) = exp.and_then(|e| e.parse::<u64>().ok()) else {
        return Some(Err(()));
    };
    Some(Ok(LinkParams {
        exp,
        tenant: tid.unwrap_or_default(),
        sig,
    }))
}

/// Whether `link` is a valid, unexpired link to `id` under one of `keys`
/// at `now` (Unix seconds). The signature is compared in constant time.
pub fn verify(keys: &[[u8; 32]], id: &FileId, link: &LinkParams, now: u64) -> bool {
    if link.exp <= now {
        return false;
    }
    let Ok(sig) = URL_SAFE_NO_PAD.decode(link.sig.as_bytes()) else {
        return false;
    };
    let msg = message(id, &link.tenant, link.exp);
    keys.iter().any(|key| {
        let mut m = mac(key);
        m.update(&msg);
        m.verify_slice(&sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FileId {
        FileId::from_random([n; 16])
    }

    fn link(q: &str) -> LinkParams {
        parse(Some(q)).expect("a link").expect("well formed")
    }

    #[test]
    fn a_link_verifies_for_its_file_tenant_and_time_only() {
        let key = [7u8; 32];
        let q = query(&key, &id(1), "acme", 1_000);
        let l = link(&q);
        assert_eq!(l.tenant, "acme");
        assert!(verify(&[key], &id(1), &l, 999));
        // Expired, another file, another key.
        assert!(!verify(&[key], &id(1), &l, 1_000));
        assert!(!verify(&[key], &id(2), &l, 999));
        assert!(!verify(&[[8u8; 32]], &id(1), &l, 999));
        // The previous key still verifies after a rotation.
        assert!(verify(&[[8u8; 32], key], &id(1), &l, 999));
        // Tampered: tenant, expiry, signature.
        for (k, v) in [("tid", "other"), ("exp", "5000")] {
            let mut t = l.clone();
            if k == "tid" {
                t.tenant = v.into();
            } else {
                t.exp = v.parse().expect("n");
            }
            assert!(!verify(&[key], &id(1), &t, 999), "{k}");
        }
        let mut t = l.clone();
        t.sig
            .replace_range(0..1, if t.sig.starts_with('A') { "B" } else { "A" });
        assert!(!verify(&[key], &id(1), &t, 999));
        t.sig = "not base64 !".into();
        assert!(!verify(&[key], &id(1), &t, 999));
    }

    #[test]
    fn untenanted_links_carry_no_tid_and_malformed_ones_are_told_apart() {
        let q = query(&[1; 32], &id(3), "", 10);
        assert!(!q.contains("tid="), "{q}");
        assert_eq!(link(&q).tenant, "");
        assert_eq!(parse(Some("size=64")), None);
        assert_eq!(parse(None), None);
        assert_eq!(parse(Some("sig=abc")), Some(Err(())));
        assert_eq!(parse(Some("sig=abc&exp=soon")), Some(Err(())));
        assert_eq!(parse(Some("sig=a&sig=b&exp=1")), Some(Err(())));
    }
}
