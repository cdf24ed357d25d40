//! The filter language: MongoDB query documents parsed into a typed AST.
//! Parsing checks everything once (operators, value shapes, regexes,
//! limits), so the evaluator and the SQL translation only ever see a valid
//! `Filter`. Access rules parse their filters with a claim resolver that
//! substitutes `{"$claim": "NAME"}` by the claim's JSON value.

use regex::Regex;
use serde_json::{Map, Value};

/// Largest nesting depth of a filter.
pub const MAX_DEPTH: usize = 32;
/// Most nodes (operators and field conditions) in a filter.
pub const MAX_NODES: usize = 1000;
/// Most values in one `$in`, `$nin` or `$all`.
pub const MAX_LIST: usize = 1000;
/// Longest regular expression, in bytes.
pub const MAX_REGEX: usize = 1024;

/// Why a filter was refused (`400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

/// A dotted field path (`a.b.0.c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    raw: String,
    segs: Vec<String>,
}

impl FieldPath {
    /// Checks a path: non-empty segments, none starting with `$`.
    pub fn parse(raw: &str) -> Result<Self, FilterError> {
        if raw.is_empty() || raw.len() > 512 {
            return err("a field path has 1 to 512 characters");
        }
        let segs: Vec<String> = raw.split('.').map(str::to_owned).collect();
        if segs.iter().any(|s| s.is_empty()) {
            return err(format!("field path \"{raw}\" has an empty segment"));
        }
        if let Some(s) = segs.iter().find(|s| s.starts_with('$')) {
            return err(format!(
                "field path \"{raw}\": segment \"{s}\" may not start with '$'"
            ));
        }
        Ok(Self {
            raw: raw.to_owned(),
            segs,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.segs
    }

    /// Adds the path's first segment to `out` unless it is there already.
    pub(crate) fn add_top_level<'a>(&'a self, out: &mut Vec<&'a str>) {
        if let Some(first) = self.segs.first()
            && !out.contains(&first.as_str())
        {
            out.push(first);
        }
    }
}

/// A type name of `$type` (BSON names; only the JSON ones can match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeName {
    /// `double` (1): a float.
    Double,
    /// `string` (2).
    String,
    /// `object` (3).
    Object,
    /// `array` (4).
    Array,
    /// `bool` (8).
    Bool,
    /// `null` (10).
    Null,
    /// `int` (16): an integer within 32 bits.
    Int,
    /// `long` (18): any other integer.
    Long,
    /// `number`: any numeric value.
    Number,
    /// A BSON type JSON cannot hold (`date`, `objectId`...): never matches.
    Other,
}

impl TypeName {
    fn parse(v: &Value) -> Result<Self, FilterError> {
        let t = match v {
            Value::String(s) => match s.as_str() {
                "double" => Self::Double,
                "string" => Self::String,
                "object" => Self::Object,
                "array" => Self::Array,
                "bool" => Self::Bool,
                "null" => Self::Null,
                "int" => Self::Int,
                "long" => Self::Long,
                "number" => Self::Number,
                "decimal" | "binData" | "undefined" | "objectId" | "date" | "regex"
                | "dbPointer" | "javascript" | "symbol" | "timestamp" | "minKey" | "maxKey" => {
                    Self::Other
                }
                _ => return err(format!("$type: unknown type name \"{s}\"")),
            },
            Value::Number(n) => match n.as_i64() {
                Some(1) => Self::Double,
                Some(2) => Self::String,
                Some(3) => Self::Object,
                Some(4) => Self::Array,
                Some(8) => Self::Bool,
                Some(10) => Self::Null,
                Some(16) => Self::Int,
                Some(18) => Self::Long,
                Some(5 | 6 | 7 | 9 | 11 | 12 | 13 | 14 | 15 | 17 | 19 | -1 | 127) => Self::Other,
                _ => return err(format!("$type: unknown type number {n}")),
            },
            _ => return err("$type takes a type name, a type number, or an array of them"),
        };
        Ok(t)
    }
}

/// One condition on a field.
#[derive(Debug, Clone)]
pub enum Cond {
    /// `$eq` (and a literal value).
    Eq(Value),
    /// `$ne`.
    Ne(Value),
    /// `$gt`.
    Gt(Value),
    /// `$gte`.
    Gte(Value),
    /// `$lt`.
    Lt(Value),
    /// `$lte`.
    Lte(Value),
    /// `$in`.
    In(ValueSet),
    /// `$nin`.
    Nin(ValueSet),
    /// `$exists`.
    Exists(bool),
    /// `$type` (any of).
    Type(Vec<TypeName>),
    /// `$regex` with `$options`.
    Regex(Box<Regex>),
    /// `$not`: none of the inner conditions all hold.
    Not(Vec<Cond>),
    /// `$elemMatch`.
    ElemMatch(ElemMatch),
    /// `$size`.
    Size(u64),
    /// `$all`.
    All(ValueSet),
}

/// The values of `$in`, `$nin` or `$all`: sorted in MongoDB's order with
/// duplicates (in MongoDB's equality) removed, so a value is looked up by
/// binary search instead of compared with each (a 1,000-value `$in` over
/// many documents cost 1,000 comparisons per value). Reads as a slice.
#[derive(Debug, Clone, Default)]
pub struct ValueSet(Vec<Value>);

impl ValueSet {
    /// The set of `values`.
    pub fn new(mut values: Vec<Value>) -> Self {
        values.sort_by(super::order::compare);
        values.dedup_by(|a, b| super::order::equal(a, b));
        Self(values)
    }

    /// Whether a value equal to `v` (MongoDB's equality) is in the set.
    pub fn contains(&self, v: &Value) -> bool {
        self.0
            .binary_search_by(|x| super::order::compare(x, v))
            .is_ok()
    }
}

impl std::ops::Deref for ValueSet {
    type Target = [Value];

    fn deref(&self) -> &[Value] {
        &self.0
    }
}

/// The two forms of `$elemMatch`.
#[derive(Debug, Clone)]
pub enum ElemMatch {
    /// A query on object elements: `{$elemMatch: {a: 1, b: {$gt: 2}}}`.
    Query(Box<Node>),
    /// Operators on the elements themselves: `{$elemMatch: {$gt: 1, $lt: 5}}`.
    Ops(Vec<Cond>),
}

/// A node of the filter tree.
#[derive(Debug, Clone)]
pub enum Node {
    /// `$and` (also an implicit list of top-level fields).
    And(Vec<Node>),
    /// `$or`.
    Or(Vec<Node>),
    /// `$nor`.
    Nor(Vec<Node>),
    /// Conditions on one field, all of which must hold.
    Field(FieldPath, Vec<Cond>),
    /// Matches nothing (an access rule naming a claim the token lacks).
    Nothing,
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
}

/// Looks a claim up for `$claim` substitution.
pub trait Claims {
    /// The claim's value; `None` when the token lacks it.
    fn claim(&self, name: &str) -> Option<Value>;
}

struct Parser<'a> {
    nodes: usize,
    claims: Option<&'a dyn Claims>,
    /// Set when a `$claim` was missing or null: the filter matches nothing.
    missing_claim: bool,
}

impl Filter {
    /// The filter that matches everything.
    pub fn all() -> Self {
        Self {
            root: Node::And(Vec::new()),
        }
    }

    /// The filter that matches nothing.
    pub fn nothing() -> Self {
        Self {
            root: Node::Nothing,
        }
    }

    /// Whether the filter matches nothing at all.
    pub fn is_nothing(&self) -> bool {
        matches!(self.root, Node::Nothing)
    }

    /// Parses a client's filter; `$claim` is not allowed here.
    pub fn parse(v: &Value) -> Result<Self, FilterError> {
        Parser {
            nodes: 0,
            claims: None,
            missing_claim: false,
        }
        .root(v)
    }

    /// Parses an access rule's filter, substituting `{"$claim": "NAME"}`
    /// with the caller's claim value. A missing or `null` claim makes the
    /// whole filter match nothing, never everything.
    pub fn parse_with_claims(v: &Value, claims: &dyn Claims) -> Result<Self, FilterError> {
        Parser {
            nodes: 0,
            claims: Some(claims),
            missing_claim: false,
        }
        .root(v)
    }

    /// Parses a JSON text (a query parameter).
    pub fn parse_str(text: &str) -> Result<Self, FilterError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| FilterError(format!("filter is not valid JSON: {e}")))?;
        Self::parse(&v)
    }

    /// The root node.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// Adds the top-level fields the filter reads to `out` (the first
    /// segment of every path it names). A document holding only those
    /// fields matches exactly when the whole document does.
    pub fn top_level_fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        fn walk<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
            match node {
                Node::And(v) | Node::Or(v) | Node::Nor(v) => v.iter().for_each(|n| walk(n, out)),
                Node::Field(path, _) => path.add_top_level(out),
                Node::Nothing => {}
            }
        }
        walk(&self.root, out)
    }

    /// Whether the filter matches everything (no conditions).
    pub fn is_all(&self) -> bool {
        matches!(&self.root, Node::And(v) if v.is_empty())
    }

    /// `self ∧ other`.
    pub fn and(self, other: Filter) -> Filter {
        if self.is_nothing() || other.is_nothing() {
            return Filter::nothing();
        }
        match (self.is_all(), other.is_all()) {
            (true, _) => other,
            (_, true) => self,
            _ => Filter {
                root: Node::And(vec![self.root, other.root]),
            },
        }
    }
}

impl Parser<'_> {
    fn root(mut self, v: &Value) -> Result<Filter, FilterError> {
        let root = self.query(v, 0)?;
        Ok(Filter {
            root: if self.missing_claim {
                Node::Nothing
            } else {
                root
            },
        })
    }

    fn count(&mut self) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return err(format!("filter has more than {MAX_NODES} conditions"));
        }
        Ok(())
    }

    fn query(&mut self, v: &Value, depth: usize) -> Result<Node, FilterError> {
        if depth > MAX_DEPTH {
            return err(format!("filter nested deeper than {MAX_DEPTH}"));
        }
        let obj = v
            .as_object()
            .ok_or_else(|| FilterError("a filter is a JSON object".into()))?;
        let mut parts = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            self.count()?;
            match key.as_str() {
                "$and" | "$or" | "$nor" => {
                    let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
                        FilterError(format!("{key} takes a non-empty array of filters"))
                    })?;
                    let nodes = list
                        .iter()
                        .map(|q| self.query(q, depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(match key.as_str() {
                        "$and" => Node::And(nodes),
                        "$or" => Node::Or(nodes),
                        _ => Node::Nor(nodes),
                    });
                }
                k if k.starts_with('$') => {
                    return err(format!(
                        "{k} is not allowed at the top of a filter (allowed: $and, $or, $nor)"
                    ));
                }
                _ => {
                    let path = FieldPath::parse(key)?;
                    let conds = self.field_value(value, depth + 1)?;
                    parts.push(Node::Field(path, conds));
                }
            }
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Node::And(Vec::new()))
        } else {
            Node::And(parts)
        })
    }

    /// The value of a field in a query: an operator object or a literal.
    fn field_value(&mut self, v: &Value, depth: usize) -> Result<Vec<Cond>, FilterError> {
        if let Some(obj) = v.as_object() {
            if let Some(sub) = self.claim_value(obj)? {
                return Ok(vec![Cond::Eq(sub)]);
            }
            let dollar = obj.keys().filter(|k| k.starts_with('$')).count();
            if dollar > 0 {
                if dollar != obj.len() {
                    return err("an operator object cannot mix $-operators and field names");
                }
                return self.operators(obj, depth);
            }
        }
        Ok(vec![Cond::Eq(self.literal(v)?)])
    }

    /// `{"$claim": "NAME"}` in a value position: substituted in rule
    /// filters, refused in client filters.
    fn claim_value(&mut self, obj: &Map<String, Value>) -> Result<Option<Value>, FilterError> {
        let Some(name) = obj.get("$claim") else {
            return Ok(None);
        };
        let Some(claims) = self.claims else {
            return err("$claim is only allowed in access rule filters");
        };
        if obj.len() != 1 {
            return err("{\"$claim\": NAME} takes no other keys");
        }
        let name = name
            .as_str()
            .ok_or_else(|| FilterError("$claim takes a claim name".into()))?;
        match claims.claim(name) {
            Some(Value::Null) | None => {
                self.missing_claim = true;
                Ok(Some(Value::Null))
            }
            Some(v) => Ok(Some(v)),
        }
    }

    /// A literal value: `$claim` substituted, other `$` keys in objects
    /// refused (they would be operators in a place that takes values).
    fn literal(&mut self, v: &Value) -> Result<Value, FilterError> {
        if let Some(obj) = v.as_object()
            && let Some(sub) = self.claim_value(obj)?
        {
            return Ok(sub);
        }
        Ok(v.clone())
    }

    fn list(&mut self, op: &str, v: &Value) -> Result<ValueSet, FilterError> {
        if let Some(obj) = v.as_object()
            && let Some(sub) = self.claim_value(obj)?
        {
            let items = match sub {
                Value::Array(items) => items,
                other => vec![other],
            };
            // A list claim holding null would match documents without the
            // field (widening `$in`, narrowing `$nin`), and an oversized one
            // would bypass the list limit: either makes the rule match
            // nothing, as a missing claim does.
            if items.iter().any(Value::is_null) || items.len() > MAX_LIST {
                self.missing_claim = true;
                return Ok(ValueSet::default());
            }
            return Ok(ValueSet::new(items));
        }
        let list = v
            .as_array()
            .ok_or_else(|| FilterError(format!("{op} takes an array")))?;
        if list.len() > MAX_LIST {
            return err(format!("{op} takes at most {MAX_LIST} values"));
        }
        Ok(ValueSet::new(
            list.iter()
                .map(|x| self.literal(x))
                .collect::<Result<_, _>>()?,
        ))
    }

    fn operators(
        &mut self,
        obj: &Map<String, Value>,
        depth: usize,
    ) -> Result<Vec<Cond>, FilterError> {
        if depth > MAX_DEPTH {
            return err(format!("filter nested deeper than {MAX_DEPTH}"));
        }
        let mut conds = Vec::with_capacity(obj.len());
        let options = obj.get("$options");
        if options.is_some() && !obj.contains_key("$regex") {
            return err("$options needs $regex");
        }
        for (op, v) in obj {
            self.count()?;
            let c = match op.as_str() {
                "$eq" => Cond::Eq(self.literal(v)?),
                "$ne" => Cond::Ne(self.literal(v)?),
                "$gt" => Cond::Gt(self.literal(v)?),
                "$gte" => Cond::Gte(self.literal(v)?),
                "$lt" => Cond::Lt(self.literal(v)?),
                "$lte" => Cond::Lte(self.literal(v)?),
                "$in" => Cond::In(self.list("$in", v)?),
                "$nin" => Cond::Nin(self.list("$nin", v)?),
                "$all" => Cond::All(self.list("$all", v)?),
                "$exists" => Cond::Exists(match v {
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    _ => return err("$exists takes true or false"),
                }),
                "$type" => Cond::Type(match v {
                    Value::Array(list) if !list.is_empty() => {
                        list.iter().map(TypeName::parse).collect::<Result<_, _>>()?
                    }
                    other => vec![TypeName::parse(other)?],
                }),
                "$size" => Cond::Size(
                    v.as_u64()
                        .or_else(|| {
                            v.as_f64()
                                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                                .map(|f| f as u64)
                        })
                        .ok_or_else(|| FilterError("$size takes a non-negative integer".into()))?,
                ),
                "$regex" => Cond::Regex(Box::new(regex(v, options)?)),
                "$options" => continue,
                "$not" => {
                    let inner = v
                        .as_object()
                        .filter(|o| !o.is_empty() && o.keys().all(|k| k.starts_with('$')))
                        .ok_or_else(|| FilterError("$not takes an object of operators".into()))?;
                    Cond::Not(self.operators(inner, depth + 1)?)
                }
                "$elemMatch" => {
                    let inner = v
                        .as_object()
                        .ok_or_else(|| FilterError("$elemMatch takes an object".into()))?;
                    let is_ops = !inner.is_empty()
                        && inner.keys().all(|k| {
                            k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor")
                        });
                    if is_ops {
                        Cond::ElemMatch(ElemMatch::Ops(self.operators(inner, depth + 1)?))
                    } else {
                        Cond::ElemMatch(ElemMatch::Query(Box::new(self.query(v, depth + 1)?)))
                    }
                }
                other => {
                    return err(format!(
                        "unknown or unsupported operator {other} (supported: $eq $ne $gt $gte $lt $lte $in $nin $exists $type $regex $options $not $elemMatch $size $all, and $and $or $nor)"
                    ));
                }
            };
            conds.push(c);
        }
        Ok(conds)
    }
}

fn regex(v: &Value, options: Option<&Value>) -> Result<Regex, FilterError> {
    let pattern = v
        .as_str()
        .ok_or_else(|| FilterError("$regex takes a string".into()))?;
    if pattern.len() > MAX_REGEX {
        return err(format!("$regex is limited to {MAX_REGEX} bytes"));
    }
    let mut b = regex::RegexBuilder::new(pattern);
    b.size_limit(1 << 20).dfa_size_limit(1 << 20);
    if let Some(o) = options {
        let o = o
            .as_str()
            .ok_or_else(|| FilterError("$options takes a string".into()))?;
        for c in o.chars() {
            match c {
                'i' => b.case_insensitive(true),
                'm' => b.multi_line(true),
                's' => b.dot_matches_new_line(true),
                'x' => b.ignore_whitespace(true),
                other => {
                    return err(format!(
                        "$options: unsupported option '{other}' (supported: i, m, s, x)"
                    ));
                }
            };
        }
    }
    b.build().map_err(|e| {
        FilterError(match e {
            regex::Error::CompiledTooBig(_) => "$regex compiles too big".into(),
            _ => format!(
                "$regex is not a supported regular expression (Rust regex syntax: no lookaround, no backreferences): {pattern}"
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(v: Value, needle: &str) {
        let e = Filter::parse(&v).expect_err("must be refused");
        assert!(e.0.contains(needle), "{e} should mention {needle}");
    }

    #[test]
    fn code_running_and_unknown_operators_are_refused_by_name() {
        refused(json!({"$where": "sleep(1)"}), "$where");
        refused(json!({"$expr": {"$eq": ["$a", 1]}}), "$expr");
        refused(json!({"a": {"$function": {}}}), "$function");
        refused(json!({"a": {"$near": [0, 0]}}), "$near");
        refused(json!({"a": {"$gt": 1, "b": 2}}), "mix");
        refused(json!({"$and": []}), "$and");
        refused(json!({"a": {"$regex": "(?=x)"}}), "lookaround");
        refused(json!({"a": {"$regex": "(a)\\1"}}), "backreferences");
        refused(json!({"a": {"$options": "i"}}), "$options needs");
        refused(json!({"a": {"$regex": "x", "$options": "g"}}), "'g'");
        refused(json!({"a.": 1}), "empty segment");
        refused(json!({"a.$b": 1}), "'$'");
        refused(json!({"a": {"$claim": "sub"}}), "$claim");
        refused(json!([1]), "object");
        refused(json!({"a": {"$size": -1}}), "$size");
        refused(json!({"a": {"$type": "frobnicate"}}), "frobnicate");
    }

    #[test]
    fn limits_are_enforced() {
        let mut deep = json!({"a": 1});
        for _ in 0..40 {
            deep = json!({"$and": [deep]});
        }
        refused(deep, "deeper");
        let wide: Map<String, Value> = (0..1001).map(|i| (format!("f{i}"), json!(i))).collect();
        refused(Value::Object(wide), "more than");
        refused(
            json!({"a": {"$in": (0..1001).collect::<Vec<_>>()}}),
            "at most",
        );
        refused(json!({"a": {"$regex": "a".repeat(1025)}}), "limited");
    }

    struct TestClaims(Value);
    impl Claims for TestClaims {
        fn claim(&self, name: &str) -> Option<Value> {
            self.0.get(name).cloned()
        }
    }

    #[test]
    fn claims_are_substituted_as_values_and_missing_ones_match_nothing() {
        let c = TestClaims(json!({"sub": "u1", "groups": ["a", "b"], "nul": null}));
        let f = Filter::parse_with_claims(&json!({"_owner": {"$claim": "sub"}}), &c).expect("ok");
        assert!(
            matches!(f.root(), Node::Field(_, conds) if matches!(&conds[0], Cond::Eq(v) if v == "u1"))
        );
        let f = Filter::parse_with_claims(&json!({"g": {"$in": {"$claim": "groups"}}}), &c)
            .expect("ok");
        assert!(
            matches!(f.root(), Node::Field(_, conds) if matches!(&conds[0], Cond::In(v) if v.len() == 2))
        );
        for missing in ["absent", "nul"] {
            let f = Filter::parse_with_claims(
                &json!({"$or": [{"a": 1}, {"o": {"$claim": missing}}]}),
                &c,
            )
            .expect("ok");
            assert!(matches!(f.root(), Node::Nothing));
        }
    }
}
