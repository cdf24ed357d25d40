//! JSON <-> BSON conversion, and the stored layout of an Arca document.
//!
//! This file owns two things the MongoDB engine must get exactly right:
//!
//! 1. Number kinds. A JSON integer becomes `Int32` when it fits in 32 bits,
//!    else `Int64`; a JSON float becomes `Double`. Reading back, `Int32` and
//!    `Int64` become JSON integers and `Double` a JSON float (serde_json
//!    keeps `2.0` a float), so a document reads back with the number kinds
//!    it was written with, and `$type: "int"` / `"long"` / `"double"` see
//!    the same kinds as the reference evaluator (see `arca_core::query::
//!    filter::TypeName`). An integer beyond `i64` (serde_json holds it as a
//!    `u64`) cannot be stored: it is an error naming its JSON pointer (the
//!    contract answers `422` on both engines).
//! 2. The stored layout: `{_id: {t, i}, _tenant, _rev, _created_at,
//!    _updated_at, _owner, ...body}` (see `to_stored`), and reading it back
//!    into an `arca_core::Document`, refusing anything malformed with an
//!    error instead of a panic.
//!
//! Object member order is kept both ways (serde_json's `preserve_order`
//! and bson's `Document` are both insertion-ordered), because MongoDB
//! compares embedded documents field by field in order and clients see the
//! order they wrote.
//!
//! BSON types that JSON cannot hold never come from the API, but a document
//! written around it (mongosh, another program) may hold them. They are
//! read deterministically, never with a panic, as plain JSON values the API
//! can write back (no `$`-keys of Extended JSON, which the API refuses):
//!
//! | BSON | JSON |
//! |---|---|
//! | Double NaN, +Infinity, -Infinity | the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | ObjectId | its 24 lowercase hex digits |
//! | Date | RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`), or the integer milliseconds since the epoch outside years 0000..=9999 |
//! | Decimal128 | its decimal string (`"1.50"`, `"NaN"`), exact |
//! | Binary (any subtype) | standard base64 with padding |
//! | Regular expression | `"/pattern/options"` |
//! | JavaScript code (with or without scope), Symbol | the code / symbol text |
//! | Timestamp | `{"t": seconds, "i": increment}` |
//! | Undefined, MinKey, MaxKey, DBPointer | `null` |
//!
//! The filter translation's exactness (see `filter.rs`) holds for documents
//! written through the API; for such foreign values the engine's evaluator
//! sees the mapped JSON while MongoDB sees the original type.

use arca_core::{DocId, Document, SystemFields, Tenant};
use base64::Engine as _;
use mongodb::bson::{self, Bson};
use serde_json::{Map, Number, Value};

/// Deepest nesting converted (objects and arrays). The contract allows 100
/// levels; the margin covers the stored layout's own level. A guard, so a
/// hostile or corrupt value is an error rather than a stack overflow.
pub const MAX_DEPTH: usize = 128;

/// Why a value or a stored document cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A JSON integer beyond the signed 64-bit range (a `u64` above
    /// `i64::MAX`): BSON has no such integer and rounding it to a double
    /// would silently change it.
    #[error("the integer at {path} is outside the signed 64-bit range")]
    IntegerOutOfRange {
        /// JSON pointer to the integer.
        path: String,
    },
    /// A member name holding NUL, which BSON field names cannot contain.
    #[error("the field name at {path} contains a NUL character")]
    NulInName {
        /// JSON pointer to the member.
        path: String,
    },
    /// Objects and arrays nested deeper than `MAX_DEPTH`.
    #[error("the value at {path} nests deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// JSON pointer to the value where the limit was crossed.
        path: String,
    },
    /// A stored document that does not have the Arca layout.
    #[error("stored document: {field} {problem}")]
    Malformed {
        /// The offending top-level field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn malformed(field: &str, problem: impl Into<String>) -> ValueError {
    ValueError::Malformed {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// Appends one JSON pointer segment (RFC 6901 escaping).
fn pointer(base: &str, seg: &str) -> String {
    let mut out = String::with_capacity(base.len() + seg.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in seg.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// Converts a JSON value to BSON, keeping number kinds (see the module doc).
pub fn json_to_bson(v: &Value) -> Result<Bson, ValueError> {
    json_at(v, "", 0)
}

/// Converts a JSON object to a BSON document, member order kept.
pub fn json_object_to_document(m: &Map<String, Value>) -> Result<bson::Document, ValueError> {
    object_at(m, "", 0)
}

/// The BSON number for a JSON number: `Int32` when it fits, else `Int64`,
/// `Double` for floats; `None` for an integer beyond `i64`.
pub fn json_number_to_bson(n: &Number) -> Option<Bson> {
    if let Some(i) = n.as_i64() {
        return Some(match i32::try_from(i) {
            Ok(small) => Bson::Int32(small),
            Err(_) => Bson::Int64(i),
        });
    }
    if n.is_u64() {
        // Only integers above i64::MAX reach here.
        return None;
    }
    n.as_f64().map(Bson::Double)
}

fn json_at(v: &Value, path: &str, depth: usize) -> Result<Bson, ValueError> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::String(s) => Bson::String(s.clone()),
        Value::Number(n) => {
            json_number_to_bson(n).ok_or_else(|| ValueError::IntegerOutOfRange {
                path: display_path(path),
            })?
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(ValueError::TooDeep {
                    path: display_path(path),
                });
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(json_at(item, &pointer(path, &i.to_string()), depth + 1)?);
            }
            Bson::Array(out)
        }
        Value::Object(m) => Bson::Document(object_at(m, path, depth)?),
    })
}

fn object_at(
    m: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<bson::Document, ValueError> {
    if depth >= MAX_DEPTH {
        return Err(ValueError::TooDeep {
            path: display_path(path),
        });
    }
    let mut out = bson::Document::new();
    for (k, v) in m {
        let here = pointer(path, k);
        if k.contains('\0') {
            return Err(ValueError::NulInName { path: here });
        }
        let b = json_at(v, &here, depth + 1)?;
        out.insert(k.clone(), b);
    }
    Ok(out)
}

/// The root pointer is `""`; errors show it as `/` for readability.
fn display_path(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

/// Converts BSON to JSON, keeping number kinds and member order; BSON-only
/// types map as the module doc's table says. Fails only past `MAX_DEPTH`.
pub fn bson_to_json(b: &Bson) -> Result<Value, ValueError> {
    bson_at(b, "", 0)
}

/// Converts a BSON document to a JSON object, member order kept.
pub fn document_to_json(d: &bson::Document) -> Result<Map<String, Value>, ValueError> {
    document_at(d, "", 0)
}

fn document_at(
    d: &bson::Document,
    path: &str,
    depth: usize,
) -> Result<Map<String, Value>, ValueError> {
    if depth >= MAX_DEPTH {
        return Err(ValueError::TooDeep {
            path: display_path(path),
        });
    }
    let mut out = Map::with_capacity(d.len());
    for (k, v) in d {
        let here = pointer(path, k);
        out.insert(k.clone(), bson_at(v, &here, depth + 1)?);
    }
    Ok(out)
}

fn bson_at(b: &Bson, path: &str, depth: usize) -> Result<Value, ValueError> {
    Ok(match b {
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey | Bson::DbPointer(_) => {
            Value::Null
        }
        Bson::Boolean(x) => Value::Bool(*x),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None if f.is_nan() => Value::String("NaN".into()),
            None if *f > 0.0 => Value::String("Infinity".into()),
            None => Value::String("-Infinity".into()),
        },
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => Value::String(s.clone()),
        Bson::JavaScriptCodeWithScope(c) => Value::String(c.code.clone()),
        Bson::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(ValueError::TooDeep {
                    path: display_path(path),
                });
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(bson_at(item, &pointer(path, &i.to_string()), depth + 1)?);
            }
            Value::Array(out)
        }
        Bson::Document(d) => Value::Object(document_at(d, path, depth)?),
        Bson::ObjectId(oid) => Value::String(oid.to_hex()),
        Bson::DateTime(dt) => date_to_json(dt.timestamp_millis()),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Binary(bin) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&bin.bytes))
        }
        Bson::RegularExpression(re) => {
            Value::String(format!("/{}/{}", re.pattern.as_str(), re.options.as_str()))
        }
        Bson::Timestamp(ts) => {
            let mut m = Map::with_capacity(2);
            m.insert("t".into(), Value::from(ts.time));
            m.insert("i".into(), Value::from(ts.increment));
            Value::Object(m)
        }
    })
}

/// A BSON date as Arca writes its own timestamps (RFC 3339, UTC,
/// milliseconds), or the raw milliseconds where RFC 3339 has no year.
fn date_to_json(millis: i64) -> Value {
    let days = millis.div_euclid(86_400_000);
    let ms_of_day = millis.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return Value::from(millis);
    }
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    Value::String(format!(
        "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z"
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by
/// the well-known era arithmetic (400-year cycles of 146,097 days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Top-level fields of the stored layout that are not user fields.
pub const SYSTEM_FIELDS: &[&str] = &[
    "_id",
    "_tenant",
    "_rev",
    "_created_at",
    "_updated_at",
    "_owner",
];

/// The stored `_id` of a document: `{t: <tenant key>, i: <arca id>}`.
pub fn stored_id(tenant: &Tenant, id: &DocId) -> bson::Document {
    let mut d = bson::Document::new();
    d.insert("t", tenant.key());
    d.insert("i", id.as_str());
    d
}

/// The stored form of `doc` in `tenant`'s space: `{_id: {t, i}, _tenant,
/// _rev: Int64, _created_at, _updated_at, _owner, ...body}`.
///
/// Fails on a body value BSON cannot hold exactly (an integer beyond
/// `i64`, a NUL in a name), on a body field starting with `_` (it would
/// collide with the system fields; `Document` promises there is none), and
/// on a revision beyond `i64`.
pub fn to_stored(doc: &Document, tenant: &Tenant) -> Result<bson::Document, ValueError> {
    let s = &doc.system;
    let rev =
        i64::try_from(s.rev).map_err(|_| malformed("_rev", "exceeds the signed 64-bit range"))?;
    let mut out = bson::Document::new();
    out.insert("_id", stored_id(tenant, &s.id));
    out.insert("_tenant", tenant.key());
    out.insert("_rev", Bson::Int64(rev));
    out.insert("_created_at", s.created_at.as_str());
    out.insert("_updated_at", s.updated_at.as_str());
    out.insert("_owner", s.owner.as_str());
    for (k, v) in &doc.body {
        let here = pointer("", k);
        if k.starts_with('_') {
            return Err(malformed(&here, "is a user field starting with '_'"));
        }
        if k.contains('\0') {
            return Err(ValueError::NulInName { path: here });
        }
        out.insert(k.clone(), json_at(v, &here, 1)?);
    }
    Ok(out)
}

fn string_field<'a>(stored: &'a bson::Document, field: &str) -> Result<&'a str, ValueError> {
    match stored.get(field) {
        Some(Bson::String(s)) => Ok(s),
        Some(other) => Err(malformed(
            field,
            format!("is a {:?}, not a string", other.element_type()),
        )),
        None => Err(malformed(field, "is missing")),
    }
}

/// The tenant key of a stored document (`_id.t`), checked against
/// `_tenant` when that field is present (a projection may leave it out).
pub fn stored_tenant(stored: &bson::Document) -> Result<&str, ValueError> {
    let id = match stored.get("_id") {
        Some(Bson::Document(d)) => d,
        Some(_) => return Err(malformed("_id", "is not an embedded document {t, i}")),
        None => return Err(malformed("_id", "is missing")),
    };
    let t = string_field(id, "t").map_err(|_| malformed("_id", "has no string `t`"))?;
    if let Some(tenant) = stored.get("_tenant")
        && tenant.as_str() != Some(t)
    {
        return Err(malformed("_tenant", "differs from _id.t"));
    }
    Ok(t)
}

/// Reads a stored document back into an `arca_core::Document`.
///
/// `_id` must be `{t: string, i: <valid Arca id>}` (and `_tenant`, when
/// present, equal to `t`), `_rev` an `Int32`/`Int64` of at least 1, the
/// timestamps and `_owner` strings. Other top-level fields starting with
/// `_` are the engine's own (none today besides `_tenant`) and are left out
/// of the body, which by contract holds no such field. Body values are
/// converted by `bson_to_json`.
pub fn from_stored(stored: &bson::Document) -> Result<Document, ValueError> {
    stored_tenant(stored)?;
    let id = match stored.get("_id") {
        Some(Bson::Document(d)) => {
            string_field(d, "i").map_err(|_| malformed("_id", "has no string `i`"))?
        }
        _ => return Err(malformed("_id", "is not an embedded document {t, i}")),
    };
    let id = DocId::parse(id).map_err(|e| malformed("_id", format!("holds a bad id: {e}")))?;
    let rev = match stored.get("_rev") {
        Some(Bson::Int64(r)) => *r,
        Some(Bson::Int32(r)) => i64::from(*r),
        Some(other) => {
            return Err(malformed(
                "_rev",
                format!("is a {:?}, not an integer", other.element_type()),
            ));
        }
        None => return Err(malformed("_rev", "is missing")),
    };
    let rev = u64::try_from(rev)
        .ok()
        .filter(|r| *r >= 1)
        .ok_or_else(|| malformed("_rev", "is below 1"))?;
    let system = SystemFields {
        id,
        rev,
        created_at: string_field(stored, "_created_at")?.to_owned(),
        updated_at: string_field(stored, "_updated_at")?.to_owned(),
        owner: string_field(stored, "_owner")?.to_owned(),
    };
    let mut body = Map::with_capacity(stored.len().saturating_sub(SYSTEM_FIELDS.len()));
    for (k, v) in stored {
        if k.starts_with('_') {
            continue;
        }
        body.insert(k.clone(), bson_at(v, &pointer("", k), 1)?);
    }
    Ok(Document { system, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId};
    use serde_json::json;

    fn round_trip(v: Value) -> Value {
        bson_to_json(&json_to_bson(&v).expect("to bson")).expect("to json")
    }

    #[test]
    fn integers_take_the_smallest_kind_and_floats_stay_doubles() {
        assert_eq!(json_to_bson(&json!(5)), Ok(Bson::Int32(5)));
        assert_eq!(json_to_bson(&json!(-2147483648)), Ok(Bson::Int32(i32::MIN)));
        assert_eq!(
            json_to_bson(&json!(2147483648_i64)),
            Ok(Bson::Int64(2147483648))
        );
        assert_eq!(json_to_bson(&json!(i64::MAX)), Ok(Bson::Int64(i64::MAX)));
        assert_eq!(json_to_bson(&json!(i64::MIN)), Ok(Bson::Int64(i64::MIN)));
        assert_eq!(json_to_bson(&json!(2.0)), Ok(Bson::Double(2.0)));
        assert_eq!(json_to_bson(&json!(-0.0)), Ok(Bson::Double(-0.0)));
    }

    #[test]
    fn number_kinds_survive_a_round_trip() {
        let v = json!({"i": 7, "l": 9007199254740993_i64, "d": 2.0, "f": 1.5, "n": -1});
        let back = round_trip(v.clone());
        assert_eq!(back, v);
        // 2.0 is still a float, written as such.
        assert_eq!(serde_json::to_string(&back["d"]).expect("json"), "2.0");
        assert!(back["i"].is_i64() && back["l"].is_i64() && back["d"].is_f64());
    }

    #[test]
    fn integers_beyond_i64_are_refused_with_their_pointer() {
        let v = json!({"a": [1, {"b/c": u64::MAX}]});
        assert_eq!(
            json_to_bson(&v),
            Err(ValueError::IntegerOutOfRange {
                path: "/a/1/b~1c".into()
            })
        );
        assert_eq!(
            json_to_bson(&json!(u64::MAX)),
            Err(ValueError::IntegerOutOfRange { path: "/".into() })
        );
        // i64::MAX + 1 is the first integer refused.
        assert!(json_to_bson(&json!(9223372036854775808_u64)).is_err());
    }

    #[test]
    fn member_order_is_kept_both_ways() {
        let v = json!({"z": 1, "a": {"y": 2, "b": 3}, "m": [{"q": 1, "c": 2}]});
        let b = json_to_bson(&v).expect("bson");
        let Bson::Document(d) = &b else {
            panic!("document expected")
        };
        assert_eq!(d.keys().collect::<Vec<_>>(), ["z", "a", "m"]);
        let back = bson_to_json(&b).expect("json");
        assert_eq!(
            serde_json::to_string(&back).expect("json"),
            r#"{"z":1,"a":{"y":2,"b":3},"m":[{"q":1,"c":2}]}"#
        );
    }

    #[test]
    fn names_with_nul_and_excessive_depth_are_errors() {
        assert_eq!(
            json_to_bson(&json!({"a": {"x\u{0}y": 1}})),
            Err(ValueError::NulInName {
                path: "/a/x\u{0}y".into()
            })
        );
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH + 1 {
            deep = json!([deep]);
        }
        assert!(matches!(
            json_to_bson(&deep),
            Err(ValueError::TooDeep { .. })
        ));
        let mut deep = Bson::Int32(1);
        for _ in 0..MAX_DEPTH + 1 {
            deep = Bson::Document(doc! {"a": deep});
        }
        assert!(matches!(
            bson_to_json(&deep),
            Err(ValueError::TooDeep { .. })
        ));
    }

    #[test]
    fn bson_only_types_map_deterministically() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").expect("oid");
        let d = doc! {
            "oid": oid,
            "date": bson::DateTime::from_millis(1_767_323_045_678),
            "old": bson::DateTime::from_millis(-62_167_219_200_001),
            "dec": "1.50".parse::<bson::Decimal128>().expect("decimal"),
            "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
            "re": bson::Regex {
                pattern: bson::raw::CString::try_from("^a.c").expect("cstring"),
                options: bson::raw::CString::try_from("i").expect("cstring"),
            },
            "ts": bson::Timestamp { time: 7, increment: 3 },
            "nan": f64::NAN,
            "inf": f64::INFINITY,
            "ninf": f64::NEG_INFINITY,
            "undef": Bson::Undefined,
            "min": Bson::MinKey,
            "max": Bson::MaxKey,
            "code": Bson::JavaScriptCode("return 1".into()),
            "sym": Bson::Symbol("s".into()),
        };
        let j = document_to_json(&d).expect("json");
        assert_eq!(
            Value::Object(j),
            json!({
                "oid": "65a1b2c3d4e5f60718293a4b",
                "date": "2026-01-02T03:04:05.678Z",
                "old": -62_167_219_200_001_i64,
                "dec": "1.50",
                "bin": "AAEC/w==",
                "re": "/^a.c/i",
                "ts": {"t": 7, "i": 3},
                "nan": "NaN",
                "inf": "Infinity",
                "ninf": "-Infinity",
                "undef": null,
                "min": null,
                "max": null,
                "code": "return 1",
                "sym": "s",
            })
        );
        // The civil calendar arithmetic on known dates.
        assert_eq!(date_to_json(0), json!("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            date_to_json(951_782_400_000),
            json!("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(date_to_json(-1), json!("1969-12-31T23:59:59.999Z"));
        assert_eq!(
            date_to_json(-62_167_219_200_000),
            json!("0000-01-01T00:00:00.000Z")
        );
        assert_eq!(
            date_to_json(253_402_300_799_999),
            json!("9999-12-31T23:59:59.999Z")
        );
    }

    fn sample() -> Document {
        let Value::Object(body) =
            json!({"name": "Ana", "age": 30, "score": 9.5, "tags": ["a"], "nick": null})
        else {
            panic!("object")
        };
        Document {
            system: SystemFields {
                id: DocId::parse("doc-1").expect("id"),
                rev: 3,
                created_at: "2026-01-01T00:00:00.000Z".into(),
                updated_at: "2026-01-02T00:00:00.000Z".into(),
                owner: "u1".into(),
            },
            body,
        }
    }

    #[test]
    fn a_document_round_trips_through_the_stored_layout() {
        let doc = sample();
        let tenant = Tenant::parse("t1").expect("tenant");
        let stored = to_stored(&doc, &tenant).expect("stored");
        assert_eq!(
            stored,
            doc! {
                "_id": {"t": "t1", "i": "doc-1"},
                "_tenant": "t1",
                "_rev": 3_i64,
                "_created_at": "2026-01-01T00:00:00.000Z",
                "_updated_at": "2026-01-02T00:00:00.000Z",
                "_owner": "u1",
                "name": "Ana", "age": 30, "score": 9.5, "tags": ["a"], "nick": Bson::Null,
            }
        );
        assert_eq!(stored_tenant(&stored), Ok("t1"));
        assert_eq!(from_stored(&stored), Ok(doc.clone()));
        // The untenanted space is the empty key.
        let untenanted = to_stored(&doc, &Tenant::None).expect("stored");
        assert_eq!(
            untenanted
                .get_document("_id")
                .expect("id")
                .get_str("t")
                .ok(),
            Some("")
        );
        assert_eq!(from_stored(&untenanted), Ok(doc));
    }

    #[test]
    fn malformed_stored_documents_are_errors_not_panics() {
        let good = to_stored(&sample(), &Tenant::None).expect("stored");
        let broken = |f: &dyn Fn(&mut bson::Document)| {
            let mut d = good.clone();
            f(&mut d);
            from_stored(&d)
        };
        let field_of = |r: Result<Document, ValueError>| match r {
            Err(ValueError::Malformed { field, .. }) => field,
            other => panic!("malformed expected, got {other:?}"),
        };
        assert_eq!(
            field_of(broken(&|d| {
                d.remove("_id");
            })),
            "_id"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_id", "x");
            })),
            "_id"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_id", doc! {"t": ""});
            })),
            "_id"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_id", doc! {"t": "", "i": "bad id"});
            })),
            "_id"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_id", doc! {"t": 1, "i": "a"});
            })),
            "_id"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_tenant", "other");
            })),
            "_tenant"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_rev", 1.0);
            })),
            "_rev"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_rev", 0_i64);
            })),
            "_rev"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.remove("_rev");
            })),
            "_rev"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.insert("_owner", 5);
            })),
            "_owner"
        );
        assert_eq!(
            field_of(broken(&|d| {
                d.remove("_created_at");
            })),
            "_created_at"
        );
        // An Int32 revision (a hand-written document) is accepted.
        assert_eq!(
            broken(&|d| {
                d.insert("_rev", 3);
            })
            .map(|d| d.system.rev),
            Ok(3)
        );
        // Engine-internal fields are not part of the body.
        let read = broken(&|d| {
            d.insert("_internal", 1);
        })
        .expect("readable");
        assert!(!read.body.contains_key("_internal") && !read.body.contains_key("_tenant"));
    }

    #[test]
    fn writing_refuses_what_the_layout_cannot_hold() {
        let mut doc = sample();
        doc.body.insert("_tenant".into(), json!("x"));
        assert!(matches!(
            to_stored(&doc, &Tenant::None),
            Err(ValueError::Malformed { .. })
        ));
        let mut doc = sample();
        doc.body.insert("big".into(), json!(u64::MAX));
        assert_eq!(
            to_stored(&doc, &Tenant::None),
            Err(ValueError::IntegerOutOfRange {
                path: "/big".into()
            })
        );
        let mut doc = sample();
        doc.system.rev = u64::MAX;
        assert!(to_stored(&doc, &Tenant::None).is_err());
    }
}
