//! Value helpers shared by the pipeline's stages and expressions: MongoDB's
//! type names (for error messages), truthiness, missing-aware comparison,
//! a hashable key that agrees with MongoDB equality (for `$group`,
//! `$addToSet` and `$lookup`), size and depth measurement (for the memory
//! budget and the per-document limits), expression field paths (which,
//! unlike query paths, turn a path through an array into an array), and
//! setting or removing a dotted path in a document.
//!
//! Missing is `None` everywhere in this module: MongoDB keeps "missing"
//! apart from `null` in expressions (`{$eq: ["$nope", null]}` is false).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::query::order;

use super::{MAX_DOCUMENT_BYTES, MAX_VALUE_DEPTH, PipelineError};

/// MongoDB's name for the type of a value (`typeName` in its messages):
/// integers are `int` within 32 bits and `long` beyond, as the MongoDB
/// engine stores them.
pub(crate) fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "missing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "bool",
        Some(Value::String(_)) => "string",
        Some(Value::Object(_)) => "object",
        Some(Value::Array(_)) => "array",
        Some(Value::Number(n)) => {
            if n.is_f64() {
                "double"
            } else if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) {
                "int"
            } else {
                "long"
            }
        }
    }
}

/// Null or missing (`nullish` in MongoDB's terms).
pub(crate) fn nullish(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// MongoDB's `coerceToBool`: false, null, missing and numeric zero are
/// false; everything else (empty strings, arrays and objects included) is
/// true.
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(_) => true,
    }
}

/// Compares two expression values in BSON order, missing lowest (below
/// null), as MongoDB's expression comparisons do.
pub(crate) fn compare_missing(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => order::compare(x, y),
    }
}

/// A text key that two values share exactly when they are equal in
/// MongoDB's sense (`1` and `1.0` share one; objects compare field by
/// field in order, so `{a, b}` and `{b, a}` do not). Used to hash group
/// keys, `$addToSet` members and `$lookup` join values.
pub(crate) fn equality_key(v: &Value) -> String {
    let mut out = String::new();
    write_key(v, &mut out);
    out
}

fn write_key(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push('z'),
        Value::Bool(true) => out.push('t'),
        Value::Bool(false) => out.push('f'),
        Value::Number(n) => {
            // Integral numbers (whatever their kind) by their exact integer
            // value; other doubles by their shortest round-trip text, which
            // is distinct for distinct doubles.
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "n{i};");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "n{u};");
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if f.fract() == 0.0 && f.abs() < 1.0e38 {
                    // Exact: |f| < 2^127 and integral.
                    let _ = write!(out, "n{};", f as i128);
                } else {
                    let _ = write!(out, "d{f:?};");
                }
            }
        }
        Value::String(s) => {
            let _ = write!(out, "s{}:", s.len());
            out.push_str(s);
        }
        Value::Array(items) => {
            let _ = write!(out, "a{}:", items.len());
            for item in items {
                write_key(item, out);
            }
        }
        Value::Object(m) => {
            let _ = write!(out, "o{}:", m.len());
            for (k, item) in m {
                let _ = write!(out, "{}:", k.len());
                out.push_str(k);
                write_key(item, out);
            }
        }
    }
}

/// The approximate BSON size of a value in bytes (type tags, lengths and
/// terminators included), and its nesting depth (a scalar is 0, `{}` 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Measure {
    pub(crate) bytes: usize,
    pub(crate) depth: usize,
}

/// Measures `v`; stops descending past `MAX_VALUE_DEPTH + 1` levels (the
/// caller refuses such a value anyway), so it never recurses deeper.
pub(crate) fn measure(v: &Value) -> Measure {
    fn walk(v: &Value, level: usize, m: &mut Measure) {
        match v {
            Value::Null | Value::Bool(_) => m.bytes += 2,
            Value::Number(_) => m.bytes += 9,
            Value::String(s) => m.bytes += s.len() + 6,
            Value::Array(items) => {
                m.bytes += 6;
                m.depth = m.depth.max(level + 1);
                if level > MAX_VALUE_DEPTH {
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    // The index is the element's BSON name.
                    m.bytes += decimal_len(i) + 1;
                    walk(item, level + 1, m);
                }
            }
            Value::Object(map) => {
                m.bytes += 5;
                m.depth = m.depth.max(level + 1);
                if level > MAX_VALUE_DEPTH {
                    return;
                }
                for (k, item) in map {
                    m.bytes += k.len() + 1;
                    walk(item, level + 1, m);
                }
            }
        }
    }
    let mut m = Measure::default();
    walk(v, 0, &mut m);
    m
}

fn decimal_len(mut i: usize) -> usize {
    let mut n = 1;
    while i >= 10 {
        i /= 10;
        n += 1;
    }
    n
}

/// Checks a document a stage produced against the per-document limits
/// (`MAX_DOCUMENT_BYTES`, `MAX_VALUE_DEPTH`) and returns its size.
pub(crate) fn check_document(doc: &Value, stage: &str) -> Result<usize, PipelineError> {
    let m = measure(doc);
    if m.depth > MAX_VALUE_DEPTH {
        return Err(PipelineError::Runtime(format!(
            "{stage} would produce a document nested deeper than {MAX_VALUE_DEPTH} levels"
        )));
    }
    if m.bytes > MAX_DOCUMENT_BYTES {
        return Err(PipelineError::Runtime(format!(
            "{stage} would produce a document of more than {MAX_DOCUMENT_BYTES} bytes (16 MiB, MongoDB's document limit)"
        )));
    }
    Ok(m.bytes)
}

/// Bytes an expression may build while one document goes through one
/// stage: the values it copies into arrays, objects and output fields,
/// and the strings it makes. A value nested in several built containers
/// counts once per level. Past `MAX_DOCUMENT_BYTES` the evaluation stops
/// with a runtime error, so no expression can grow without bound.
#[derive(Debug)]
pub(crate) struct Budget {
    left: usize,
}

impl Budget {
    pub(crate) fn new() -> Self {
        Self {
            left: MAX_DOCUMENT_BYTES,
        }
    }

    pub(crate) fn charge(&mut self, bytes: usize) -> Result<(), PipelineError> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(PipelineError::Runtime(format!(
                "an expression would build more than {MAX_DOCUMENT_BYTES} bytes (16 MiB, MongoDB's document limit) for one document"
            ))),
        }
    }

    /// Charges the size of `v` (about to be copied).
    pub(crate) fn charge_value(&mut self, v: &Value) -> Result<(), PipelineError> {
        let m = measure(v);
        if m.depth > MAX_VALUE_DEPTH {
            return Err(PipelineError::Runtime(format!(
                "an expression would build a value nested deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        self.charge(m.bytes)
    }
}

/// The value an expression field path (`$a.b.c`) reaches from a document,
/// with MongoDB's expression semantics: objects are entered by field name
/// (a numeric segment is a field name, never an array index); a path that
/// meets an array continues into each element that is an object and
/// gathers the results into an array, leaving out elements where the rest
/// of the path is missing (and elements that are not objects, nested
/// arrays included). `None` is missing.
pub(crate) fn document_path<'a>(
    doc: &'a Map<String, Value>,
    segs: &[String],
) -> Option<Cow<'a, Value>> {
    let (first, rest) = segs.split_first()?;
    let v = doc.get(first)?;
    if rest.is_empty() {
        return Some(Cow::Borrowed(v));
    }
    match v {
        Value::Object(sub) => document_path(sub, rest),
        Value::Array(items) => Some(Cow::Owned(array_path(items, rest))),
        _ => None,
    }
}

/// `document_path` continued into each object element of an array.
pub(crate) fn array_path(items: &[Value], segs: &[String]) -> Value {
    Value::Array(
        items
            .iter()
            .filter_map(Value::as_object)
            .filter_map(|m| document_path(m, segs))
            .map(Cow::into_owned)
            .collect(),
    )
}

/// The rest of a path after a variable (`$$ROOT.a.b`, `$$v.x`): the whole
/// value without segments; into an object or through an array as
/// `document_path`; missing under anything else.
pub(crate) fn value_path<'a>(v: &'a Value, segs: &[String]) -> Option<Cow<'a, Value>> {
    if segs.is_empty() {
        return Some(Cow::Borrowed(v));
    }
    match v {
        Value::Object(m) => document_path(m, segs),
        Value::Array(items) => Some(Cow::Owned(array_path(items, segs))),
        _ => None,
    }
}

/// The value at a dotted path through objects only (MongoDB's
/// `getNestedField`, used by `$unwind`): an array or scalar on the way
/// makes it missing.
pub(crate) fn nested_field<'a>(doc: &'a Map<String, Value>, segs: &[String]) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let v = doc.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Value::Object(sub) => nested_field(sub, rest),
        _ => None,
    }
}

/// Sets a dotted path in a document (MongoDB's `setNestedField`): objects
/// on the way are entered, anything else on the way (missing, scalars,
/// arrays) is replaced by a new object. An existing field keeps its
/// position; a new one is appended.
pub(crate) fn set_path(doc: &mut Map<String, Value>, segs: &[String], value: Value) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.insert(first.clone(), value);
        return;
    }
    let slot = doc
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(sub) = slot {
        set_path(sub, rest, value);
    }
}

/// Removes a dotted path through objects only (keeping the order of the
/// other fields); does nothing when the path is not there.
pub(crate) fn remove_path(doc: &mut Map<String, Value>, segs: &[String]) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.shift_remove(first);
        return;
    }
    if let Some(Value::Object(sub)) = doc.get_mut(first) {
        remove_path(sub, rest);
    }
}

/// A double as C's `printf("%g")` writes it (6 significant digits, the
/// shorter of fixed and exponent notation, trailing zeros dropped), which
/// is how MongoDB turns a double into a string in `$toLower`/`$toUpper`.
pub(crate) fn format_g(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Rounded to 6 significant digits first: the exponent is the rounded
    // value's (9.999995 -> "10").
    let sci = format!("{f:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let m = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.unsigned_abs())
    } else {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        strip_zeros(&format!("{f:.decimals$}")).to_owned()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segs(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn equality_keys_agree_with_mongodb_equality() {
        assert_eq!(equality_key(&json!(1)), equality_key(&json!(1.0)));
        assert_eq!(equality_key(&json!(-0.0)), equality_key(&json!(0)));
        assert_ne!(equality_key(&json!(1)), equality_key(&json!("1")));
        assert_ne!(equality_key(&json!(1.5)), equality_key(&json!(1)));
        assert_eq!(
            equality_key(&json!({"a": [1, 2.0]})),
            equality_key(&json!({"a": [1.0, 2]}))
        );
        assert_ne!(
            equality_key(&json!({"a": 1, "b": 2})),
            equality_key(&json!({"b": 2, "a": 1}))
        );
        assert_ne!(
            equality_key(&json!(["ab"])),
            equality_key(&json!(["a", "b"]))
        );
        assert_ne!(equality_key(&json!(null)), equality_key(&json!([])));
        assert_eq!(
            equality_key(&json!(9223372036854775807_i64)),
            "n9223372036854775807;"
        );
        assert_eq!(equality_key(&json!(1e20)), equality_key(&json!(1.0e20)));
    }

    #[test]
    fn expression_paths_gather_through_arrays() {
        let d =
            json!({"a": [{"b": 1}, {"c": 2}, 3, [{"b": 9}], {"b": [4, 5]}], "o": {"p": {"q": 1}}});
        let m = d.as_object().expect("object");
        assert_eq!(
            document_path(m, &segs("a.b")).map(Cow::into_owned),
            Some(json!([1, [4, 5]]))
        );
        assert_eq!(
            document_path(m, &segs("o.p.q")).map(Cow::into_owned),
            Some(json!(1))
        );
        assert_eq!(document_path(m, &segs("o.x")), None);
        assert_eq!(document_path(m, &segs("o.p.q.r")), None);
        // Numeric segments are field names in expressions.
        assert_eq!(
            document_path(m, &segs("a.0")).map(Cow::into_owned),
            Some(json!([]))
        );
    }

    #[test]
    fn set_and_remove_paths_keep_order() {
        let mut d = json!({"a": 1, "b": {"c": 2}, "z": 3});
        let m = d.as_object_mut().expect("object");
        set_path(m, &segs("b.d"), json!(4));
        set_path(m, &segs("a.x"), json!(5));
        set_path(m, &segs("n.m"), json!(6));
        remove_path(m, &segs("b.c"));
        remove_path(m, &segs("z"));
        remove_path(m, &segs("q.r"));
        assert_eq!(
            serde_json::to_string(&d).expect("json"),
            r#"{"a":{"x":5},"b":{"d":4},"n":{"m":6}}"#
        );
    }

    #[test]
    fn doubles_format_like_printf_g() {
        for (f, s) in [
            (2.5, "2.5"),
            (1.0, "1"),
            (100000.0, "100000"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-3.25, "-3.25"),
            (1e20, "1e+20"),
            (9.9999996, "10"),
            (999999.5, "1e+06"),
            (-0.0, "-0"),
            (1.0 / 3.0, "0.333333"),
        ] {
            assert_eq!(format_g(f), s, "{f}");
        }
    }

    #[test]
    fn measures_bytes_and_depth() {
        assert_eq!(measure(&json!(1)).depth, 0);
        assert_eq!(measure(&json!({"a": [1]})).depth, 2);
        let mut deep = json!(1);
        for _ in 0..(MAX_VALUE_DEPTH + 10) {
            deep = json!([deep]);
        }
        assert!(measure(&deep).depth > MAX_VALUE_DEPTH);
        assert!(check_document(&deep, "$set").is_err());
        assert!(measure(&json!({"abc": "xyz"})).bytes >= 10);
    }

    #[test]
    fn truthiness_and_missing_order() {
        assert!(!truthy(None));
        assert!(!truthy(Some(&json!(0.0))));
        assert!(truthy(Some(&json!(""))));
        assert!(truthy(Some(&json!([]))));
        assert_eq!(compare_missing(None, Some(&json!(null))), Ordering::Less);
        assert_eq!(compare_missing(None, None), Ordering::Equal);
        assert_eq!(type_name(Some(&json!(3_000_000_000_i64))), "long");
        assert_eq!(type_name(Some(&json!(3))), "int");
        assert_eq!(type_name(Some(&json!(3.0))), "double");
    }
}
