//! How a stored file goes out: which part (`Range`, RFC 9110 section 14),
//! whether the client already has it (`ETag` is the quoted SHA-256,
//! `If-None-Match`), and how a browser may treat it. Only files verified
//! as images at upload are shown inline; everything else (HTML, SVG, XML,
//! JavaScript, and anything declared as an image that is not one) is an
//! attachment with `Content-Security-Policy: sandbox`, and every response
//! says `nosniff`, so stored bytes never run as the API's origin.

use std::ops::Range;

use axum::http::{HeaderMap, HeaderValue, header};

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The whole file (no header, an unparseable one, several ranges, or
    /// `If-Range` naming another version).
    Whole,
    /// One range (206).
    Range(Range<u64>),
    /// No byte of the file is in the range (416).
    Unsatisfiable,
}

/// The part of a file of `size` bytes (strong tag `etag`) that `headers`
/// ask for.
pub fn part(headers: &HeaderMap, size: u64, etag: &str) -> Part {
    let Some(raw) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Part::Whole;
    };
    // If-Range with another version: the whole (new) file.
    if let Some(cond) = headers.get(header::IF_RANGE)
        && cond.as_bytes() != etag.as_bytes()
    {
        return Part::Whole;
    }
    let parsed = match http_range_header::parse_range_header(raw) {
        Ok(p) => p,
        // A header that does not parse is ignored (RFC 9110 14.2).
        Err(_) => return Part::Whole,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let r = &ranges[0];
            Part::Range(*r.start()..r.end() + 1)
        }
        // Several ranges: the whole file in one 200 is allowed, and
        // simpler for clients than multipart/byteranges. An empty file
        // has no range to give.
        Ok(_) => Part::Whole,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => Part::Unsatisfiable,
        Err(_) => Part::Whole,
    }
}

/// The strong `ETag` of a file: its SHA-256, quoted.
pub fn etag(sha256: &str) -> String {
    format!("\"{sha256}\"")
}

/// A file name as kept: the last path segment of what the client sent,
/// without control characters, at most 255 characters, `file` if nothing
/// is left.
pub fn clean_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let kept: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_invisible_format(*c))
        .take(255)
        .collect();
    let trimmed = kept.trim().trim_start_matches('.').trim();
    if trimmed.is_empty() {
        "file".into()
    } else {
        trimmed.to_owned()
    }
}

/// Line separators, byte order marks and the bidirectional controls
/// that can make `gpj.exe` display as `exe.jpg`.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// `Content-Disposition` (RFC 6266): `inline` or `attachment`, an ASCII
/// `filename` fallback with anything doubtful replaced by `_`, and the
/// exact name as `filename*` (RFC 8187, UTF-8, percent-encoded).
pub fn disposition(inline: bool, filename: &str) -> HeaderValue {
    let name = clean_filename(filename);
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '
            | '!'
            | '#'..='$'
            | '&'
            | '('
            | ')'
            | '+'..='.'
            | '0'..='9'
            | '='
            | '@'
            | 'A'..='Z'
            | '['..='['
            | ']'..='_'
            | 'a'..='z'
            | '{'
            | '}'
            | '~' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A declared content type as kept: the essence (`type/subtype`,
/// lowercased) when it is a well-formed media type, else `None`.
pub fn clean_content_type(raw: &str) -> Option<String> {
    let essence = raw.split(';').next()?.trim().to_ascii_lowercase();
    let (t, s) = essence.split_once('/')?;
    let token = |x: &str| {
        !x.is_empty()
            && x.len() <= 127
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (token(t) && token(s)).then_some(essence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn every_range_form_is_read() {
        let tag = "\"abc\"";
        let p = |v: &str| part(&headers(&[("range", v)]), 1000, tag);
        assert_eq!(p("bytes=0-9"), Part::Range(0..10));
        assert_eq!(p("bytes=990-"), Part::Range(990..1000));
        assert_eq!(p("bytes=-10"), Part::Range(990..1000));
        assert_eq!(p("bytes=995-2000"), Part::Range(995..1000));
        assert_eq!(p("bytes=-5000"), Part::Range(0..1000));
        assert_eq!(p("bytes=1000-"), Part::Unsatisfiable);
        assert_eq!(p("bytes=5000-6000"), Part::Unsatisfiable);
        assert_eq!(p("bytes=0-1,5-6"), Part::Whole);
        assert_eq!(p("bytes=9-1"), Part::Whole);
        assert_eq!(p("items=0-1"), Part::Whole);
        assert_eq!(p("garbage"), Part::Whole);
        assert_eq!(part(&headers(&[]), 1000, tag), Part::Whole);
        assert_eq!(
            part(&headers(&[("range", "bytes=0-0")]), 0, tag),
            Part::Unsatisfiable
        );
        // If-Range: only for the same version.
        let same = headers(&[("range", "bytes=0-9"), ("if-range", tag)]);
        assert_eq!(part(&same, 1000, tag), Part::Range(0..10));
        let other = headers(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]);
        assert_eq!(part(&other, 1000, tag), Part::Whole);
    }

    #[test]
    fn filenames_are_cleaned_and_encoded_per_rfc_6266() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\a\\photo.jpg"), "photo.jpg");
        assert_eq!(clean_filename("a\u{0}b\r\nc\u{7f}.png"), "abc.png");
        assert_eq!(clean_filename("..."), "file");
        assert_eq!(clean_filename("   "), "file");
        assert_eq!(clean_filename(".hidden"), "hidden");
        assert_eq!(clean_filename("\u{202e}gpj.exe"), "gpj.exe");
        assert_eq!(clean_filename(&"é".repeat(10_000)).chars().count(), 255);
        let v = disposition(false, "naïve \"quoted\"; x.txt");
        assert_eq!(
            v.to_str().expect("ascii"),
            "attachment; filename=\"na_ve _quoted__ x.txt\"; filename*=UTF-8''na%C3%AFve%20%22quoted%22%3B%20x.txt"
        );
        let v = disposition(true, "photo.png");
        assert_eq!(
            v.to_str().expect("ascii"),
            "inline; filename=\"photo.png\"; filename*=UTF-8''photo.png"
        );
        // Whatever the name, the header is valid and carries no raw quote,
        // backslash or control character.
        for name in ["\"\\\r\n", "日本語.pdf", "%41", "a;b=c", "\u{202e}gpj.exe"] {
            let v = disposition(false, name);
            let text = v.to_str().expect("ascii");
            let fallback = text
                .split("filename=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            assert!(fallback.is_some_and(|f| !f.contains('\\')), "{text}");
        }
    }

    #[test]
    fn declared_types_keep_their_essence_only() {
        assert_eq!(
            clean_content_type("Text/HTML; charset=utf-8").as_deref(),
            Some("text/html")
        );
        assert_eq!(
            clean_content_type("image/svg+xml").as_deref(),
            Some("image/svg+xml")
        );
        assert_eq!(clean_content_type("nonsense"), None);
        assert_eq!(clean_content_type("a/b c"), None);
        assert_eq!(clean_content_type("/x"), None);
    }
}
