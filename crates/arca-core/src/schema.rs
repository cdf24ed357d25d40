//! Collection schemas: checking a JSON Schema at definition time, compiling it
//! once, and validating documents against it with every error reported as a
//! JSON pointer.
//!
//! Only a portable subset of draft 2020-12 is accepted: the keywords that
//! mean the same thing to the `jsonschema` crate and to MongoDB's
//! `$jsonSchema` validator, so that both engines accept the same documents.
//! Anything else (`$ref`, `$dynamicRef`, unknown keywords or formats) is
//! refused with an error naming it, instead of being silently ignored.

use jsonschema::{PatternOptions, Validator, error::ValidationErrorKind};
use serde_json::Value;

/// Keywords a collection schema may use, at any depth.
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    // Annotations: no effect on validation, kept for the OpenAPI output.
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$comment",
    "$schema",
];

/// Formats that are asserted (validated), as the contract lists them.
const FORMATS: &[&str] = &["date-time", "date", "email", "uri", "uuid"];

/// Limits on a schema's size, so a definition cannot make validation costly.
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 10_000;

/// Most branches of one `anyOf`, `oneOf` or `allOf`. A failing value is
/// checked against every branch and each branch's failures are kept: a
/// 100-branch union under `items` made a 500 KB document of 50,000 bad
/// items cost 5 s and 2.5 GB before this bound (and the error limit).
pub const MAX_BRANCHES: usize = 32;

/// The failures of one validation, at most the limit asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validation {
    /// The failures found, in the validator's order.
    pub errors: Vec<FieldError>,
    /// More failures exist than `errors` lists.
    pub truncated: bool,
}

/// Why a schema was refused at definition time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct SchemaError {
    /// JSON pointer into the schema.
    pub path: String,
    /// What is wrong, naming the keyword.
    pub message: String,
}

/// One validation failure of a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// JSON pointer to the offending value (for `required`, the missing
    /// property; for `additionalProperties`, the extra one).
    pub path: String,
    /// Human-readable reason.
    pub message: String,
}

/// A compiled collection schema.
pub struct DocumentSchema {
    source: Value,
    validator: Validator,
}

impl std::fmt::Debug for DocumentSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentSchema")
            .field("source", &self.source)
            .finish()
    }
}

impl DocumentSchema {
    /// Checks `source` against the supported subset and compiles it.
    pub fn compile(source: &Value) -> Result<Self, SchemaError> {
        let root = source.as_object().ok_or_else(|| SchemaError {
            path: String::new(),
            message: "a schema is a JSON object".into(),
        })?;
        match root.get("type") {
            Some(Value::String(t)) if t == "object" => {}
            _ => {
                return Err(SchemaError {
                    path: "/type".into(),
                    message: "the root schema must declare \"type\": \"object\"".into(),
                });
            }
        }
        if let Some(s) = root.get("$schema")
            && s != "https://json-schema.org/draft/2020-12/schema"
        {
            return Err(SchemaError {
                path: "/$schema".into(),
                message:
                    "only draft 2020-12 (https://json-schema.org/draft/2020-12/schema) is supported"
                        .into(),
            });
        }
        let mut nodes = 0;
        check_subschema(source, "", 0, &mut nodes)?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_pattern_options(PatternOptions::regex())
            .build(source)
            .map_err(|e| SchemaError {
                path: e.instance_path().as_str().to_owned(),
                message: format!("invalid schema: {}", e.masked()),
            })?;
        Ok(Self {
            source: source.clone(),
            validator,
        })
    }

    /// The schema as it was given.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Every failure of `doc` against the schema (empty when valid).
    pub fn validate(&self, doc: &Value) -> Vec<FieldError> {
        self.validate_at_most(doc, usize::MAX).errors
    }

    /// The failures of `doc` against the schema, at most `max` of them:
    /// the validator's errors are produced lazily, so it stops there (time
    /// and memory per validation bounded by the limit, not the document).
    pub fn validate_at_most(&self, doc: &Value, max: usize) -> Validation {
        if self.validator.is_valid(doc) {
            return Validation::default();
        }
        let mut out = Vec::new();
        for e in self.validator.iter_errors(doc) {
            if out.len() >= max {
                return Validation {
                    errors: out,
                    truncated: true,
                };
            }
            let base = e.instance_path().as_str().to_owned();
            match e.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    out.push(FieldError {
                        path: format!("{base}/{}", escape_pointer(name)),
                        message: format!("\"{name}\" is required"),
                    });
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        out.push(FieldError {
                            path: format!("{base}/{}", escape_pointer(name)),
                            message: format!("\"{name}\" is not allowed by the schema"),
                        });
                    }
                }
                _ => out.push(FieldError {
                    path: base,
                    message: e.masked().to_string(),
                }),
            }
        }
        let truncated = out.len() > max;
        out.truncate(max);
        Validation {
            errors: out,
            truncated,
        }
    }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn err(path: &str, message: String) -> SchemaError {
    SchemaError {
        path: path.to_owned(),
        message,
    }
}

/// Walks one subschema: every keyword must be supported, every nested
/// schema is walked too, and `format` must be one the contract asserts.
fn check_subschema(
    schema: &Value,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<(), SchemaError> {
    *nodes += 1;
    if depth > MAX_DEPTH {
        return Err(err(path, format!("schema nesting deeper than {MAX_DEPTH}")));
    }
    if *nodes > MAX_NODES {
        return Err(err(
            path,
            format!("schema larger than {MAX_NODES} subschemas"),
        ));
    }
    let obj = match schema {
        Value::Object(o) => o,
        // `true` / `false` are valid subschemas (e.g. additionalProperties).
        Value::Bool(_) => return Ok(()),
        _ => return Err(err(path, "a subschema is an object or a boolean".into())),
    };
    for (key, value) in obj {
        let here = format!("{path}/{}", escape_pointer(key));
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(err(
                &here,
                format!(
                    "unsupported schema keyword \"{key}\" (supported: {})",
                    KEYWORDS.join(", ")
                ),
            ));
        }
        if key == "$schema" && depth > 0 {
            return Err(err(&here, "\"$schema\" is only allowed at the root".into()));
        }
        match key.as_str() {
            "properties" | "patternProperties" => {
                let map = value
                    .as_object()
                    .ok_or_else(|| err(&here, format!("\"{key}\" is an object of schemas")))?;
                for (name, sub) in map {
                    if key == "patternProperties" {
                        regex::Regex::new(name).map_err(|_| {
                            err(
                                &here,
                                format!("pattern \"{name}\" is not a supported regular expression"),
                            )
                        })?;
                    }
                    check_subschema(
                        sub,
                        &format!("{here}/{}", escape_pointer(name)),
                        depth + 1,
                        nodes,
                    )?;
                }
            }
            "additionalProperties" | "items" | "not" => {
                check_subschema(value, &here, depth + 1, nodes)?;
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
                    err(&here, format!("\"{key}\" is a non-empty array of schemas"))
                })?;
                if list.len() > MAX_BRANCHES {
                    return Err(err(
                        &here,
                        format!(
                            "\"{key}\" has {} branches; at most {MAX_BRANCHES} are allowed (every branch is checked for each failing value)",
                            list.len()
                        ),
                    ));
                }
                for (i, sub) in list.iter().enumerate() {
                    check_subschema(sub, &format!("{here}/{i}"), depth + 1, nodes)?;
                }
            }
            "format" => {
                let f = value.as_str().unwrap_or_default();
                if !FORMATS.contains(&f) {
                    return Err(err(
                        &here,
                        format!(
                            "unsupported format {value} (supported: {})",
                            FORMATS.join(", ")
                        ),
                    ));
                }
            }
            "pattern" => {
                let p = value
                    .as_str()
                    .ok_or_else(|| err(&here, "\"pattern\" is a string".into()))?;
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|_| {
                        err(
                            &here,
                            "\"pattern\" is not a supported regular expression (Rust regex syntax: no lookaround or backreferences)".into(),
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn people() -> DocumentSchema {
        DocumentSchema::compile(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0},
                "email": {"type": "string", "format": "email"},
                "born": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
                "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}
            },
            "required": ["name"],
            "additionalProperties": false
        }))
        .expect("valid schema")
    }

    #[test]
    fn valid_document_has_no_errors() {
        let doc = json!({"name": "Ana", "age": 3, "email": "ana@example.com", "tags": ["a", "b"]});
        assert_eq!(people().validate(&doc), vec![]);
    }

    #[test]
    fn every_error_is_reported_with_its_pointer() {
        let doc = json!({"age": -1, "extra": true, "email": "nope", "born": "2024-13-45",
                         "tags": ["a", "a"], "address": {"zip": "12"}});
        let mut paths: Vec<String> = people()
            .validate(&doc)
            .into_iter()
            .map(|e| e.path)
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                "/address/zip",
                "/age",
                "/born",
                "/email",
                "/extra",
                "/name",
                "/tags"
            ]
        );
    }

    #[test]
    fn remote_refs_and_unknown_keywords_are_refused_by_name() {
        for (schema, needle) in [
            (
                json!({"type": "object", "properties": {"a": {"$ref": "https://x/y.json"}}}),
                "$ref",
            ),
            (
                json!({"type": "object", "$dynamicRef": "#x"}),
                "$dynamicRef",
            ),
            (
                json!({"type": "object", "properties": {"a": {"format": "ipv4"}}}),
                "format",
            ),
            (
                json!({"type": "object", "properties": {"a": {"pattern": "(?=x)"}}}),
                "pattern",
            ),
            (json!({"type": "object", "frobnicate": 1}), "frobnicate"),
            (json!({"type": "string"}), "object"),
            (json!([]), "object"),
        ] {
            let e = DocumentSchema::compile(&schema).expect_err("must be refused");
            assert!(e.message.contains(needle), "{e} should name {needle}");
        }
    }

    #[test]
    fn unions_wider_than_the_limit_are_refused_naming_it() {
        let branches = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"type": "object", "properties": {"k": {"const": i}}}))
                .collect()
        };
        let schema = |n| json!({"type": "object", "properties": {"a": {"type": "array", "items": {"anyOf": branches(n)}}}});
        assert!(DocumentSchema::compile(&schema(MAX_BRANCHES)).is_ok());
        let e = DocumentSchema::compile(&schema(MAX_BRANCHES + 1)).expect_err("too wide");
        assert!(e.message.contains("at most 32"), "{e}");
        assert_eq!(e.path, "/properties/a/items/anyOf");
    }

    #[test]
    fn validation_stops_at_the_error_limit() {
        let s = DocumentSchema::compile(&json!({"type": "object",
            "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}))
        .expect("schema");
        let doc = json!({"a": vec!["x"; 10_000]});
        let v = s.validate_at_most(&doc, 100);
        assert_eq!(v.errors.len(), 100);
        assert!(v.truncated);
        let few = s.validate_at_most(&json!({"a": ["x", 1, "y"]}), 100);
        assert_eq!((few.errors.len(), few.truncated), (2, false));
        assert_eq!(
            s.validate(&doc).len(),
            10_000,
            "no limit asked: all of them"
        );
    }

    #[test]
    fn malformed_keyword_values_are_refused() {
        let e = DocumentSchema::compile(
            &json!({"type": "object", "properties": {"a": {"minimum": "x"}}}),
        );
        assert!(e.is_err());
    }
}
