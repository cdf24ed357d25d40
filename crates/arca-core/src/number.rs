//! Finds JSON numbers that cannot be stored without changing them.
//!
//! `serde_json` (without `arbitrary_precision`, which would slow every number
//! access on the hot path) silently turns an integer literal beyond 64 bits
//! into an `f64` and refuses `1e400` as a syntax error. The contract wants
//! both reported as `422` ("never silently altered"), so this small scanner
//! walks the raw bytes once and checks every number literal outside strings.
//! No crate reports this, hence the hand-written scan.

/// The first number literal in `json` that fits neither `i64` (for an
/// integer literal: integers are signed 64-bit on both engines, MongoDB's
/// limit) nor a finite `f64` (for any literal), as text.
///
/// `json` need not be valid JSON: the scan only tracks strings and number
/// tokens, so it can also explain why `serde_json` refused a body.
pub fn first_unrepresentable(json: &[u8]) -> Option<String> {
    let mut i = 0;
    let n = json.len();
    while i < n {
        match json[i] {
            b'"' => {
                i += 1;
                while i < n {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integer = true;
                i += 1;
                while i < n {
                    match json[i] {
                        b'0'..=b'9' => {}
                        b'.' | b'e' | b'E' | b'+' | b'-' => integer = false,
                        _ => break,
                    }
                    i += 1;
                }
                let lit = std::str::from_utf8(&json[start..i]).unwrap_or("");
                if !representable(lit, integer) {
                    return Some(lit.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn representable(lit: &str, integer: bool) -> bool {
    if integer && lit.parse::<i64>().is_ok() {
        return true;
    }
    if integer {
        // An integer literal beyond 64 bits would become a rounded float.
        return false;
    }
    match lit.parse::<f64>() {
        Ok(f) => f.is_finite(),
        // Not a number literal at all (e.g. a lone `-`): a syntax matter for
        // the JSON parser, not a range matter.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::first_unrepresentable as scan;

    #[test]
    fn sixty_four_bit_integers_pass() {
        assert_eq!(
            scan(br#"{"a": 9223372036854775807, "b": -9223372036854775808}"#),
            None
        );
        assert_eq!(scan(br#"[1.5, -0.0, 1e308, 2E-5]"#), None);
    }

    #[test]
    fn oversized_integers_and_infinite_floats_are_found() {
        // Unsigned 64-bit values beyond the signed range too (MongoDB's
        // integers are signed; both engines keep the same limits).
        assert_eq!(
            scan(br#"{"u": 9223372036854775808}"#).as_deref(),
            Some("9223372036854775808")
        );
        assert_eq!(
            scan(br#"{"a": 18446744073709551616}"#).as_deref(),
            Some("18446744073709551616")
        );
        assert_eq!(
            scan(br#"{"a": -9223372036854775809}"#).as_deref(),
            Some("-9223372036854775809")
        );
        assert_eq!(scan(br#"{"a": [1, 1e400]}"#).as_deref(), Some("1e400"));
    }

    #[test]
    fn digits_inside_strings_are_ignored() {
        assert_eq!(
            scan(br#"{"a": "99999999999999999999999", "b\"9": "1e999"}"#),
            None
        );
    }
}
