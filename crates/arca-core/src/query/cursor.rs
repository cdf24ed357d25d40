//! Pagination cursors: opaque, versioned tokens holding the last page's
//! sort key and `_id`, bound to the collection, filter and sort they were
//! made for (a fingerprint), and signed with HMAC-SHA256 under a key the
//! store keeps (every replica signs and checks with the same one). A
//! forged or edited cursor is refused: even though a cursor only moves a
//! page's start within the caller's scope, an unsigned one would let a
//! client hand the server arbitrary sort keys (values of any size and
//! shape) to compare against every document.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest;

use hmac::{Hmac, Mac};

const VERSION: u64 = 2;

/// Bytes of the signature kept in a cursor (128 bits of HMAC-SHA256).
const SIGNATURE: usize = 16;

/// Why a cursor was refused (`400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor of this server, or edited.
    #[error("invalid cursor: pass the `next` value of a previous page unchanged")]
    Invalid,
    /// A cursor from a listing with another filter or sort.
    #[error("this cursor belongs to a listing with another filter or sort")]
    Foreign,
}

/// A position in a sorted listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// The sort key of the last document returned.
    pub key: Vec<Value>,
    /// Its `_id`.
    pub id: String,
}

/// A fingerprint of a listing's collection, filter and sort (SHA-256 over
/// their canonical texts): a cursor only continues the listing it came
/// from.
pub fn fingerprint(collection: &str, filter_text: &str, sort_text: &str) -> String {
    let mut h = sha2::Sha256::new();
    for part in [collection, filter_text, sort_text] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn signature(key: &[u8], payload: &str) -> Option<[u8; SIGNATURE]> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
    mac.update(payload.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; SIGNATURE];
    out.copy_from_slice(&full[..SIGNATURE]);
    Some(out)
}

impl Cursor {
    /// Encodes the cursor for the listing with `fingerprint`, signed with
    /// `key`.
    pub fn encode(&self, fingerprint: &str, key: &[u8]) -> String {
        let payload = json!([VERSION, fingerprint, self.key, self.id]).to_string();
        let mut raw = signature(key, &payload).unwrap_or_default().to_vec();
        raw.extend_from_slice(payload.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a cursor for the listing with `fingerprint`, checking its
    /// signature with `key` (in constant time).
    pub fn decode(
        text: &str,
        fingerprint: &str,
        sort_len: usize,
        key: &[u8],
    ) -> Result<Self, CursorError> {
        if text.len() > 16 * 1024 {
            return Err(CursorError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Invalid)?;
        if raw.len() <= SIGNATURE {
            return Err(CursorError::Invalid);
        }
        let (sig, payload) = raw.split_at(SIGNATURE);
        let payload = std::str::from_utf8(payload).map_err(|_| CursorError::Invalid)?;
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|_| CursorError::Invalid)?;
        mac.update(payload.as_bytes());
        mac.verify_truncated_left(sig)
            .map_err(|_| CursorError::Invalid)?;
        let v: Value = serde_json::from_str(payload).map_err(|_| CursorError::Invalid)?;
        let parts = v
            .as_array()
            .filter(|p| p.len() == 4)
            .ok_or(CursorError::Invalid)?;
        if parts[0].as_u64() != Some(VERSION) {
            return Err(CursorError::Invalid);
        }
        if parts[1].as_str() != Some(fingerprint) {
            return Err(CursorError::Foreign);
        }
        let key = parts[2]
            .as_array()
            .filter(|k| k.len() == sort_len)
            .ok_or(CursorError::Invalid)?
            .clone();
        let id = parts[3].as_str().ok_or(CursorError::Invalid)?.to_owned();
        crate::DocId::parse(&id).map_err(|_| CursorError::Invalid)?;
        Ok(Self { key, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_edits_and_foreign_listings() {
        let c = Cursor {
            key: vec![json!(3), json!("x")],
            id: "abc".into(),
        };
        let key = [7u8; 32];
        let fp = fingerprint("notes", "{\"a\":1}", "-n,+m");
        let text = c.encode(&fp, &key);
        assert_eq!(Cursor::decode(&text, &fp, 2, &key), Ok(c.clone()));
        assert_eq!(
            Cursor::decode(&text, &fingerprint("notes", "{}", "-n,+m"), 2, &key),
            Err(CursorError::Foreign)
        );
        assert_eq!(
            Cursor::decode(&text, &fingerprint("other", "{\"a\":1}", "-n,+m"), 2, &key),
            Err(CursorError::Foreign),
            "bound to its collection"
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&text).expect("b64");
        let last = raw.len() - 3;
        raw[last] = b'z';
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw), &fp, 2, &key),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            Cursor::decode("garbage!", &fp, 2, &key),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            Cursor::decode(&text, &fp, 1, &key),
            Err(CursorError::Invalid)
        );
        // Signed with another key (another store): refused.
        assert_eq!(
            Cursor::decode(&text, &fp, 2, &[8u8; 32]),
            Err(CursorError::Invalid)
        );
        // A forged cursor: a valid payload with the old unkeyed checksum.
        let payload = json!([VERSION, fp, [3, "x"], "zzz"]).to_string();
        let forged = URL_SAFE_NO_PAD.encode(format!("{}{payload}", "0".repeat(16)));
        assert_eq!(
            Cursor::decode(&forged, &fp, 2, &key),
            Err(CursorError::Invalid)
        );
    }
}
