//! Documents: the body a client owns plus the system fields the server owns,
//! how a client body is checked before a write, and JSON Merge Patch.

use serde_json::{Map, Value};

use crate::name::DocId;
use crate::schema::FieldError;

/// System fields that a client may send back and that are then ignored.
const IGNORED_SYSTEM_FIELDS: &[&str] = &["_rev", "_owner", "_created_at", "_updated_at"];

/// Server-owned fields of a stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemFields {
    /// The document id.
    pub id: DocId,
    /// 1 on create, +1 per write.
    pub rev: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// The creator's `sub`.
    pub owner: String,
}

impl SystemFields {
    /// The system fields of a new document: revision 1, created and
    /// updated `at`. Every writer (the server, `arca import`, `arca copy`)
    /// stamps documents with this, so every engine stores the same values.
    pub fn first(id: DocId, owner: String, at: String) -> Self {
        Self {
            id,
            rev: 1,
            created_at: at.clone(),
            updated_at: at,
            owner,
        }
    }

    /// The system fields of the next revision, written `at`: the same id,
    /// owner and creation time, the revision one higher.
    pub fn next(&self, at: String) -> Self {
        Self {
            rev: self.rev + 1,
            updated_at: at,
            ..self.clone()
        }
    }
}

/// A stored document: system fields and the client's body.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Server-owned fields.
    pub system: SystemFields,
    /// The client's fields (never contains keys starting with `_`).
    pub body: Map<String, Value>,
}

impl Document {
    /// The document as clients see it: system fields first, then the body.
    pub fn to_json(&self) -> Value {
        let mut out = Map::with_capacity(self.body.len() + 5);
        out.insert(
            "_id".into(),
            Value::String(self.system.id.as_str().to_owned()),
        );
        out.insert("_rev".into(), Value::from(self.system.rev));
        out.insert(
            "_created_at".into(),
            Value::String(self.system.created_at.clone()),
        );
        out.insert(
            "_updated_at".into(),
            Value::String(self.system.updated_at.clone()),
        );
        out.insert("_owner".into(), Value::String(self.system.owner.clone()));
        for (k, v) in &self.body {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }

    /// `to_json`, moving the document's values instead of copying them.
    pub fn into_json(self) -> Value {
        let Self { system, body } = self;
        let mut out = Map::with_capacity(body.len() + 5);
        out.insert("_id".into(), Value::String(system.id.as_str().to_owned()));
        out.insert("_rev".into(), Value::from(system.rev));
        out.insert("_created_at".into(), Value::String(system.created_at));
        out.insert("_updated_at".into(), Value::String(system.updated_at));
        out.insert("_owner".into(), Value::String(system.owner));
        out.extend(body);
        Value::Object(out)
    }

    /// The strong ETag of this revision: `"<rev>"`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.system.rev)
    }
}

/// Serializes like `to_json`, without building the intermediate tree
/// (responses write documents straight out of this).
impl serde::Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.body.len() + 5))?;
        m.serialize_entry("_id", self.system.id.as_str())?;
        m.serialize_entry("_rev", &self.system.rev)?;
        m.serialize_entry("_created_at", &self.system.created_at)?;
        m.serialize_entry("_updated_at", &self.system.updated_at)?;
        m.serialize_entry("_owner", &self.system.owner)?;
        for (k, v) in &self.body {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A document whose body is kept as the JSON text the store holds, for
/// reads that only pass it on: no parse into a tree, no serialization
/// back (on a GET by id that pair was most of the request's own work).
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentText {
    /// Server-owned fields.
    pub system: SystemFields,
    /// The client's fields as one minified JSON object (`{}` when none),
    /// exactly as `serde_json` wrote it when the document was stored.
    body: String,
}

impl DocumentText {
    /// A parsed document's text (for engines that keep no stored text).
    pub fn of(doc: &Document) -> Self {
        Self {
            system: doc.system.clone(),
            body: body_text(&doc.body),
        }
    }

    /// `body` must be a JSON object's text; anything else is `None`.
    pub fn new(system: SystemFields, body: String) -> Option<Self> {
        let object = body.starts_with('{') && body.ends_with('}');
        object.then_some(Self { system, body })
    }

    /// The same bytes as `serde_json::to_vec` of the parsed `Document`:
    /// system fields first, then the body's members in stored order.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_len_hint());
        self.write_json(&mut out);
        out
    }

    /// About how many bytes `write_json` appends (see `json_len`).
    pub fn json_len_hint(&self) -> usize {
        json_len(&self.system, self.body.len())
    }

    /// Appends `to_json_bytes` to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let s = &self.system;
        // Writing strings into a Vec cannot fail.
        let string = |out: &mut Vec<u8>, key: &str, v: &str| {
            out.extend_from_slice(key.as_bytes());
            let _ = serde_json::to_writer(&mut *out, v);
        };
        string(out, "{\"_id\":", s.id.as_str());
        out.extend_from_slice(b",\"_rev\":");
        let _ = serde_json::to_writer(&mut *out, &s.rev);
        string(out, ",\"_created_at\":", &s.created_at);
        string(out, ",\"_updated_at\":", &s.updated_at);
        string(out, ",\"_owner\":", &s.owner);
        let members = &self.body[1..];
        if members.trim_start() != "}" {
            out.push(b',');
        }
        out.extend_from_slice(members.as_bytes());
    }

    /// The strong ETag of this revision: `"<rev>"`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.system.rev)
    }
}

/// About how many bytes a document takes as JSON, from its system fields
/// and its body's length (a little more than exact: the timestamps and
/// punctuation are counted at their usual size). Every engine and the
/// server measure pages with this one rule, so a page's byte budget means
/// the same to all of them.
pub fn json_len(system: &SystemFields, body_len: usize) -> usize {
    body_len + system.id.as_str().len() + system.owner.len() + 120
}

/// A body's JSON text, as stores keep it.
pub fn body_text(body: &Map<String, Value>) -> String {
    // A map with string keys always serializes, and always to an object.
    serde_json::to_string(body).unwrap_or_else(|_| "{}".into())
}

/// The length in bytes of `body_text(body)`, counted without building it.
pub fn body_len(body: &Map<String, Value>) -> usize {
    /// A writer that keeps only the count (std's `io::sink` keeps nothing).
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // As in `body_text`: a map with string keys always serializes.
    let _ = serde_json::to_writer(&mut n, body);
    n.0
}

/// Parses only the top-level members named in `keys` out of a body's JSON
/// object text; the other members are scanned over, never built. For
/// evaluating a filter or a sort that reads a few fields of documents
/// that are then sent as their stored text. (serde_json has no
/// "pick these keys" mode, hence this small visitor.)
pub fn parse_body_fields<K: AsRef<str>>(
    text: &str,
    keys: &[K],
) -> serde_json::Result<Map<String, Value>> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Pick<'k, K>(&'k [K]);

    /// A member name, borrowed from the text unless it has escapes
    /// (serde's own `Cow<str>` always allocates).
    struct Key;

    impl<'de> Visitor<'de> for Key {
        type Value = std::borrow::Cow<'de, str>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a member name")
        }

        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Borrowed(v))
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Owned(v.to_owned()))
        }
    }

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = std::borrow::Cow<'de, str>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de, K: AsRef<str>> Visitor<'de> for Pick<'_, K> {
        type Value = Map<String, Value>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::with_capacity(self.0.len());
            while let Some(key) = map.next_key_seed(Key)? {
                if self.0.iter().any(|k| k.as_ref() == key.as_ref()) {
                    let value: Value = map.next_value()?;
                    out.insert(key.into_owned(), value);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }

    impl<'de, K: AsRef<str>> DeserializeSeed<'de> for Pick<'_, K> {
        type Value = Map<String, Value>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let out = Pick(keys).deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// The deepest nesting of objects and arrays a document may have (the
/// document itself is level 1): MongoDB's limit, held on both engines.
pub const MAX_NESTING: usize = 100;

/// At most this many portability failures are reported for one document.
const MAX_PORTABLE_ERRORS: usize = 100;

/// A JSON pointer segment (`~` and `/` escaped).
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What keeps `body` from being stored the same way by every engine
/// (MongoDB's limits, which the contract makes the API's): a field name,
/// at any depth, containing `.` or NUL or starting with `$`; objects and
/// arrays nested deeper than `MAX_NESTING`; an integer outside the signed
/// 64-bit range. Each failure names its JSON pointer; at most 100 are
/// reported.
pub fn portable_errors(body: &Map<String, Value>) -> Vec<FieldError> {
    fn walk(v: &Value, path: &mut String, depth: usize, out: &mut Vec<FieldError>) {
        if out.len() >= MAX_PORTABLE_ERRORS {
            return;
        }
        match v {
            Value::Object(m) => {
                if depth > MAX_NESTING {
                    out.push(FieldError {
                        path: path.clone(),
                        message: format!(
                            "objects and arrays may nest at most {MAX_NESTING} levels deep"
                        ),
                    });
                    return;
                }
                for (k, child) in m {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&pointer_segment(k));
                    if k.contains('.') || k.contains('\0') || k.starts_with('$') {
                        out.push(FieldError {
                            path: path.clone(),
                            message: "a field name may not contain '.' or NUL nor start with '$'"
                                .into(),
                        });
                    }
                    walk(child, path, depth + 1, out);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                if depth > MAX_NESTING {
                    out.push(FieldError {
                        path: path.clone(),
                        message: format!(
                            "objects and arrays may nest at most {MAX_NESTING} levels deep"
                        ),
                    });
                    return;
                }
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    walk(child, path, depth + 1, out);
                    path.truncate(len);
                }
            }
            Value::Number(n) if n.is_u64() && !n.is_i64() => out.push(FieldError {
                path: path.clone(),
                message: format!("{n} is outside the signed 64-bit integer range"),
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut path = String::new();
    for (k, v) in body {
        path.clear();
        path.push('/');
        path.push_str(&pointer_segment(k));
        if k.contains('.') || k.contains('\0') || k.starts_with('$') {
            out.push(FieldError {
                path: path.clone(),
                message: "a field name may not contain '.' or NUL nor start with '$'".into(),
            });
        }
        walk(v, &mut path, 2, &mut out);
    }
    out.truncate(MAX_PORTABLE_ERRORS);
    out
}

/// Why a client body cannot become a document (`422`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    /// The body is not a JSON object.
    #[error("a document is a JSON object")]
    NotAnObject,
    /// Field-level failures: bad `_id`, reserved fields, schema violations.
    #[error("the document does not fit the collection")]
    Invalid(Vec<FieldError>),
}

/// A checked client body: the user fields, the `_id` the client chose, and
/// the failures found on reserved fields (so that a caller can report them
/// together with the schema's).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientBody {
    /// `_id` from the body, when present and valid.
    pub id: Option<DocId>,
    /// The user fields (no key starts with `_`).
    pub fields: Map<String, Value>,
    /// Bad `_id`, or reserved `_` fields; empty when none.
    pub errors: Vec<FieldError>,
}

/// Splits a client body into its `_id` and user fields: ignored system
/// fields are dropped, `_id` is checked (and must equal `url_id` when one is
/// given), and any other `_` field is reported in `errors`.
pub fn split_client_body(body: Value, url_id: Option<&DocId>) -> Result<ClientBody, DocumentError> {
    let Value::Object(map) = body else {
        return Err(DocumentError::NotAnObject);
    };
    let mut errors = Vec::new();
    let mut id = None;
    let mut fields = Map::with_capacity(map.len());
    for (k, v) in map {
        if !k.starts_with('_') {
            fields.insert(k, v);
            continue;
        }
        if k == "_id" {
            match v.as_str().map(DocId::parse) {
                Some(Ok(parsed)) => match url_id {
                    Some(u) if *u != parsed => errors.push(FieldError {
                        path: "/_id".into(),
                        message: "_id in the body must equal the id in the URL".into(),
                    }),
                    _ => id = Some(parsed),
                },
                _ => errors.push(FieldError {
                    path: "/_id".into(),
                    message: "_id must be a string matching ^[A-Za-z0-9_-]{1,128}$".into(),
                }),
            }
        } else if !IGNORED_SYSTEM_FIELDS.contains(&k.as_str()) {
            errors.push(FieldError {
                path: format!("/{}", k.replace('~', "~0").replace('/', "~1")),
                message: "fields starting with '_' are reserved".into(),
            });
        }
    }
    Ok(ClientBody { id, fields, errors })
}

/// Applies a JSON Merge Patch (RFC 7396) to `target`.
pub fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(&k);
            }
            Value::Object(inner) => {
                let slot = target.entry(k).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, inner);
                }
            }
            other => {
                target.insert(k, other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("object expected"),
        }
    }

    fn system(owner: &str) -> SystemFields {
        SystemFields {
            id: DocId::parse("d-1_x").expect("id"),
            rev: 42,
            created_at: "2026-11-29T10:00:00.000Z".into(),
            updated_at: "2026-11-29T10:00:01.000Z".into(),
            owner: owner.into(),
        }
    }

    #[test]
    fn picking_fields_parses_only_those_and_keeps_them_whole() {
        let text = r#"{"a":1,"skip":{"deep":[1,{"x":"\u00e9"}]},"b":[1.5,"\"q\""],"c":null}"#;
        let full: Map<String, Value> = serde_json::from_str(text).expect("json");
        let picked = parse_body_fields(text, &["b", "a", "missing"]).expect("parse");
        assert_eq!(picked.len(), 2);
        assert_eq!(picked.get("a"), full.get("a"));
        assert_eq!(picked.get("b"), full.get("b"));
        assert!(
            parse_body_fields::<&str>(text, &[])
                .expect("parse")
                .is_empty()
        );
        assert!(parse_body_fields("[1]", &["a"]).is_err());
        assert!(parse_body_fields(r#"{"a":1} x"#, &["a"]).is_err());
        // A member name written with escapes is the same name.
        let escaped = parse_body_fields(r#"{"\u0061":7,"\"q":8}"#, &["a", "\"q"]).expect("parse");
        assert_eq!(escaped.get("a"), Some(&Value::from(7)));
        assert_eq!(escaped.get("\"q"), Some(&Value::from(8)));
    }

    #[test]
    fn stored_text_is_sent_exactly_as_the_parsed_document_would_be() {
        for (owner, body) in [
            ("ana", json!({})),
            (
                "ana",
                json!({"a": 1, "b": [1.5, "x", null], "c": {"d": true}}),
            ),
            (
                "quote\" back\\ \u{1} é 😀",
                json!({"z": "\n\t\u{7f}", "a": -0.0, "n": 1e300}),
            ),
            (
                "",
                json!({"key with space": {"": []}, "big": 9223372036854775807i64}),
            ),
        ] {
            let doc = Document {
                system: system(owner),
                body: obj(body),
            };
            let stored = serde_json::to_string(&doc.body).expect("text");
            let text = DocumentText::new(doc.system.clone(), stored).expect("object");
            assert_eq!(
                String::from_utf8(text.to_json_bytes()).expect("utf8"),
                serde_json::to_string(&doc).expect("json")
            );
            assert_eq!(text.etag(), doc.etag());
        }
        assert!(DocumentText::new(system("a"), "[1]".into()).is_none());
        assert!(DocumentText::new(system("a"), String::new()).is_none());
    }

    #[test]
    fn system_fields_sent_back_are_ignored() {
        let b = split_client_body(
            json!({"_rev": 9, "_owner": "x", "_created_at": 1, "_updated_at": 2, "a": 1}),
            None,
        )
        .expect("ok");
        assert_eq!(b.fields, obj(json!({"a": 1})));
        assert_eq!(b.id, None);
        assert!(b.errors.is_empty());
    }

    #[test]
    fn reserved_fields_and_bad_ids_are_refused() {
        let errs = split_client_body(json!({"_tenant": "t", "_id": null, "_x": 1}), None)
            .expect("object")
            .errors;
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["/_tenant", "/_id", "/_x"]);
        assert_eq!(
            split_client_body(json!([1]), None),
            Err(DocumentError::NotAnObject)
        );
    }

    #[test]
    fn body_id_must_match_url_id() {
        let url = DocId::parse("a").expect("id");
        assert!(
            split_client_body(json!({"_id": "a"}), Some(&url))
                .expect("object")
                .errors
                .is_empty()
        );
        assert_eq!(
            split_client_body(json!({"_id": "b"}), Some(&url))
                .expect("object")
                .errors[0]
                .path,
            "/_id"
        );
    }

    #[test]
    fn body_len_is_the_length_of_the_body_text() {
        for body in [
            json!({}),
            json!({"a": "é\u{1F600}\n\"", "n": [1, 2.5, -0.0, null], "o": {"x": true}}),
            json!({"big": "y".repeat(100_000)}),
        ] {
            let Value::Object(map) = body else {
                panic!("object")
            };
            assert_eq!(body_len(&map), body_text(&map).len());
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The RFC's own example (section 3).
        let mut target = obj(
            json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
                                    "tags": ["example", "sample"], "content": "This will be unchanged"}),
        );
        merge_patch(
            &mut target,
            obj(json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                                            "author": {"familyName": null}, "tags": ["example"]})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"title": "Hello!", "author": {"givenName": "John"},
            "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut t = obj(json!({"a": 1}));
        merge_patch(&mut t, obj(json!({"a": {"b": null, "c": 2}})));
        assert_eq!(Value::Object(t), json!({"a": {"c": 2}}));
    }

    #[test]
    fn portable_errors_name_bad_names_deep_nesting_and_big_integers() {
        let body = obj(json!({
            "a.b": 1, "$x": 2, "ok": {"in.ner": 3, "nul\u{0}": 4, "fine_$": 5, "deep": [{"$y": 1}]},
            "slash/ti~lde": {"k.": 1}, "big": 9223372036854775808u64, "max": 9223372036854775807i64,
        }));
        let paths: Vec<String> = portable_errors(&body).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "/a.b",
                "/$x",
                "/ok/in.ner",
                "/ok/nul\u{0}",
                "/ok/deep/0/$y",
                "/slash~1ti~0lde/k.",
                "/big"
            ]
        );
        // The document is level 1: 100 levels are allowed, 101 are not.
        let nested = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "n": v });
            }
            obj(v)
        };
        assert!(portable_errors(&nested(100)).is_empty(), "100 levels");
        let errors = portable_errors(&nested(101));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("100 levels"), "{errors:?}");
        // Arrays count as levels too: the document and 99 arrays pass.
        let arrays = |levels: usize| {
            let mut a = json!(1);
            for _ in 0..levels {
                a = json!([a]);
            }
            obj(json!({ "a": a }))
        };
        assert!(portable_errors(&arrays(99)).is_empty());
        assert_eq!(portable_errors(&arrays(100)).len(), 1);
    }
}
