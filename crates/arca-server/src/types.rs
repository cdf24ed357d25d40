//! `GET /v1/types.ts` and `arca types`: TypeScript declarations for every
//! collection, made from the same component schemas as `/openapi.json`
//! (`openapi::CollectionSchemas`), so a client typed by either agrees with
//! the other. For each collection `orders`: `OrdersInput` (a create's or
//! replace's body), `OrdersDocument` (as stored, with the read-only system
//! fields), `OrdersListed` (as a listing returns it, which a projection
//! may cut) and `OrdersPatch` (a merge patch: every field optional, `null`
//! deletes it); then `Collections`, a map from each name to its types, for
//! generic clients; and the shapes every collection shares (`Page<T>`,
//! `Problem`, ...). The text is made once per catalogue version, like the
//! OpenAPI document, and served with the same visibility (`docs.public`),
//! weak `ETag` and gzip.
//!
//! How JSON Schema maps to TypeScript (the portable subset collections
//! may use): `type` to `string`, `number` (integers too: JavaScript's
//! numbers keep integers exact up to 2^53 only), `boolean`, `null`,
//! `Array<T>` and object types; `enum`/`const` to literal types; `allOf`
//! to an intersection, `anyOf`/`oneOf` to a union; `required` to
//! non-optional properties; `readOnly` to `readonly`; an object closed by
//! `additionalProperties: false` has exactly its properties, others also
//! an index signature (`unknown` values, or the `additionalProperties`
//! schema's type when no property is named). Keywords that only narrow a
//! value (`minimum`, `pattern`, `format`, ...) have no TypeScript form; a
//! property's `description` and `format` become its doc comment. A schema
//! with `properties` but no `type` is read as an object, as
//! openapi-typescript reads it.
//!
//! Schema text reaches the output only as JSON string literals (property
//! names, literal types) or inside doc comments with `*/` broken up, so no
//! definition can inject code into a client's build.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::openapi::{CollectionSchemas, Rendered, visible};
use crate::state::AppState;

/// The route: `/v1/types.ts`.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/types.ts", get(types_ts))
}

/// The declarations as served, made once per catalogue version.
struct Declarations(Rendered);

/// TypeScript declarations for the collections of this server.
#[utoipa::path(get, operation_id = "types", path = "/v1/types.ts", tag = "operations",
    responses(
        (status = 200, description = "TypeScript declarations: `<Name>Input`, `<Name>Document`, `<Name>Listed` and `<Name>Patch` per collection, and `Collections` mapping each name to them", content_type = "application/typescript", body = String,
            headers(("ETag" = String, description = "Weak tag of this version of the declarations"))),
        (status = 304, description = "If-None-Match names the current declarations"),
        (status = 401, description = "docs.public is false and no valid token was sent", body = crate::wire::Problem, content_type = "application/problem+json"),
    ))]
pub async fn types_ts(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    visible(&state, &mut parts).await?;
    let text = state.derived(|| Declarations(Rendered::text(declarations(&state).into_bytes())));
    let mut res = text
        .0
        .respond(&parts.headers, "application/typescript; charset=utf-8");
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}

/// What every file starts with: how it was made, and the shapes every
/// collection shares.
const PREAMBLE: &str = r#"// TypeScript declarations for the collections of an Arca server
// (GET /v1/types.ts, or `arca types`), generated from their JSON Schemas:
// the same component schemas as /openapi.json. Fetch them again when a
// collection changes. Integers are `number`: JavaScript keeps them exact
// up to 2^53 only (the API stores signed 64-bit integers exactly).

/** One failure of a document against its collection's schema. */
export interface FieldError {
  /** JSON pointer to the offending value. */
  path: string;
  message: string;
}

/** Every error response (RFC 9457 application/problem+json). */
export interface Problem {
  /** Stable per kind of error, e.g. `urn:arca:problem:invalid-document`. */
  type: string;
  title: string;
  status: number;
  detail?: string;
  errors?: FieldError[];
  errors_truncated?: boolean;
}

/** A page of a listing: pass `next` as `after` for the following page (`null`: the last page). */
export interface Page<T> {
  items: T[];
  next: string | null;
}

/** `GET /v1/collections/{name}/count`. */
export interface Count {
  count: number;
}

/** The fields the server sets on every stored document (read-only). */
export interface SystemFields {
  readonly _id: string;
  readonly _rev: number;
  readonly _created_at: string;
  readonly _updated_at: string;
  readonly _owner: string | null;
}
"#;

/// The whole file for the current catalogue.
pub fn declarations(state: &AppState) -> String {
    let collections = state.gateway().collections();
    let mut out = String::from(PREAMBLE);
    let mut map = Vec::new();
    for c in &collections {
        let s = CollectionSchemas::of(c);
        let name = c.name.as_str();
        let t = &s.type_name;
        let _ = write!(
            out,
            "\n// ---- {name} ----\n\n\
             /** A `{name}` document as a create (POST) or a replace (PUT) sends it. */\n\
             export type {t}Input = {};\n\n\
             /** A stored `{name}` document, as the API returns it. */\n\
             export type {t}Document = {};\n\n\
             /** A `{name}` document in a listing (a `fields` projection may have left fields out). */\n\
             export type {t}Listed = {};\n\n\
             /** A JSON Merge Patch of a `{name}` document (PATCH): every field optional, `null` deletes it. */\n\
             export type {t}Patch = {};\n",
            ts(&s.input, 0),
            ts(&s.document, 0),
            ts(&s.listed, 0),
            ts(&s.patch, 0),
        );
        map.push(format!(
            "  {}: {{ input: {t}Input; document: {t}Document; listed: {t}Listed; patch: {t}Patch }};\n",
            property_name(name)
        ));
    }
    out.push_str(
        "\n/** Every collection by name, with its types (`Collections[\"orders\"][\"document\"]`). */\n\
         export interface Collections {\n",
    );
    for line in map {
        out.push_str(&line);
    }
    out.push_str(
        "}\n\n/** The name of a collection. */\nexport type CollectionName = keyof Collections;\n",
    );
    out
}

/// A JSON string as a TypeScript string literal (JSON's escapes are
/// TypeScript's; U+2028 and U+2029 are escaped too, for older parsers).
fn string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A property name: bare when it is an identifier, else a string literal.
fn property_name(name: &str) -> String {
    let mut chars = name.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ident { name.to_owned() } else { string(name) }
}

/// The literal type of a JSON value.
fn literal(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", property_name(k), literal(v)))
                .collect();
            format!("{{ {} }}", fields.join("; "))
        }
    }
}

/// `t` ready to be a member of a union or an intersection.
fn member(t: String) -> String {
    if t.contains(" | ") || t.contains(" & ") {
        format!("({t})")
    } else {
        t
    }
}

/// The union of `types` (`unknown` absorbs the rest; none: `never`).
fn union(types: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        if t == "unknown" {
            return t;
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    match out.len() {
        0 => "never".into(),
        1 => out.remove(0),
        _ => out.into_iter().map(member).collect::<Vec<_>>().join(" | "),
    }
}

/// The TypeScript type of a (sub)schema, nested objects indented by
/// `depth` levels.
fn ts(schema: &Value, depth: usize) -> String {
    let o = match schema {
        Value::Bool(true) => return "unknown".into(),
        Value::Bool(false) => return "never".into(),
        Value::Object(o) => o,
        _ => return "unknown".into(),
    };
    let base = if let Some(c) = o.get("const") {
        literal(c)
    } else if let Some(Value::Array(values)) = o.get("enum") {
        union(values.iter().map(literal))
    } else {
        let types: Vec<&str> = match o.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if [
                "properties",
                "additionalProperties",
                "patternProperties",
                "required",
            ]
            .iter()
            .any(|k| o.contains_key(*k)) =>
            {
                vec!["object"]
            }
            _ if o.contains_key("items") => vec!["array"],
            _ => Vec::new(),
        };
        if types.is_empty() {
            "unknown".into()
        } else {
            union(types.into_iter().map(|t| match t {
                "string" => "string".into(),
                "integer" | "number" => "number".into(),
                "boolean" => "boolean".into(),
                "null" => "null".into(),
                "array" => array(o, depth),
                "object" => object(o, depth),
                _ => "unknown".into(),
            }))
        }
    };
    let mut parts = Vec::new();
    if base != "unknown" {
        parts.push(base);
    }
    if let Some(Value::Array(all)) = o.get("allOf") {
        parts.extend(all.iter().map(|b| ts(b, depth)).filter(|t| t != "unknown"));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = o.get(key) {
            let u = union(branches.iter().map(|b| ts(b, depth)));
            if u != "unknown" {
                parts.push(u);
            }
        }
    }
    match parts.len() {
        0 => "unknown".into(),
        1 => parts.remove(0),
        _ => parts
            .into_iter()
            .map(member)
            .collect::<Vec<_>>()
            .join(" & "),
    }
}

fn array(o: &Map<String, Value>, depth: usize) -> String {
    match o.get("items") {
        Some(Value::Bool(false)) => "[]".into(),
        Some(items) => format!("Array<{}>", ts(items, depth)),
        None => "unknown[]".into(),
    }
}

/// A doc comment for a property (its description or title, and format),
/// if it has one; `*/` is broken up so the text cannot end the comment.
fn doc_comment(schema: &Value, indent: &str) -> String {
    let mut words = Vec::new();
    for key in ["title", "description"] {
        if let Some(Value::String(s)) = schema.get(key) {
            words.push(s.clone());
        }
    }
    if let Some(Value::String(f)) = schema.get("format") {
        words.push(format!("Format: {f}."));
    }
    if schema.get("deprecated") == Some(&Value::Bool(true)) {
        words.push("@deprecated".into());
    }
    if words.is_empty() {
        return String::new();
    }
    let text: String = words
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace("*/", "*\\/");
    format!("{indent}/** {text} */\n")
}

fn object(o: &Map<String, Value>, depth: usize) -> String {
    let props = o.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = o
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let closed = o.get("additionalProperties") == Some(&Value::Bool(false))
        && !o.contains_key("patternProperties");
    let named = props.is_some_and(|p| !p.is_empty())
        || required
            .iter()
            .any(|r| !props.is_some_and(|p| p.contains_key(*r)));
    if closed && !named {
        return "Record<string, never>".into();
    }
    let indent = "  ".repeat(depth + 1);
    let mut out = String::from("{\n");
    for (name, sub) in props.into_iter().flatten() {
        out.push_str(&doc_comment(sub, &indent));
        let readonly = if sub.get("readOnly") == Some(&Value::Bool(true)) {
            "readonly "
        } else {
            ""
        };
        let optional = if required.contains(&name.as_str()) {
            ""
        } else {
            "?"
        };
        let _ = writeln!(
            out,
            "{indent}{readonly}{}{optional}: {};",
            property_name(name),
            ts(sub, depth + 1)
        );
    }
    for r in required
        .iter()
        .filter(|r| !props.is_some_and(|p| p.contains_key(**r)))
    {
        let _ = writeln!(out, "{indent}{}: unknown;", property_name(r));
    }
    if !closed {
        let values = match o.get("additionalProperties") {
            Some(sub @ Value::Object(_)) if !named && !o.contains_key("patternProperties") => {
                ts(sub, depth + 1)
            }
            _ => "unknown".into(),
        };
        let _ = writeln!(out, "{indent}[key: string]: {values};");
    }
    let _ = write!(out, "{}}}", "  ".repeat(depth));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_become_typescript_types() {
        let s = json!({"type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {
                "name": {"type": "string", "description": "Who"},
                "age": {"type": "integer"},
                "nick": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "kind": {"enum": ["a", "b\"c", 1, null]},
                "v": {"const": true},
                "my-field": {"type": "object", "properties": {"x": {"type": "number", "readOnly": true}}},
                "either": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]},
                "open": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "none": {"type": "object", "additionalProperties": false}}});
        assert_eq!(
            ts(&s, 0),
            "{\n  /** Who */\n  name: string;\n  age?: number;\n  nick?: string | null;\n  tags?: Array<string>;\n  \
             kind?: \"a\" | \"b\\\"c\" | 1 | null;\n  v?: true;\n  \"my-field\"?: {\n    readonly x?: number;\n    \
             [key: string]: unknown;\n  };\n  either?: string | Array<number>;\n  open?: {\n    [key: string]: boolean;\n  };\n  \
             none?: Record<string, never>;\n}"
        );
    }

    #[test]
    fn combinators_intersect_and_unite() {
        let s = json!({"type": "object", "properties": {"a": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"properties": {"b": {"type": "number"}}, "required": ["b"]}]});
        let t = ts(&s, 0);
        assert!(
            t.starts_with("{\n  a?: string;\n  [key: string]: unknown;\n} & ({"),
            "{t}"
        );
        assert!(t.contains(" | {\n  b: number;"), "{t}");
        assert_eq!(
            ts(&json!({"allOf": [{"type": "string"}, true]}), 0),
            "string"
        );
        assert_eq!(ts(&json!({}), 0), "unknown");
        assert_eq!(ts(&json!(false), 0), "never");
    }

    #[test]
    fn schema_text_cannot_escape_comments_or_strings() {
        let s = json!({"type": "object", "properties": {
            "a\"; export const pwned = 1; //": {"type": "string",
                "description": "*/ export const pwned = 1; /*\nline"},
            "b": {"enum": ["\u{2028}", "x\\"]}}});
        let t = ts(&s, 0);
        assert!(!t.contains("*/ export"), "{t}");
        assert!(
            t.contains("/** *\\/ export const pwned = 1; /* line */"),
            "{t}"
        );
        assert!(
            t.contains("\"a\\\"; export const pwned = 1; //\"?: string;"),
            "{t}"
        );
        assert!(t.contains("\"\\u2028\" | \"x\\\\\""), "{t}");
    }
}
