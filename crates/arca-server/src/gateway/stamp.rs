//! What the server decides for every write before any engine sees it: new
//! document ids (time-ordered, 24 hex digits) and the time of a change
//! (RFC 3339 UTC, milliseconds). Operator tools (`arca import`) stamp with
//! the same functions, so every engine stores the same kinds of values.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arca_core::{DocId, FileId};

/// A fresh time-ordered id: seconds since the epoch, five random bytes
/// chosen once per process, and a counter starting at a random value (the
/// layout of a MongoDB ObjectId).
pub fn new_id() -> DocId {
    static SEED: OnceLock<[u8; 5]> = OnceLock::new();
    static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = COUNTER
        .get_or_init(|| AtomicU32::new(rand::random()))
        .fetch_add(1, Ordering::Relaxed);
    DocId::generated(
        u32::try_from(secs).unwrap_or(u32::MAX),
        *SEED.get_or_init(rand::random),
        n,
    )
}

/// A fresh file id: 128 bits from the operating system's random source
/// (through `rand`'s thread-local generator, seeded from it), so file ids
/// cannot be guessed from other ids or from time.
pub fn new_file_id() -> FileId {
    FileId::from_random(rand::random())
}

/// The current time as stored: RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
