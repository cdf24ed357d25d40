//! Collection definitions as clients send them to `PUT /v1/collections/{name}`:
//! the schema, the declared indexes and the access rules, parsed once at the
//! edge into typed values.

use serde_json::{Map, Value};

use crate::schema::{DocumentSchema, SchemaError};

/// Why a definition was refused (`400`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    /// The body is not the expected shape.
    #[error("{0}")]
    Shape(String),
    /// The schema is invalid or uses an unsupported construct.
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
}

fn shape(msg: impl Into<String>) -> DefinitionError {
    DefinitionError::Shape(msg.into())
}

/// A declared index: ordered fields with a direction, maybe unique.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexDef {
    /// `(path, direction)` pairs in declaration order; direction is 1 or -1.
    pub fields: Vec<(String, i8)>,
    /// Unique per tenant; a missing field counts as null unless `sparse`.
    pub unique: bool,
    /// Skip documents where an indexed field is missing.
    pub sparse: bool,
}

impl IndexDef {
    /// The index as the contract writes it:
    /// `{"fields": {"a": 1}, "unique": true, "sparse": false}`.
    pub fn to_json(&self) -> Value {
        let mut fields = Map::new();
        for (p, d) in &self.fields {
            fields.insert(p.clone(), Value::from(*d));
        }
        serde_json::json!({"fields": fields, "unique": self.unique, "sparse": self.sparse})
    }
}

/// Who may perform one action on a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRule {
    /// Role names; `"*"` is any authenticated caller, `"public"` anyone.
    pub roles: Vec<String>,
    /// A filter documents must match, with `{"$claim": NAME}` placeholders
    /// (checked at definition time, substituted per request).
    pub filter: Option<Value>,
}

impl AccessRule {
    /// Whether this rule lets anyone without a token in.
    pub fn is_public(&self) -> bool {
        self.roles.iter().any(|r| r == "public")
    }
}

/// Access rules per action; an absent action is denied to all but admins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// `read`: get, list, count, aggregate, events.
    pub read: Option<AccessRule>,
    /// `create`: POST documents.
    pub create: Option<AccessRule>,
    /// `update`: PUT and PATCH.
    pub update: Option<AccessRule>,
    /// `delete`: DELETE.
    pub delete: Option<AccessRule>,
}

/// The four actions an access rule can govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reading documents.
    Read,
    /// Creating documents.
    Create,
    /// Replacing or patching documents.
    Update,
    /// Deleting documents.
    Delete,
}

impl Access {
    /// The rule for `action`, if any.
    pub fn rule(&self, action: Action) -> Option<&AccessRule> {
        match action {
            Action::Read => self.read.as_ref(),
            Action::Create => self.create.as_ref(),
            Action::Update => self.update.as_ref(),
            Action::Delete => self.delete.as_ref(),
        }
    }
}

/// A validated collection definition.
#[derive(Debug)]
pub struct CollectionDef {
    /// The compiled schema (its source is kept as given).
    pub schema: DocumentSchema,
    /// Declared indexes.
    pub indexes: Vec<IndexDef>,
    /// Access rules as given (kept verbatim for `GET`).
    pub access_source: Value,
    /// Access rules, parsed.
    pub access: Access,
}

const MAX_INDEXES: usize = 32;
const MAX_INDEX_FIELDS: usize = 8;
/// System fields an index may name besides user paths.
pub const INDEXABLE_SYSTEM_FIELDS: &[&str] = &["_owner", "_created_at", "_updated_at"];

impl CollectionDef {
    /// Parses a definition body. Unknown keys are refused so that a typo
    /// (`"indices"`) never passes silently.
    pub fn parse(body: &Value) -> Result<Self, DefinitionError> {
        let obj = body
            .as_object()
            .ok_or_else(|| shape("a collection definition is a JSON object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "schema" | "indexes" | "access") {
                return Err(shape(format!(
                    "unknown key \"{key}\" (expected schema, indexes, access)"
                )));
            }
        }
        let default_schema = serde_json::json!({"type": "object"});
        let schema = DocumentSchema::compile(obj.get("schema").unwrap_or(&default_schema))?;
        let indexes = match obj.get("indexes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() > MAX_INDEXES {
                    return Err(shape(format!("at most {MAX_INDEXES} indexes")));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, v)| parse_index(v).map_err(|m| shape(format!("indexes[{i}]: {m}"))))
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(shape("\"indexes\" is an array")),
        };
        let access_source = obj
            .get("access")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let access = parse_access(&access_source)?;
        Ok(Self {
            schema,
            indexes,
            access_source,
            access,
        })
    }
}

impl CollectionDef {
    /// Refuses two indexes on the same key pattern, for a definition a
    /// client sends (stored definitions from before this check still
    /// load). MongoDB refuses a second index on a key pattern with other
    /// options, and a copy only costs writes. Order and direction count:
    /// `{a: 1}` and `{a: -1}` differ, as do `{a: 1, b: 1}` and `{b: 1, a: 1}`.
    pub fn refuse_duplicate_indexes(&self) -> Result<(), DefinitionError> {
        for (i, index) in self.indexes.iter().enumerate() {
            if let Some(j) = self.indexes[..i]
                .iter()
                .position(|e| e.fields == index.fields)
            {
                return Err(shape(format!(
                    "indexes[{i}] has the same fields as indexes[{j}]; merge them into one"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a dotted field path usable in an index.
pub fn check_index_path(path: &str) -> Result<(), String> {
    if INDEXABLE_SYSTEM_FIELDS.contains(&path) {
        return Ok(());
    }
    if path.is_empty() || path.len() > 256 {
        return Err("a field path has 1 to 256 characters".into());
    }
    for seg in path.split('.') {
        if seg.is_empty() {
            return Err(format!("\"{path}\" has an empty segment"));
        }
        if seg.contains('\0') {
            return Err(format!(
                "\"{}\": a field name may not contain NUL",
                path.replace('\0', "\\0")
            ));
        }
        if seg.starts_with('$') || seg.starts_with('_') {
            return Err(format!(
                "\"{path}\": segments may not start with '$' or '_' (system fields allowed: {})",
                INDEXABLE_SYSTEM_FIELDS.join(", ")
            ));
        }
    }
    Ok(())
}

fn parse_index(v: &Value) -> Result<IndexDef, String> {
    let obj = v.as_object().ok_or("an index is an object")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "fields" | "unique" | "sparse") {
            return Err(format!(
                "unknown key \"{key}\" (expected fields, unique, sparse)"
            ));
        }
    }
    let fields = obj
        .get("fields")
        .and_then(Value::as_object)
        .filter(|f| !f.is_empty())
        .ok_or("\"fields\" is a non-empty object of field: 1 | -1")?;
    if fields.len() > MAX_INDEX_FIELDS {
        return Err(format!("at most {MAX_INDEX_FIELDS} fields per index"));
    }
    let mut out = Vec::with_capacity(fields.len());
    for (path, dir) in fields {
        check_index_path(path)?;
        let d = match dir.as_i64() {
            Some(1) => 1,
            Some(-1) => -1,
            _ => return Err(format!("direction of \"{path}\" must be 1 or -1")),
        };
        out.push((path.clone(), d));
    }
    let flag = |k: &str| match obj.get(k) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("\"{k}\" is a boolean")),
    };
    Ok(IndexDef {
        fields: out,
        unique: flag("unique")?,
        sparse: flag("sparse")?,
    })
}

fn parse_access(v: &Value) -> Result<Access, DefinitionError> {
    let obj = v
        .as_object()
        .ok_or_else(|| shape("\"access\" is an object of read, create, update, delete"))?;
    let mut access = Access::default();
    for (key, rule) in obj {
        let slot = match key.as_str() {
            "read" => &mut access.read,
            "create" => &mut access.create,
            "update" => &mut access.update,
            "delete" => &mut access.delete,
            _ => {
                return Err(shape(format!(
                    "access: unknown action \"{key}\" (expected read, create, update, delete)"
                )));
            }
        };
        *slot = Some(parse_rule(rule).map_err(|m| shape(format!("access.{key}: {m}")))?);
    }
    Ok(access)
}

fn parse_rule(v: &Value) -> Result<AccessRule, String> {
    let obj = v.as_object().ok_or("a rule is an object with \"roles\"")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "roles" | "filter") {
            return Err(format!("unknown key \"{key}\" (expected roles, filter)"));
        }
    }
    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(f) => {
            // Checked with every claim present, so any shape error shows now,
            // not at the first request.
            crate::query::Filter::parse_with_claims(f, &AnyClaim)
                .map_err(|e| format!("filter: {e}"))?;
            Some(f.clone())
        }
    };
    let roles = obj
        .get("roles")
        .and_then(Value::as_array)
        .ok_or("\"roles\" is an array of role names")?;
    let roles = roles
        .iter()
        .map(|r| match r.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 256 => Ok(s.to_owned()),
            _ => Err("each role is a non-empty string".to_owned()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AccessRule { roles, filter })
}

/// A claim source where every claim exists (definition-time checks).
struct AnyClaim;

impl crate::query::Claims for AnyClaim {
    fn claim(&self, _: &str) -> Option<Value> {
        Some(Value::String(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_definition_parses() {
        let def = CollectionDef::parse(&json!({
            "schema": {"type": "object", "properties": {"email": {"type": "string"}}},
            "indexes": [{"fields": {"email": 1, "profile.age": -1}, "unique": true}],
            "access": {"read": {"roles": ["*"]}, "create": {"roles": ["editor"]}}
        }))
        .expect("valid");
        assert_eq!(
            def.indexes[0].fields,
            vec![("email".into(), 1), ("profile.age".into(), -1)]
        );
        assert!(def.indexes[0].unique);
        assert_eq!(
            def.access.read.as_ref().map(|r| r.roles.clone()),
            Some(vec!["*".to_owned()])
        );
        assert!(def.access.delete.is_none());
    }

    #[test]
    fn indexes_differing_in_order_or_direction_are_distinct() {
        let def = CollectionDef::parse(&json!({"indexes": [
            {"fields": {"a": 1}}, {"fields": {"a": -1}},
            {"fields": {"a": 1, "b": 1}}, {"fields": {"b": 1, "a": 1}},
        ]}))
        .expect("four distinct key patterns");
        def.refuse_duplicate_indexes().expect("no duplicates");
        assert_eq!(def.indexes.len(), 4);
        assert_eq!(
            def.indexes[3].fields,
            vec![("b".into(), 1), ("a".into(), 1)]
        );
    }

    #[test]
    fn a_second_index_on_a_key_pattern_is_refused_but_still_parses() {
        let def = CollectionDef::parse(&json!({"indexes": [
            {"fields": {"a": 1, "b": -1}}, {"fields": {"c": 1}},
            {"fields": {"a": 1, "b": -1}, "unique": true},
        ]}))
        .expect("a stored definition with a copy still loads");
        let e = def
            .refuse_duplicate_indexes()
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("indexes[2] has the same fields as indexes[0]"),
            "{e}"
        );
    }

    #[test]
    fn malformed_definitions_are_refused_with_a_reason() {
        for (body, needle) in [
            (json!([]), "object"),
            (json!({"indices": []}), "indices"),
            (json!({"indexes": [{"fields": {}}]}), "non-empty"),
            (json!({"indexes": [{"fields": {"a": 2}}]}), "1 or -1"),
            (json!({"indexes": [{"fields": {"$a": 1}}]}), "'$'"),
            (
                json!({"indexes": [{"fields": {"a..b": 1}}]}),
                "empty segment",
            ),
            (json!({"access": {"list": {"roles": []}}}), "list"),
            (json!({"access": {"read": {"roles": "x"}}}), "roles"),
            (json!({"schema": {"type": "object", "x-foo": 1}}), "x-foo"),
            (
                json!({"access": {"read": {"roles": ["*"], "filter": {"$where": "1"}}}}),
                "$where",
            ),
            (
                json!({"access": {"read": {"roles": ["*"], "filter": {"a": {"$claim": 1}}}}}),
                "claim name",
            ),
        ] {
            let e = CollectionDef::parse(&body)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }
}
