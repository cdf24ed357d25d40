//! Pagination cursors: opaque, versioned tokens holding the last page's
//! sort key and `_id`, bound to the filter and sort they were made for
//! (a fingerprint), with a checksum so an edited cursor is refused.
//! Cursors carry no secret: a forged one only moves the page start, never
//! past the caller's scope, which every query applies anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest;

const VERSION: u64 = 1;

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

/// A fingerprint of a listing's filter and sort (FNV-1a over their
/// canonical texts): a cursor only continues the listing it came from.
pub fn fingerprint(filter_text: &str, sort_text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in filter_text.bytes().chain([0u8]).chain(sort_text.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn checksum(payload: &str) -> String {
    let d = sha2::Sha256::digest(payload.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Cursor {
    /// Encodes the cursor for the listing with `fingerprint`.
    pub fn encode(&self, fingerprint: &str) -> String {
        let payload = json!([VERSION, fingerprint, self.key, self.id]).to_string();
        let sum = checksum(&payload);
        URL_SAFE_NO_PAD.encode(format!("{sum}{payload}"))
    }

    /// Decodes a cursor for the listing with `fingerprint`.
    pub fn decode(text: &str, fingerprint: &str, sort_len: usize) -> Result<Self, CursorError> {
        if text.len() > 16 * 1024 {
            return Err(CursorError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Invalid)?;
        let raw = String::from_utf8(raw).map_err(|_| CursorError::Invalid)?;
        if raw.len() < 16 || !raw.is_char_boundary(16) {
            return Err(CursorError::Invalid);
        }
        let (sum, payload) = raw.split_at(16);
        if checksum(payload) != sum {
            return Err(CursorError::Invalid);
        }
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
        let fp = fingerprint("{\"a\":1}", "-n,+m");
        let text = c.encode(&fp);
        assert_eq!(Cursor::decode(&text, &fp, 2), Ok(c));
        assert_eq!(
            Cursor::decode(&text, &fingerprint("{}", "-n,+m"), 2),
            Err(CursorError::Foreign)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&text).expect("b64");
        let last = raw.len() - 3;
        raw[last] = b'z';
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw), &fp, 2),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            Cursor::decode("garbage!", &fp, 2),
            Err(CursorError::Invalid)
        );
        assert_eq!(Cursor::decode(&text, &fp, 1), Err(CursorError::Invalid));
    }
}
