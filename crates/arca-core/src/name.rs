//! Validated names: collection names, document ids, file ids and tenants. Each is a
//! newtype that can only be built through its `parse`, so code that holds one
//! never re-checks it.

use std::fmt;

/// Why a name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A collection name outside `^[a-z][a-z0-9_]{0,62}$`.
    #[error("collection names match ^[a-z][a-z0-9_]{{0,62}}$")]
    Collection,
    /// A document id outside `^[A-Za-z0-9_-]{1,128}$`.
    #[error("document ids match ^[A-Za-z0-9_-]{{1,128}}$")]
    DocId,
    /// An empty or oversized tenant value.
    #[error("the tenant claim must be a non-empty string of at most 256 characters")]
    Tenant,
    /// A file id that is not 32 lowercase hex digits.
    #[error("file ids are 32 lowercase hex digits")]
    FileId,
}

/// A collection name: `^[a-z][a-z0-9_]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionName(String);

impl CollectionName {
    /// Checks `raw` against the contract's pattern.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let b = raw.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::Collection)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document id: `^[A-Za-z0-9_-]{1,128}$` (server-generated ids are 24 hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(String);

impl DocId {
    /// Checks `raw` against the contract's pattern.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let b = raw.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::DocId)
        }
    }

    /// Builds a time-ordered 24-hex id (like a MongoDB ObjectId) from the
    /// caller's clock and entropy; the caller owns both so this stays pure.
    pub fn generated(unix_seconds: u32, random: [u8; 5], counter: u32) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&unix_seconds.to_be_bytes());
        bytes[4..9].copy_from_slice(&random);
        bytes[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
        let mut s = String::with_capacity(24);
        for b in bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A file id: 128 random bits as 32 lowercase hex digits. Unguessable by
/// construction (the server draws the bits; clients never choose an id),
/// and safe as a file name or a GridFS key on every engine.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct FileId(String);

impl TryFrom<String> for FileId {
    type Error = NameError;
    fn try_from(raw: String) -> Result<Self, NameError> {
        Self::parse(&raw)
    }
}

impl From<FileId> for String {
    fn from(id: FileId) -> String {
        id.0
    }
}

impl FileId {
    /// Checks `raw`: exactly 32 lowercase hex digits.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let b = raw.as_bytes();
        if b.len() == 32 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::FileId)
        }
    }

    /// The id of 128 bits the caller drew at random (it owns the entropy,
    /// so this stays pure).
    pub fn from_random(bits: [u8; 16]) -> Self {
        let mut s = String::with_capacity(32);
        for b in bits {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The data space a caller works in: one tenant's, or the untenanted space
/// of tokens that carry no tenant claim. The two never overlap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// Tokens without the tenant claim (and dev tokens minted without one).
    None,
    /// A named tenant, from the verified token's tenant claim.
    Id(String),
}

impl Tenant {
    /// A tenant from a claim value; empty or oversized values are refused so
    /// that no tenant can alias the untenanted space.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() || raw.len() > 256 {
            Err(NameError::Tenant)
        } else {
            Ok(Self::Id(raw.to_owned()))
        }
    }

    /// The storage key: `""` for the untenanted space, the id otherwise
    /// (`parse` guarantees a named tenant is never empty).
    pub fn key(&self) -> &str {
        match self {
            Tenant::None => "",
            Tenant::Id(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_follow_the_contract_pattern() {
        assert!(CollectionName::parse("orders").is_ok());
        assert!(CollectionName::parse("a1_b").is_ok());
        assert!(CollectionName::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "1a", "_a", "Orders", "a-b", "a.b", &"a".repeat(64)] {
            assert_eq!(
                CollectionName::parse(bad),
                Err(NameError::Collection),
                "{bad}"
            );
        }
    }

    #[test]
    fn doc_ids_follow_the_contract_pattern() {
        assert!(DocId::parse("A-z_09").is_ok());
        assert!(DocId::parse(&"x".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert_eq!(DocId::parse(bad), Err(NameError::DocId), "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_24_hex_and_time_ordered() {
        let a = DocId::generated(1_700_000_000, [255; 5], 0xffffff);
        let b = DocId::generated(1_700_000_001, [0; 5], 0);
        assert_eq!(a.as_str().len(), 24);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a < b);
        assert!(DocId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn file_ids_are_32_lowercase_hex() {
        let id = FileId::from_random([0xab; 16]);
        assert_eq!(id.as_str(), "ab".repeat(16));
        assert_eq!(FileId::parse(id.as_str()), Ok(id));
        for bad in [
            "",
            "../etc/passwd",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
            &"g".repeat(32),
        ] {
            assert_eq!(FileId::parse(bad), Err(NameError::FileId), "{bad}");
        }
    }

    #[test]
    fn empty_tenant_is_refused() {
        assert_eq!(Tenant::parse(""), Err(NameError::Tenant));
        assert_eq!(
            Tenant::parse("t1").map(|t| t.key().to_owned()),
            Ok("t1".into())
        );
        assert_eq!(Tenant::None.key(), "");
    }
}
