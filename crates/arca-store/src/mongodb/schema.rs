//! A collection's JSON Schema (the subset `arca_core::schema` accepts) ->
//! a MongoDB `$jsonSchema` validator, so that a document written around
//! the API (mongosh, another program) is refused by the database too.
//!
//! The rule this file keeps: the validator must ACCEPT every document the
//! API accepts (else an API write fails at the database), and refuse as
//! much of the rest as `$jsonSchema` can express. So where a keyword
//! cannot be carried over exactly it is dropped or relaxed (the validator
//! gets weaker, never stronger), and the weakening is tracked: inside a
//! `not` a weaker subschema would make the validator stronger, so a `not`
//! over a weakened subschema is dropped; inside `oneOf` a weaker branch
//! could make two branches match, so a `oneOf` with a weakened branch
//! becomes `anyOf`. `Translated::relaxed` lists every such place.
//!
//! Mapping (MongoDB's `$jsonSchema` is draft 4 plus `bsonType`):
//!
//! - `type`: `string`, `object`, `array`, `null` keep their names,
//!   `boolean` is `bool`, `number` is `["int", "long", "double"]` (no
//!   Decimal128, which the API never writes). `integer` is
//!   `["int", "long"]` OR a double with no fraction: the API validates with
//!   the `jsonschema` crate, which (like JSON Schema since draft 6) takes
//!   `2.0` as an integer, and `value.rs` stores `2.0` as a Double, so
//!   `bsonType: ["int", "long"]` alone would refuse an API-valid document;
//!   `{bsonType: "double", multipleOf: 1}` admits exactly those doubles.
//! - `exclusiveMinimum: x` (a number since draft 6) becomes draft 4's
//!   `minimum: x, exclusiveMinimum: true`; with `minimum` beside it, the
//!   stricter of the two bounds is kept (likewise for maximums).
//! - `const: v` becomes `enum: [v]` (MongoDB has no `const`).
//! - `pattern` and `patternProperties` keys: MongoDB uses PCRE, the API
//!   Rust's `regex`. A pattern is carried over only within a subset both
//!   read alike: literal characters, escaped metacharacters, ASCII
//!   character classes and ranges, groups, alternation, quantifiers
//!   (`* + ? {n} {n,} {n,m}`) and `^`; a final `$` is kept but counts as
//!   weaker (PCRE's `$` also matches before a final newline). Anything
//!   else (`.`, `\d`, `\w`, Unicode classes, flags...) is dropped. An
//!   untranslatable `patternProperties` is dropped together with the same
//!   object's `additionalProperties` (which it would have exempted keys
//!   from).
//! - `multipleOf` with a fractional divisor is dropped (binary floating
//!   point remainders differ between the two implementations).
//! - `format`, `$schema`, `$comment`, `default`, `examples`, `deprecated`,
//!   `readOnly`, `writeOnly`: dropped (`api_only_keywords`); `title` and
//!   `description` are kept (MongoDB accepts them).
//! - Boolean subschemas: `true` is `{}`, `false` is `{not: {}}` (MongoDB
//!   takes booleans only for `additionalProperties`, which keeps them).
//!
//! The stored document holds the system fields besides the body the API
//! validates, so at the root (and in `allOf`/`anyOf`/`oneOf`/`not`
//! branches applying to the root object) they are declared in
//! `properties` (exempt from `additionalProperties`), the real root also
//! requires them with their types (`_id: {t: string, i: string}`,
//! `_tenant`, `_rev` int or long, `_created_at`, `_updated_at`, `_owner`
//! strings), and `minProperties`/`maxProperties` count them. A root-level
//! `enum`/`const` (a whole-document constant, which can never equal a
//! stored document with system fields) is dropped.

use std::cmp::Ordering;

use arca_core::query::order::compare_numbers;
use mongodb::bson::{Bson, Document, doc};
use serde_json::{Map, Number, Value};

use super::value::{SYSTEM_FIELDS, json_number_to_bson, json_to_bson};

/// Keywords the API accepts and the `$jsonSchema` validator never carries
/// (annotations, `format`): for docs listing what only the API enforces.
pub fn api_only_keywords() -> &'static [&'static str] {
    &[
        "format",
        "$schema",
        "$comment",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
    ]
}

/// Why a schema could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaTranslateError {
    /// JSON pointer into the schema.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A translated schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The validator to pass as the collection's `validator` option:
    /// `{$jsonSchema: {...}}`.
    pub validator: Document,
    /// JSON pointers (into the given schema) of keywords the database
    /// enforces more weakly than the API, or not at all, besides the
    /// `api_only_keywords` annotations: untranslatable `pattern`,
    /// `patternProperties`, fractional `multipleOf`, `format`, and the
    /// `not`/`oneOf`/`additionalProperties` relaxed because of them.
    pub relaxed: Vec<String>,
}

/// Translates a collection schema into a `$jsonSchema` validator.
pub fn validator(schema: &Value) -> Result<Translated, SchemaTranslateError> {
    let mut t = Translator {
        relaxed: Vec::new(),
    };
    let (mut root, _) = t.schema(schema, "", Place::Root, 0)?;
    root.insert_system_fields();
    Ok(Translated {
        validator: doc! {"$jsonSchema": root.0},
        relaxed: t.relaxed,
    })
}

/// Where a subschema applies: the stored document itself (the real root,
/// or a combinator branch over it), or a value inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    RootBranch,
    Inner,
}

const MAX_DEPTH: usize = 64;

struct Translator {
    relaxed: Vec<String>,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, SchemaTranslateError> {
    Err(SchemaTranslateError {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        message: message.into(),
    })
}

fn pointer(base: &str, seg: &str) -> String {
    format!("{base}/{}", seg.replace('~', "~0").replace('/', "~1"))
}

/// A translated subschema (a `$jsonSchema` object).
struct Sub(Document);

impl Sub {
    /// The real root: system fields declared first and required.
    fn insert_system_fields(&mut self) {
        let mut props = Document::new();
        props.insert(
            "_id",
            doc! {
                "bsonType": "object",
                "required": ["t", "i"],
                "properties": {"t": {"bsonType": "string"}, "i": {"bsonType": "string"}},
                "additionalProperties": false,
            },
        );
        props.insert("_tenant", doc! {"bsonType": "string"});
        props.insert("_rev", doc! {"bsonType": ["int", "long"]});
        for f in ["_created_at", "_updated_at", "_owner"] {
            props.insert(f, doc! {"bsonType": "string"});
        }
        if let Ok(user) = self.0.get_document("properties") {
            for (k, v) in user {
                if !props.contains_key(k) {
                    props.insert(k.clone(), v.clone());
                }
            }
        }
        let mut required: Vec<Bson> = SYSTEM_FIELDS.iter().map(|f| Bson::from(*f)).collect();
        if let Ok(user) = self.0.get_array("required") {
            for r in user {
                if !required.contains(r) {
                    required.push(r.clone());
                }
            }
        }
        self.0.insert("properties", props);
        self.0.insert("required", required);
    }

    /// A branch over the root: system fields exempt from
    /// `additionalProperties`, without constraining them.
    fn exempt_system_fields(&mut self) {
        if !self.0.contains_key("additionalProperties") {
            return;
        }
        let mut props = Document::new();
        for f in SYSTEM_FIELDS {
            props.insert(*f, Document::new());
        }
        if let Ok(user) = self.0.get_document("properties") {
            for (k, v) in user {
                if !props.contains_key(k) {
                    props.insert(k.clone(), v.clone());
                }
            }
        }
        self.0.insert("properties", props);
    }
}

/// `n` as BSON for a bound; an integer beyond i64 becomes the nearest
/// double on the side that keeps the bound no stricter (`lower`: not
/// above it, else not below it).
fn bound(n: &Number, lower: bool) -> Bson {
    if let Some(b) = json_number_to_bson(n) {
        return b;
    }
    let u = n.as_u64().unwrap_or(u64::MAX);
    let mut f = u as f64;
    // Positive finite doubles: the next one down/up is one ulp away.
    let f_int = f as u128;
    if lower && f_int > u128::from(u) {
        f = f64::from_bits(f.to_bits() - 1);
    } else if !lower && f_int < u128::from(u) {
        f = f64::from_bits(f.to_bits() + 1);
    }
    Bson::Double(f)
}

/// The PCRE text of a Rust regex within the subset both read alike, and
/// whether it matches exactly the same strings (`false` when a final `$`
/// makes PCRE also match before a trailing newline); `None` outside it.
fn portable_regex(p: &str) -> Option<(String, bool)> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len());
    let mut exact = true;
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the previous token can take a quantifier.
    let mut quantifiable = false;
    let is_meta = |c: char| ".^$|?*+()[]{}\\/-".contains(c);
    let literal_ok = |c: char| {
        c.is_ascii_alphanumeric()
            || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
            || " _-,:;@'\"=!%&<>~`/#".contains(c)
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let n = *chars.get(i + 1)?;
                if !is_meta(n) {
                    return None;
                }
                out.push('\\');
                out.push(n);
                i += 2;
                quantifiable = true;
                continue;
            }
            '^' => {
                out.push('^');
                quantifiable = false;
            }
            '$' => {
                // Only at the very end, where PCRE reads it as end of
                // subject or before a final newline.
                if i + 1 != chars.len() || depth != 0 {
                    return None;
                }
                out.push('$');
                exact = false;
                quantifiable = false;
            }
            '|' => {
                out.push('|');
                quantifiable = false;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return None;
                    }
                    out.push_str("(?:");
                    i += 3;
                } else {
                    out.push('(');
                    i += 1;
                }
                depth += 1;
                quantifiable = false;
                continue;
            }
            ')' => {
                depth = depth.checked_sub(1)?;
                out.push(')');
                quantifiable = true;
            }
            '[' => {
                let end = class_end(&chars, i)?;
                out.extend(&chars[i..=end]);
                i = end + 1;
                quantifiable = true;
                continue;
            }
            '*' | '+' | '?' => {
                if !quantifiable {
                    return None;
                }
                out.push(c);
                if chars.get(i + 1) == Some(&'?') {
                    out.push('?');
                    i += 1;
                }
                quantifiable = false;
            }
            '{' => {
                if !quantifiable {
                    return None;
                }
                let close = (i + 1..chars.len()).find(|j| chars[*j] == '}')?;
                let inner: String = chars[i + 1..close].iter().collect();
                let (lo, hi) = match inner.split_once(',') {
                    Some((lo, hi)) => (lo, Some(hi)),
                    None => (inner.as_str(), None),
                };
                let num = |s: &str| {
                    !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit())
                };
                if !num(lo) || hi.is_some_and(|h| !h.is_empty() && !num(h)) {
                    return None;
                }
                out.extend(&chars[i..=close]);
                i = close + 1;
                quantifiable = false;
                continue;
            }
            c if literal_ok(c) => {
                out.push(c);
                quantifiable = true;
            }
            _ => return None,
        }
        i += 1;
    }
    (depth == 0).then_some((out, exact))
}

/// The index of the `]` closing the class opened at `start`, if the class
/// holds only ASCII literals, escaped metacharacters and ranges.
fn class_end(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if chars.get(i) == Some(&'^') {
        i += 1;
    }
    let first = i;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ']' if i > first => return Some(i),
            '\\' => {
                let n = *chars.get(i + 1)?;
                if !"^-]\\[".contains(n) {
                    return None;
                }
                i += 2;
            }
            '-' => i += 1,
            c if c.is_ascii_alphanumeric() || " _,:;@'\"=!%&<>~`.+*?(){}|$/#".contains(c) => i += 1,
            _ => return None,
        }
    }
    None
}

impl Translator {
    fn relax(&mut self, path: &str) {
        self.relaxed.push(if path.is_empty() {
            "/".into()
        } else {
            path.into()
        });
    }

    /// Translates one subschema; the flag says whether it was weakened.
    fn schema(
        &mut self,
        s: &Value,
        path: &str,
        place: Place,
        depth: usize,
    ) -> Result<(Sub, bool), SchemaTranslateError> {
        if depth > MAX_DEPTH {
            return err(path, format!("schema nested deeper than {MAX_DEPTH}"));
        }
        let obj = match s {
            Value::Bool(true) => return Ok((Sub(Document::new()), false)),
            Value::Bool(false) => return Ok((Sub(doc! {"not": {}}), false)),
            Value::Object(o) => o,
            _ => return err(path, "a subschema is an object or a boolean"),
        };
        let mut out = Document::new();
        let mut weakened = false;
        let mut extra: Vec<Document> = Vec::new();
        let mut drop_additional = false;
        for (key, v) in obj {
            let here = pointer(path, key);
            match key.as_str() {
                "type" => {
                    let (bson_type, integer_doubles) = self.types(v, &here)?;
                    if integer_doubles {
                        extra.push(doc! {"anyOf": [
                            {"bsonType": bson_type},
                            {"bsonType": "double", "multipleOf": 1},
                        ]});
                    } else {
                        out.insert("bsonType", bson_type);
                    }
                }
                "properties" => {
                    let map = v.as_object().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"properties\" is an object of schemas".into(),
                    })?;
                    let mut props = Document::new();
                    for (name, sub) in map {
                        let at = pointer(&here, name);
                        check_name(name, &at)?;
                        let (t, w) = self.schema(sub, &at, Place::Inner, depth + 1)?;
                        weakened |= w;
                        props.insert(name.clone(), t.0);
                    }
                    out.insert("properties", props);
                }
                "patternProperties" => {
                    let map = v.as_object().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"patternProperties\" is an object of schemas".into(),
                    })?;
                    let mut props = Document::new();
                    let mut portable = true;
                    for (pattern, sub) in map {
                        let at = pointer(&here, pattern);
                        match portable_regex(pattern) {
                            Some((p, true)) => {
                                let (t, w) = self.schema(sub, &at, Place::Inner, depth + 1)?;
                                weakened |= w;
                                props.insert(p, t.0);
                            }
                            _ => portable = false,
                        }
                    }
                    if portable {
                        out.insert("patternProperties", props);
                    } else {
                        self.relax(&here);
                        weakened = true;
                        drop_additional = true;
                    }
                }
                "additionalProperties" => match v {
                    Value::Bool(b) => {
                        out.insert("additionalProperties", *b);
                    }
                    _ => {
                        let (t, w) = self.schema(v, &here, Place::Inner, depth + 1)?;
                        weakened |= w;
                        out.insert("additionalProperties", t.0);
                    }
                },
                "required" => {
                    let list = v.as_array().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"required\" is an array of names".into(),
                    })?;
                    let mut names = Vec::with_capacity(list.len());
                    for (i, n) in list.iter().enumerate() {
                        let at = pointer(&here, &i.to_string());
                        let n = n.as_str().ok_or_else(|| SchemaTranslateError {
                            path: at.clone(),
                            message: "a required name is a string".into(),
                        })?;
                        check_name(n, &at)?;
                        names.push(Bson::from(n));
                    }
                    if !names.is_empty() {
                        out.insert("required", names);
                    }
                }
                "enum" | "const" => {
                    if place != Place::Inner {
                        // A whole stored document never equals a body value.
                        self.relax(&here);
                        weakened = true;
                        continue;
                    }
                    let values: Vec<&Value> = match (key.as_str(), v) {
                        ("enum", Value::Array(list)) => list.iter().collect(),
                        ("enum", _) => return err(&here, "\"enum\" is an array"),
                        _ => vec![v],
                    };
                    // A value the store cannot hold (an integer beyond i64)
                    // can never be met; leaving it out changes nothing.
                    let kept: Vec<Bson> = values
                        .into_iter()
                        .filter_map(|x| json_to_bson(x).ok())
                        .collect();
                    if kept.is_empty() {
                        extra.push(doc! {"not": {}});
                    } else {
                        out.insert("enum", kept);
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                    if !v.is_number() {
                        return err(&here, format!("\"{key}\" is a number"));
                    }
                    // Merged below, once both bounds of a side are known.
                }
                "multipleOf" => {
                    let n = v.as_number().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"multipleOf\" is a number".into(),
                    })?;
                    let integral =
                        n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0);
                    if integral {
                        out.insert("multipleOf", bound(n, true));
                    } else {
                        self.relax(&here);
                        weakened = true;
                    }
                }
                "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
                | "maxProperties" => {
                    let n = v.as_u64().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: format!("\"{key}\" is a non-negative integer"),
                    })?;
                    // The stored document holds the system fields too.
                    let n = if place != Place::Inner && key.ends_with("Properties") {
                        n.saturating_add(SYSTEM_FIELDS.len() as u64)
                    } else {
                        n
                    };
                    // The smallest integer kind, as for values (rule 1).
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    out.insert(
                        key.clone(),
                        i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32),
                    );
                }
                "uniqueItems" => {
                    let b = v.as_bool().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"uniqueItems\" is a boolean".into(),
                    })?;
                    out.insert("uniqueItems", b);
                }
                "pattern" => {
                    let p = v.as_str().ok_or_else(|| SchemaTranslateError {
                        path: here.clone(),
                        message: "\"pattern\" is a string".into(),
                    })?;
                    match portable_regex(p) {
                        Some((pcre, exact)) => {
                            out.insert("pattern", pcre);
                            if !exact {
                                self.relax(&here);
                                weakened = true;
                            }
                        }
                        None => {
                            self.relax(&here);
                            weakened = true;
                        }
                    }
                }
                "format" => {
                    self.relax(&here);
                    weakened = true;
                }
                "items" => {
                    let (t, w) = self.schema(v, &here, Place::Inner, depth + 1)?;
                    weakened |= w;
                    out.insert("items", t.0);
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
                        SchemaTranslateError {
                            path: here.clone(),
                            message: format!("\"{key}\" is a non-empty array of schemas"),
                        }
                    })?;
                    let branch = if place == Place::Inner {
                        Place::Inner
                    } else {
                        Place::RootBranch
                    };
                    let mut subs = Vec::with_capacity(list.len());
                    let mut any_weak = false;
                    for (i, sub) in list.iter().enumerate() {
                        let (mut t, w) =
                            self.schema(sub, &pointer(&here, &i.to_string()), branch, depth + 1)?;
                        if branch == Place::RootBranch {
                            t.exempt_system_fields();
                        }
                        any_weak |= w;
                        subs.push(Bson::Document(t.0));
                    }
                    weakened |= any_weak;
                    let name = if key == "oneOf" && any_weak {
                        // Weaker branches could overlap: keep "at least one".
                        self.relax(&here);
                        "anyOf"
                    } else {
                        key.as_str()
                    };
                    if out.contains_key(name) {
                        extra.push(doc! {name: subs});
                    } else {
                        out.insert(name, subs);
                    }
                }
                "not" => {
                    let branch = if place == Place::Inner {
                        Place::Inner
                    } else {
                        Place::RootBranch
                    };
                    let (mut t, w) = self.schema(v, &here, branch, depth + 1)?;
                    if w {
                        // The negation of a weaker schema is stronger.
                        self.relax(&here);
                        weakened = true;
                    } else {
                        if branch == Place::RootBranch {
                            t.exempt_system_fields();
                        }
                        out.insert("not", t.0);
                    }
                }
                "title" | "description" => {
                    if let Some(text) = v.as_str() {
                        out.insert(key.clone(), text);
                    }
                }
                k if api_only_keywords().contains(&k) => {}
                other => return err(&here, format!("unsupported schema keyword \"{other}\"")),
            }
        }
        self.bounds(obj, &mut out, path)?;
        if drop_additional && out.remove("additionalProperties").is_some() {
            self.relax(&pointer(path, "additionalProperties"));
        }
        if !extra.is_empty() {
            let mut all: Vec<Bson> = match out.remove("allOf") {
                Some(Bson::Array(a)) => a,
                _ => Vec::new(),
            };
            all.extend(extra.into_iter().map(Bson::Document));
            out.insert("allOf", all);
        }
        Ok((Sub(out), weakened))
    }

    /// The `bsonType` list for `type`, and whether integral doubles must
    /// also pass (an `integer` without `number`).
    fn types(&self, v: &Value, path: &str) -> Result<(Bson, bool), SchemaTranslateError> {
        let names: Vec<&str> = match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) if !list.is_empty() => list
                .iter()
                .map(|x| {
                    x.as_str().ok_or_else(|| SchemaTranslateError {
                        path: path.to_owned(),
                        message: "\"type\" lists type names".into(),
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => return err(path, "\"type\" is a type name or a non-empty array of them"),
        };
        let mut out: Vec<&str> = Vec::new();
        let mut push = |n: &'static str| {
            if !out.contains(&n) {
                out.push(n);
            }
        };
        for n in &names {
            match *n {
                "string" => push("string"),
                "object" => push("object"),
                "array" => push("array"),
                "null" => push("null"),
                "boolean" => push("bool"),
                "integer" => {
                    push("int");
                    push("long");
                }
                "number" => {
                    push("int");
                    push("long");
                    push("double");
                }
                other => return err(path, format!("unknown type \"{other}\"")),
            }
        }
        let integer_doubles = names.contains(&"integer") && !names.contains(&"number");
        let bson = if out.len() == 1 {
            Bson::from(out[0])
        } else {
            Bson::Array(out.into_iter().map(Bson::from).collect())
        };
        Ok((bson, integer_doubles))
    }

    /// Draft 2020-12 bounds -> draft 4: one bound per side, the stricter.
    fn bounds(
        &self,
        obj: &Map<String, Value>,
        out: &mut Document,
        path: &str,
    ) -> Result<(), SchemaTranslateError> {
        for (inclusive, exclusive, lower) in [
            ("minimum", "exclusiveMinimum", true),
            ("maximum", "exclusiveMaximum", false),
        ] {
            let num = |k: &str| obj.get(k).and_then(Value::as_number);
            let chosen = match (num(inclusive), num(exclusive)) {
                (None, None) => continue,
                (Some(i), None) => (i, false),
                (None, Some(e)) => (e, true),
                (Some(i), Some(e)) => {
                    // The exclusive bound is stricter unless the inclusive
                    // one lies strictly beyond it.
                    let beyond = if lower {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    };
                    if compare_numbers(i, e) == beyond {
                        (i, false)
                    } else {
                        (e, true)
                    }
                }
            };
            let (n, is_exclusive) = chosen;
            if n.as_f64().is_none_or(|f| !f.is_finite()) {
                return err(&pointer(path, inclusive), "a bound is a finite number");
            }
            out.insert(inclusive, bound(n, lower));
            if is_exclusive {
                out.insert(exclusive, true);
            }
        }
        Ok(())
    }
}

/// Property names the stored layout cannot hold (the API refuses them in
/// documents, so a schema naming one is a mistake worth reporting).
fn check_name(name: &str, path: &str) -> Result<(), SchemaTranslateError> {
    if name.starts_with('$') || name.contains(['.', '\0']) {
        return err(
            path,
            format!(
                "property name \"{name}\" cannot be stored (starts with '$', or holds '.' or NUL)"
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn js(schema: Value) -> Document {
        validator(&schema)
            .expect("translates")
            .validator
            .get_document("$jsonSchema")
            .expect("$jsonSchema")
            .clone()
    }

    fn system_props() -> Document {
        doc! {
            "_id": {
                "bsonType": "object",
                "required": ["t", "i"],
                "properties": {"t": {"bsonType": "string"}, "i": {"bsonType": "string"}},
                "additionalProperties": false,
            },
            "_tenant": {"bsonType": "string"},
            "_rev": {"bsonType": ["int", "long"]},
            "_created_at": {"bsonType": "string"},
            "_updated_at": {"bsonType": "string"},
            "_owner": {"bsonType": "string"},
        }
    }

    #[test]
    fn types_map_to_bson_types_and_integer_admits_integral_doubles() {
        let s = js(json!({
            "type": "object",
            "properties": {
                "s": {"type": "string"},
                "b": {"type": "boolean"},
                "n": {"type": "number"},
                "i": {"type": "integer"},
                "m": {"type": ["string", "null", "integer", "number"]},
                "o": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "integer"}}}},
            },
        }));
        let p = s.get_document("properties").expect("properties");
        assert_eq!(
            p.get_document("s").expect("s"),
            &doc! {"bsonType": "string"}
        );
        assert_eq!(p.get_document("b").expect("b"), &doc! {"bsonType": "bool"});
        assert_eq!(
            p.get_document("n").expect("n"),
            &doc! {"bsonType": ["int", "long", "double"]}
        );
        let integer = doc! {"allOf": [{"anyOf": [
            {"bsonType": ["int", "long"]},
            {"bsonType": "double", "multipleOf": 1},
        ]}]};
        assert_eq!(p.get_document("i").expect("i"), &integer);
        assert_eq!(
            p.get_document("m").expect("m"),
            &doc! {"bsonType": ["string", "null", "int", "long", "double"]}
        );
        assert_eq!(
            p.get_document("o").expect("o"),
            &doc! {"bsonType": "object", "properties": {"x": {"bsonType": "array", "items": integer}}}
        );
        assert_eq!(s.get_str("bsonType").ok(), Some("object"));
    }

    /// The reason for the integral-double branch: the API itself accepts
    /// `2.0` as an integer, and the store keeps it a Double.
    #[test]
    fn the_api_takes_integral_doubles_as_integers() {
        let api = arca_core::DocumentSchema::compile(
            &json!({"type": "object", "properties": {"i": {"type": "integer"}}}),
        )
        .expect("schema");
        assert!(api.validate(&json!({"i": 2.0})).is_empty());
        assert!(!api.validate(&json!({"i": 2.5})).is_empty());
        assert_eq!(json_to_bson(&json!(2.0)), Ok(Bson::Double(2.0)));
    }

    #[test]
    fn system_fields_are_declared_and_required_at_the_root() {
        let s = js(json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "_id": {"type": "integer"}},
            "required": ["name"],
            "additionalProperties": false,
            "maxProperties": 3,
        }));
        let mut props = system_props();
        props.insert("name", doc! {"bsonType": "string"});
        assert_eq!(
            s,
            doc! {
                "bsonType": "object",
                "properties": props,
                "required": ["_id", "_tenant", "_rev", "_created_at", "_updated_at", "_owner", "name"],
                "additionalProperties": false,
                "maxProperties": 9,
            }
        );
    }

    #[test]
    fn keywords_map_to_draft_4() {
        let s = js(json!({
            "type": "object",
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": "c", "title": "T", "description": "D",
            "properties": {
                "a": {"minimum": 1, "exclusiveMinimum": 1, "maximum": 9.5, "default": 3, "examples": [1]},
                "b": {"exclusiveMaximum": 5, "maximum": 4, "readOnly": true, "deprecated": true},
                "c": {"const": "x", "writeOnly": true},
                "d": {"enum": [1, "a", null, {"k": [1]}, 18446744073709551615_u64]},
                "e": {"minLength": 1, "maxLength": 3, "pattern": "^[a-z]{2,3}(x|y)?\\.$"},
                "f": {"type": "array", "minItems": 1, "maxItems": 2, "uniqueItems": true, "items": false},
                "g": {"multipleOf": 5, "maximum": 18446744073709551615_u64},
                "h": {"type": "object", "minProperties": 1, "maxProperties": 2, "additionalProperties": {"type": "string"}},
                "k": {"not": {"type": "null"}, "anyOf": [{"type": "string"}, true], "oneOf": [{"minimum": 0}, {"maximum": -1}]},
            },
        }));
        let p = s.get_document("properties").expect("props");
        let get = |k: &str| p.get_document(k).expect(k).clone();
        assert_eq!(
            get("a"),
            doc! {"minimum": 1, "exclusiveMinimum": true, "maximum": 9.5}
        );
        assert_eq!(get("b"), doc! {"maximum": 4});
        assert_eq!(get("c"), doc! {"enum": ["x"]});
        assert_eq!(get("d"), doc! {"enum": [1, "a", Bson::Null, {"k": [1]}]});
        assert_eq!(
            get("e"),
            doc! {"minLength": 1, "maxLength": 3, "pattern": "^[a-z]{2,3}(x|y)?\\.$"}
        );
        assert_eq!(
            get("f"),
            doc! {"bsonType": "array", "minItems": 1, "maxItems": 2, "uniqueItems": true, "items": {"not": {}}}
        );
        assert_eq!(
            get("g"),
            doc! {"multipleOf": 5, "maximum": 18446744073709551616.0}
        );
        assert_eq!(
            get("h"),
            doc! {"bsonType": "object", "minProperties": 1, "maxProperties": 2, "additionalProperties": {"bsonType": "string"}}
        );
        assert_eq!(
            get("k"),
            doc! {"not": {"bsonType": "null"}, "anyOf": [{"bsonType": "string"}, {}], "oneOf": [{"minimum": 0}, {"maximum": -1}]}
        );
        assert_eq!(s.get_str("title").ok(), Some("T"));
        assert!(!s.contains_key("$schema") && !s.contains_key("$comment"));
        // Only the final `$` was weaker than the API.
        assert_eq!(
            validator(&json!({"type": "object", "properties": {"e": {"pattern": "^a$"}}}))
                .expect("t")
                .relaxed,
            vec!["/properties/e/pattern"]
        );
    }

    #[test]
    fn untranslatable_keywords_weaken_never_strengthen() {
        let t = validator(&json!({
            "type": "object",
            "properties": {
                "email": {"type": "string", "format": "email"},
                "code": {"type": "string", "pattern": "^\\d+$"},
                "step": {"multipleOf": 0.1},
                "notmail": {"not": {"format": "email"}},
                "one": {"oneOf": [{"type": "string", "pattern": "^\\w"}, {"type": "integer"}]},
                "tags": {"type": "object", "patternProperties": {"^x-.": {"type": "string"}}, "additionalProperties": false},
                "ok": {"type": "object", "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": false},
            },
        }))
        .expect("translates");
        let p = t
            .validator
            .get_document("$jsonSchema")
            .and_then(|s| s.get_document("properties"))
            .expect("props");
        let get = |k: &str| p.get_document(k).expect(k).clone();
        assert_eq!(get("email"), doc! {"bsonType": "string"});
        assert_eq!(get("code"), doc! {"bsonType": "string"});
        assert_eq!(get("step"), doc! {});
        assert_eq!(get("notmail"), doc! {});
        assert_eq!(
            get("one"),
            doc! {"anyOf": [
                {"bsonType": "string"},
                {"allOf": [{"anyOf": [{"bsonType": ["int", "long"]}, {"bsonType": "double", "multipleOf": 1}]}]},
            ]}
        );
        assert_eq!(get("tags"), doc! {"bsonType": "object"});
        assert_eq!(
            get("ok"),
            doc! {"bsonType": "object", "patternProperties": {"^x-": {"bsonType": "string"}}, "additionalProperties": false}
        );
        assert_eq!(
            t.relaxed,
            vec![
                "/properties/email/format",
                "/properties/code/pattern",
                "/properties/step/multipleOf",
                "/properties/notmail/not/format",
                "/properties/notmail/not",
                "/properties/one/oneOf/0/pattern",
                "/properties/one/oneOf",
                "/properties/tags/patternProperties",
                "/properties/tags/additionalProperties",
            ]
        );
    }

    #[test]
    fn branches_over_the_root_exempt_system_fields() {
        let s = js(json!({
            "type": "object",
            "anyOf": [{"properties": {"a": {"type": "string"}}, "additionalProperties": false, "maxProperties": 1}, {"required": ["b"]}],
            "enum": [{}],
        }));
        let mut exempt = Document::new();
        for f in SYSTEM_FIELDS {
            exempt.insert(*f, Document::new());
        }
        exempt.insert("a", doc! {"bsonType": "string"});
        assert_eq!(
            s.get_array("anyOf").expect("anyOf"),
            &vec![
                Bson::Document(
                    doc! {"properties": exempt, "additionalProperties": false, "maxProperties": 7}
                ),
                Bson::Document(doc! {"required": ["b"]}),
            ]
        );
        assert!(!s.contains_key("enum"));
    }

    #[test]
    fn unexpected_input_is_an_error_not_a_panic() {
        for (schema, needle) in [
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}),
                "$ref",
            ),
            (json!({"type": "object", "properties": {"a.b": {}}}), "a.b"),
            (json!({"type": "object", "required": ["$x"]}), "$x"),
            (
                json!({"type": "object", "properties": {"a": {"type": "decimal"}}}),
                "decimal",
            ),
            (
                json!({"type": "object", "properties": {"a": {"minimum": "1"}}}),
                "minimum",
            ),
            (
                json!({"type": "object", "properties": {"a": 3}}),
                "subschema",
            ),
            (
                json!({"type": "object", "properties": {"a": {"minLength": -1}}}),
                "minLength",
            ),
        ] {
            let e = validator(&schema).expect_err("refused");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle}"
            );
        }
        let mut deep = json!({});
        for _ in 0..MAX_DEPTH + 2 {
            deep = json!({"items": deep});
        }
        assert!(validator(&deep).is_err());
    }

    #[test]
    fn portable_regexes() {
        for (rust, pcre, exact) in [
            ("abc", "abc", true),
            ("^a-b_c d", "^a-b_c d", true),
            ("^[A-Za-z0-9_-]{1,128}$", "^[A-Za-z0-9_-]{1,128}$", false),
            ("(?:ab|c)+?x*", "(?:ab|c)+?x*", true),
            ("\\.\\$", "\\.\\$", true),
            ("é", "é", true),
        ] {
            assert_eq!(
                portable_regex(rust),
                Some((pcre.to_owned(), exact)),
                "{rust}"
            );
        }
        for bad in [
            "a.c",
            "\\d",
            "\\w+",
            "(?i)a",
            "a$b",
            "[\\d]",
            "*a",
            "a{,3}",
            "(a",
            "a)",
            "\\p{L}",
            "[[:alpha:]]",
            "a\\b",
        ] {
            assert_eq!(portable_regex(bad), None, "{bad}");
        }
    }
}
