//! Aggregation expressions: parsed from MongoDB's syntax into `Expr`, and
//! evaluated over one document with MongoDB's semantics.
//!
//! Syntax (as MongoDB parses it): a string starting with `$` is a field
//! path (`"$a.b"`), with `$$` a variable (`"$$ROOT"`, `"$$CURRENT.a"`, a
//! `$lookup` `let` name); an object whose first key starts with `$` is an
//! operator and has exactly that one key; any other object is an object of
//! expressions; an array is an array of expressions; anything else is a
//! literal (`$literal` makes any value a literal).
//!
//! Operators allowed (the contract's list, plus `$literal`): `$add
//! $subtract $multiply $divide $mod $concat $toLower $toUpper $cond
//! $ifNull $size $eq $ne $gt $gte $lt $lte $and $or $not $in`. Operators
//! that run code (`$function`, `$accumulator`, `$where`) and every other
//! operator are refused by name; so are system variables other than
//! `$$ROOT` and `$$CURRENT` (`$$NOW`, `$$REMOVE`, ...).
//!
//! Semantics worth knowing (all MongoDB's, from its manual and, where the
//! manual is terse, its expression code):
//!
//! - Missing is not null: a path to nothing is missing; `{$eq: ["$nope",
//!   null]}` is false, missing sorts below null; an object expression
//!   leaves out fields whose value is missing; an array expression turns a
//!   missing element into null.
//! - Arithmetic (see `arith.rs`) and `$concat` give null when an operand
//!   is null or missing (checked left to right, so an earlier null wins
//!   over a later type error), and a runtime error naming the operand's
//!   type otherwise.
//! - Comparisons (`$eq`...`$lte`) compare any two values in BSON order
//!   (no type bracketing, unlike query filters): `{$gt: ["a", 1]}` is true.
//! - `$and`/`$or` short-circuit; truthiness is MongoDB's (false, null,
//!   missing and 0 are false).
//! - `$toLower`/`$toUpper` map ASCII letters only (MongoDB's byte-wise
//!   mapping); null or missing gives `""`; numbers are turned into text
//!   first (integers in decimal, doubles as C's `%g`); other types are an
//!   error.
//! - `$size` needs an array; `$in` needs an array as its second operand.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::query::FieldPath;

use super::arith::{AddState, MultiplyState, Num, divide, modulo, subtract};
use super::values::{Budget, compare_missing, format_g, nullish, truthy, type_name, value_path};
use super::{MAX_EXPRESSION_DEPTH, PipelineError};

/// A variable an expression can read.
#[derive(Debug, Clone, PartialEq)]
pub enum Var {
    /// `$$ROOT`: the document the stage is processing.
    Root,
    /// `$$CURRENT`: the same as `$$ROOT` in every allowed stage.
    Current,
    /// A `$lookup` `let` variable.
    User(String),
}

/// An operator of the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `$add`.
    Add,
    /// `$subtract`.
    Subtract,
    /// `$multiply`.
    Multiply,
    /// `$divide`.
    Divide,
    /// `$mod`.
    Mod,
    /// `$concat`.
    Concat,
    /// `$toLower`.
    ToLower,
    /// `$toUpper`.
    ToUpper,
    /// `$cond` (arguments: if, then, else).
    Cond,
    /// `$ifNull` (inputs, then the replacement).
    IfNull,
    /// `$size`.
    Size,
    /// `$eq`.
    Eq,
    /// `$ne`.
    Ne,
    /// `$gt`.
    Gt,
    /// `$gte`.
    Gte,
    /// `$lt`.
    Lt,
    /// `$lte`.
    Lte,
    /// `$and`.
    And,
    /// `$or`.
    Or,
    /// `$not`.
    Not,
    /// `$in`.
    In,
}

impl Op {
    /// The operator's name (`$add`...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "$add",
            Op::Subtract => "$subtract",
            Op::Multiply => "$multiply",
            Op::Divide => "$divide",
            Op::Mod => "$mod",
            Op::Concat => "$concat",
            Op::ToLower => "$toLower",
            Op::ToUpper => "$toUpper",
            Op::Cond => "$cond",
            Op::IfNull => "$ifNull",
            Op::Size => "$size",
            Op::Eq => "$eq",
            Op::Ne => "$ne",
            Op::Gt => "$gt",
            Op::Gte => "$gte",
            Op::Lt => "$lt",
            Op::Lte => "$lte",
            Op::And => "$and",
            Op::Or => "$or",
            Op::Not => "$not",
            Op::In => "$in",
        }
    }

    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "$add" => Op::Add,
            "$subtract" => Op::Subtract,
            "$multiply" => Op::Multiply,
            "$divide" => Op::Divide,
            "$mod" => Op::Mod,
            "$concat" => Op::Concat,
            "$toLower" => Op::ToLower,
            "$toUpper" => Op::ToUpper,
            "$cond" => Op::Cond,
            "$ifNull" => Op::IfNull,
            "$size" => Op::Size,
            "$eq" => Op::Eq,
            "$ne" => Op::Ne,
            "$gt" => Op::Gt,
            "$gte" => Op::Gte,
            "$lt" => Op::Lt,
            "$lte" => Op::Lte,
            "$and" => Op::And,
            "$or" => Op::Or,
            "$not" => Op::Not,
            "$in" => Op::In,
            _ => return None,
        })
    }

    /// How many arguments the operator takes: exactly `n`, or at least.
    fn arity(self) -> Arity {
        match self {
            Op::Add | Op::Multiply | Op::Concat | Op::And | Op::Or => Arity::Any,
            Op::Subtract | Op::Divide | Op::Mod | Op::In => Arity::Exactly(2),
            Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte => Arity::Exactly(2),
            Op::ToLower | Op::ToUpper | Op::Size | Op::Not => Arity::Exactly(1),
            Op::Cond => Arity::Exactly(3),
            Op::IfNull => Arity::AtLeast(2),
        }
    }
}

enum Arity {
    Any,
    Exactly(usize),
    AtLeast(usize),
}

/// The operators an expression may use, for error messages.
pub(crate) const ALLOWED_OPERATORS: &str = "$add $subtract $multiply $divide $mod $concat $toLower $toUpper $cond $ifNull $size $eq $ne $gt $gte $lt $lte $and $or $not $in $literal";

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Value),
    /// A field path of the current document (`"$a.b"`).
    Path(FieldPath),
    /// A variable, optionally followed by a path (`"$$ROOT.a"`).
    Var(Var, Vec<String>),
    /// An array of expressions.
    Array(Vec<Expr>),
    /// An object of expressions, in the order written.
    Object(Vec<(String, Expr)>),
    /// An operator with its arguments (`$cond`: if, then, else).
    Op(Op, Vec<Expr>),
}

impl Expr {
    /// Adds the top-level fields of the current document the expression
    /// reads to `out`; `false` when it reads the whole document
    /// (`$$ROOT` or `$$CURRENT` without a path). Variables bound by
    /// `$let`, `$map`... read what their binding expressions read, which
    /// are walked here too.
    pub(crate) fn add_top_level<'a>(&'a self, out: &mut Vec<&'a str>) -> bool {
        match self {
            Expr::Literal(_) | Expr::Var(Var::User(_), _) => true,
            Expr::Path(p) => {
                p.add_top_level(out);
                true
            }
            Expr::Var(Var::Root | Var::Current, path) => match path.first() {
                Some(first) => {
                    if !out.contains(&first.as_str()) {
                        out.push(first);
                    }
                    true
                }
                None => false,
            },
            Expr::Array(items) => items.iter().all(|e| e.add_top_level(out)),
            Expr::Object(members) => members.iter().all(|(_, e)| e.add_top_level(out)),
            Expr::Op(_, args) => args.iter().all(|e| e.add_top_level(out)),
        }
    }
}

/// What the parser knows while it parses expressions: the `let` variables
/// in scope (innermost last).
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) vars: Vec<String>,
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, PipelineError> {
    Err(PipelineError::Invalid(msg.into()))
}

/// Checks a user variable name (MongoDB's rules: a lowercase ASCII letter
/// or a non-ASCII character first, then letters, digits, `_` or non-ASCII).
pub(crate) fn check_var_name(name: &str) -> Result<(), PipelineError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return invalid("empty variable names are not allowed");
    };
    if first.is_ascii() && !first.is_ascii_lowercase() {
        return invalid(format!(
            "'{name}' starts with an invalid character for a user variable name"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii()))
    {
        return invalid(format!("'{name}' contains an invalid character '{c}'"));
    }
    Ok(())
}

/// Parses a dotted path (after its `$`), with the filter language's checks
/// and no NUL.
pub(crate) fn parse_path(raw: &str, what: &str) -> Result<FieldPath, PipelineError> {
    if raw.contains('\0') {
        return invalid(format!("{what} \"{raw}\" contains a NUL character"));
    }
    FieldPath::parse(raw).map_err(|e| PipelineError::Invalid(format!("{what}: {}", e.0)))
}

impl Expr {
    /// Parses an expression at nesting level `depth` (0 for a stage's own
    /// operand).
    pub(crate) fn parse(v: &Value, depth: usize, scope: &Scope) -> Result<Expr, PipelineError> {
        if depth > MAX_EXPRESSION_DEPTH {
            return invalid(format!(
                "an expression nests deeper than {MAX_EXPRESSION_DEPTH} levels (the limit)"
            ));
        }
        match v {
            Value::String(s) if s.starts_with("$$") => parse_var(&s[2..], scope),
            Value::String(s) if s.starts_with('$') => {
                if s.len() == 1 {
                    return invalid("'$' by itself is not a valid field path");
                }
                Ok(Expr::Path(parse_path(&s[1..], "field path")?))
            }
            Value::Array(items) => Ok(Expr::Array(
                items
                    .iter()
                    .map(|x| Expr::parse(x, depth + 1, scope))
                    .collect::<Result<_, _>>()?,
            )),
            Value::Object(m) => {
                let Some(first) = m.keys().next() else {
                    return Ok(Expr::Object(Vec::new()));
                };
                if first.starts_with('$') {
                    if m.len() != 1 {
                        return invalid(format!(
                            "an expression object with an operator has exactly one field, found {} ({})",
                            m.len(),
                            m.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                    let (name, arg) = m
                        .iter()
                        .next()
                        .map_or(("", &Value::Null), |(k, v)| (k.as_str(), v));
                    return parse_operator(name, arg, depth, scope);
                }
                let mut fields = Vec::with_capacity(m.len());
                for (k, x) in m {
                    check_field_name(k)?;
                    fields.push((k.clone(), Expr::parse(x, depth + 1, scope)?));
                }
                Ok(Expr::Object(fields))
            }
            other => Ok(Expr::Literal(other.clone())),
        }
    }

    /// Whether this is a constant (used to render `$project` literals).
    pub fn is_literal(&self) -> bool {
        matches!(self, Expr::Literal(_))
    }
}

/// A field name of an object expression or an output field: non-empty, no
/// `$` first, no `.`, no NUL.
pub(crate) fn check_field_name(k: &str) -> Result<(), PipelineError> {
    if k.is_empty() {
        return invalid("field names may not be empty");
    }
    if k.starts_with('$') {
        return invalid(format!("field name \"{k}\" may not start with '$'"));
    }
    if k.contains('.') {
        return invalid(format!("field name \"{k}\" may not contain '.'"));
    }
    if k.contains('\0') {
        return invalid(format!(
            "field name \"{k}\" may not contain a NUL character"
        ));
    }
    Ok(())
}

fn parse_var(raw: &str, scope: &Scope) -> Result<Expr, PipelineError> {
    let (name, rest) = match raw.split_once('.') {
        Some((n, r)) => (n, Some(r)),
        None => (raw, None),
    };
    let segs = match rest {
        Some(r) => parse_path(r, "variable path")?.segments().to_vec(),
        None => Vec::new(),
    };
    let var = match name {
        "ROOT" => Var::Root,
        "CURRENT" => Var::Current,
        "REMOVE" | "NOW" | "CLUSTER_TIME" | "DESCEND" | "PRUNE" | "KEEP" | "SEARCH_META"
        | "USER_ROLES" | "IS_MR" | "SEARCH_SCORE" => {
            return invalid(format!(
                "system variable $${name} is not supported (only $$ROOT and $$CURRENT)"
            ));
        }
        _ => {
            check_var_name(name).map_err(|_| {
                PipelineError::Invalid(format!(
                    "unknown or invalid variable $${name} (system variables: only $$ROOT and $$CURRENT; others are $lookup let names)"
                ))
            })?;
            if !scope.vars.iter().any(|v| v == name) {
                return invalid(format!("use of undefined variable $${name}"));
            }
            Var::User(name.to_owned())
        }
    };
    Ok(Expr::Var(var, segs))
}

fn parse_operator(
    name: &str,
    arg: &Value,
    depth: usize,
    scope: &Scope,
) -> Result<Expr, PipelineError> {
    if name == "$literal" {
        return Ok(Expr::Literal(arg.clone()));
    }
    let Some(op) = Op::from_name(name) else {
        return invalid(match name {
            "$function" | "$accumulator" | "$where" => {
                format!("expression operator {name} runs code and is not allowed")
            }
            _ => format!(
                "unknown or unsupported expression operator {name} (supported: {ALLOWED_OPERATORS})"
            ),
        });
    };
    if op == Op::Cond
        && let Value::Object(m) = arg
    {
        return parse_cond_object(m, depth, scope);
    }
    let raw: Vec<&Value> = match arg {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let n = raw.len();
    match op.arity() {
        Arity::Exactly(k) if n != k => {
            return invalid(format!(
                "{name} takes exactly {k} argument{}, {n} given",
                if k == 1 { "" } else { "s" }
            ));
        }
        Arity::AtLeast(k) if n < k => {
            return invalid(format!("{name} takes at least {k} arguments, {n} given"));
        }
        _ => {}
    }
    let args = raw
        .into_iter()
        .map(|a| Expr::parse(a, depth + 1, scope))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Expr::Op(op, args))
}

fn parse_cond_object(
    m: &Map<String, Value>,
    depth: usize,
    scope: &Scope,
) -> Result<Expr, PipelineError> {
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "if" | "then" | "else"))
    {
        return invalid(format!("unrecognized parameter to $cond: {k}"));
    }
    let mut args = Vec::with_capacity(3);
    for part in ["if", "then", "else"] {
        let Some(v) = m.get(part) else {
            return invalid(format!("missing '{part}' parameter to $cond"));
        };
        args.push(Expr::parse(v, depth + 1, scope)?);
    }
    Ok(Expr::Op(Op::Cond, args))
}

/// What an expression is evaluated against: the current document and the
/// `let` variables in scope (innermost last; `None` is a variable bound
/// to a missing value).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) root: &'a Value,
    pub(crate) vars: &'a [(String, Option<Value>)],
}

/// An expression's value; `None` is missing.
pub(crate) type Out<'a> = Option<Cow<'a, Value>>;

impl Expr {
    /// Evaluates the expression; values taken from the document are
    /// borrowed, values built are owned and charged to `budget`.
    pub(crate) fn eval<'a>(
        &'a self,
        env: Env<'a>,
        budget: &mut Budget,
    ) -> Result<Out<'a>, PipelineError> {
        match self {
            Expr::Literal(v) => Ok(Some(Cow::Borrowed(v))),
            Expr::Path(p) => Ok(value_path(env.root, p.segments())),
            Expr::Var(var, segs) => {
                let base = match var {
                    Var::Root | Var::Current => Some(env.root),
                    Var::User(name) => env
                        .vars
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, v)| v.as_ref()),
                };
                Ok(base.and_then(|b| value_path(b, segs)))
            }
            Expr::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let v = match item.eval(env, budget)? {
                        Some(v) => owned_charged(v, budget)?,
                        None => Value::Null,
                    };
                    out.push(v);
                }
                Ok(Some(Cow::Owned(Value::Array(out))))
            }
            Expr::Object(fields) => {
                let mut out = Map::with_capacity(fields.len());
                for (k, e) in fields {
                    if let Some(v) = e.eval(env, budget)? {
                        budget.charge(k.len() + 1)?;
                        out.insert(k.clone(), owned_charged(v, budget)?);
                    }
                }
                Ok(Some(Cow::Owned(Value::Object(out))))
            }
            Expr::Op(op, args) => eval_op(*op, args, env, budget),
        }
    }
}

/// Copies a value into a built container, charging its size.
fn owned_charged(v: Cow<'_, Value>, budget: &mut Budget) -> Result<Value, PipelineError> {
    budget.charge_value(&v)?;
    Ok(v.into_owned())
}

fn owned(v: Value) -> Result<Out<'static>, PipelineError> {
    Ok(Some(Cow::Owned(v)))
}

fn eval_op<'a>(
    op: Op,
    args: &'a [Expr],
    env: Env<'a>,
    budget: &mut Budget,
) -> Result<Out<'a>, PipelineError> {
    let arg = |i: usize, budget: &mut Budget| -> Result<Out<'a>, PipelineError> {
        match args.get(i) {
            Some(e) => e.eval(env, budget),
            None => Ok(None),
        }
    };
    match op {
        Op::Add | Op::Multiply => {
            let mut add = AddState::new();
            let mut mul = MultiplyState::new();
            for e in args {
                let v = e.eval(env, budget)?;
                let v = v.as_deref();
                if nullish(v) {
                    return owned(Value::Null);
                }
                let Some(n) = Num::of(v) else {
                    return Err(PipelineError::Runtime(if op == Op::Add {
                        format!(
                            "$add only supports numeric or date types, not {}",
                            type_name(v)
                        )
                    } else {
                        format!(
                            "$multiply only supports numeric types, not {}",
                            type_name(v)
                        )
                    }));
                };
                if op == Op::Add {
                    add.add(n);
                } else {
                    mul.multiply(n);
                }
            }
            let result = if op == Op::Add {
                add.result()
            } else {
                mul.result()
            };
            owned(result.into_value(op.name())?)
        }
        Op::Subtract | Op::Divide | Op::Mod => {
            let lhs = arg(0, budget)?;
            let rhs = arg(1, budget)?;
            let f = match op {
                Op::Subtract => subtract,
                Op::Divide => divide,
                _ => modulo,
            };
            owned(f(lhs.as_deref(), rhs.as_deref())?)
        }
        Op::Concat => {
            let mut out = String::new();
            for e in args {
                let v = e.eval(env, budget)?;
                match v.as_deref() {
                    None | Some(Value::Null) => return owned(Value::Null),
                    Some(Value::String(s)) => {
                        budget.charge(s.len())?;
                        out.push_str(s);
                    }
                    other => {
                        return Err(PipelineError::Runtime(format!(
                            "$concat only supports strings, not {}",
                            type_name(other)
                        )));
                    }
                }
            }
            owned(Value::String(out))
        }
        Op::ToLower | Op::ToUpper => {
            let v = arg(0, budget)?;
            let text = match v.as_deref() {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => match Num::from_number(n) {
                    Num::Int(i) => i.to_string(),
                    Num::Float(f) => format_g(f),
                },
                other => {
                    return Err(PipelineError::Runtime(format!(
                        "{}: can't convert from BSON type {} to String",
                        op.name(),
                        type_name(other)
                    )));
                }
            };
            budget.charge(text.len())?;
            owned(Value::String(if op == Op::ToLower {
                text.to_ascii_lowercase()
            } else {
                text.to_ascii_uppercase()
            }))
        }
        Op::Cond => {
            let cond = arg(0, budget)?;
            if truthy(cond.as_deref()) {
                arg(1, budget)
            } else {
                arg(2, budget)
            }
        }
        Op::IfNull => {
            let last = args.len().saturating_sub(1);
            for e in &args[..last] {
                let v = e.eval(env, budget)?;
                if !nullish(v.as_deref()) {
                    return Ok(v);
                }
            }
            arg(last, budget)
        }
        Op::Size => {
            let v = arg(0, budget)?;
            match v.as_deref() {
                Some(Value::Array(items)) => owned(Value::from(items.len())),
                other => Err(PipelineError::Runtime(format!(
                    "The argument to $size must be an array. Type of argument was: {}",
                    type_name(other)
                ))),
            }
        }
        Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let a = arg(0, budget)?;
            let b = arg(1, budget)?;
            let o = compare_missing(a.as_deref(), b.as_deref());
            use std::cmp::Ordering::{Equal, Greater, Less};
            let r = match op {
                Op::Eq => o == Equal,
                Op::Ne => o != Equal,
                Op::Gt => o == Greater,
                Op::Gte => o != Less,
                Op::Lt => o == Less,
                _ => o != Greater,
            };
            owned(Value::Bool(r))
        }
        Op::And => {
            for e in args {
                if !truthy(e.eval(env, budget)?.as_deref()) {
                    return owned(Value::Bool(false));
                }
            }
            owned(Value::Bool(true))
        }
        Op::Or => {
            for e in args {
                if truthy(e.eval(env, budget)?.as_deref()) {
                    return owned(Value::Bool(true));
                }
            }
            owned(Value::Bool(false))
        }
        Op::Not => {
            let v = arg(0, budget)?;
            owned(Value::Bool(!truthy(v.as_deref())))
        }
        Op::In => {
            let needle = arg(0, budget)?;
            let hay = arg(1, budget)?;
            let Some(Value::Array(items)) = hay.as_deref() else {
                return Err(PipelineError::Runtime(format!(
                    "$in requires an array as a second argument, found: {}",
                    type_name(hay.as_deref())
                )));
            };
            let found = items
                .iter()
                .any(|x| compare_missing(needle.as_deref(), Some(x)) == std::cmp::Ordering::Equal);
            owned(Value::Bool(found))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Expr, PipelineError> {
        Expr::parse(&v, 0, &Scope::default())
    }

    fn eval(e: Value, doc: Value) -> Result<Option<Value>, PipelineError> {
        let e = parse(e)?;
        let mut b = Budget::new();
        Ok(e.eval(
            Env {
                root: &doc,
                vars: &[],
            },
            &mut b,
        )?
        .map(Cow::into_owned))
    }

    fn refused(v: Value, needle: &str) {
        let e = parse(v.clone()).expect_err("must be refused");
        assert!(
            e.to_string().contains(needle),
            "{v}: {e} should name {needle}"
        );
    }

    #[test]
    fn refusals_name_what_they_refuse() {
        refused(json!({"$function": {"body": "x"}}), "$function");
        refused(json!({"$accumulator": {}}), "$accumulator");
        refused(json!({"$where": "1"}), "$where");
        refused(json!({"$regexMatch": {}}), "$regexMatch");
        refused(json!({"$add": [1], "$sub": 1}), "exactly one field");
        refused(json!("$$NOW"), "$$NOW");
        refused(json!("$$REMOVE"), "$$REMOVE");
        refused(json!("$$x"), "undefined variable $$x");
        refused(json!("$$Foo"), "$$Foo");
        refused(json!("$"), "'$'");
        refused(json!("$a..b"), "empty segment");
        refused(json!("$a.$b"), "'$'");
        refused(json!({"a.b": 1}), "'.'");
        refused(
            json!({"$subtract": [1]}),
            "$subtract takes exactly 2 arguments, 1 given",
        );
        refused(
            json!({"$size": [1, 2]}),
            "$size takes exactly 1 argument, 2 given",
        );
        refused(json!({"$ifNull": ["$a"]}), "$ifNull takes at least 2");
        refused(json!({"$cond": {"if": true, "then": 1}}), "'else'");
        refused(
            json!({"$cond": {"if": true, "then": 1, "else": 2, "x": 0}}),
            "x",
        );
    }

    #[test]
    fn nesting_is_limited() {
        let mut deep = json!(1);
        for _ in 0..(MAX_EXPRESSION_DEPTH + 1) {
            deep = json!({"$add": [deep]});
        }
        refused(deep, "64");
        let mut ok = json!(1);
        for _ in 0..MAX_EXPRESSION_DEPTH {
            ok = json!({"$add": [ok]});
        }
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn missing_is_not_null() {
        let d = json!({"n": null});
        assert_eq!(
            eval(json!({"$eq": ["$x", null]}), d.clone()).expect("ok"),
            Some(json!(false))
        );
        assert_eq!(
            eval(json!({"$eq": ["$n", null]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(
            eval(json!({"$lt": ["$x", null]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(eval(json!("$x"), d.clone()).expect("ok"), None);
        assert_eq!(
            eval(json!(["$x", "$n"]), d.clone()).expect("ok"),
            Some(json!([null, null]))
        );
        assert_eq!(
            eval(json!({"a": "$x", "b": "$n"}), d.clone()).expect("ok"),
            Some(json!({"b": null}))
        );
        assert_eq!(
            eval(json!({"$in": ["$x", [null]]}), d.clone()).expect("ok"),
            Some(json!(false))
        );
        assert_eq!(
            eval(json!({"$ifNull": ["$x", "$n", "r"]}), d.clone()).expect("ok"),
            Some(json!("r"))
        );
        assert_eq!(eval(json!({"$ifNull": ["$x", "$y"]}), d).expect("ok"), None);
    }

    #[test]
    fn arithmetic_nulls_and_type_errors_in_order() {
        let d = json!({"s": "a", "i": 2});
        assert_eq!(
            eval(json!({"$add": ["$i", null, "$s"]}), d.clone()).expect("ok"),
            Some(json!(null))
        );
        assert_eq!(
            eval(json!({"$add": ["$i", "$s", null]}), d.clone())
                .expect_err("type")
                .to_string(),
            "$add only supports numeric or date types, not string"
        );
        assert_eq!(
            eval(json!({"$multiply": ["$i", [1]]}), d.clone())
                .expect_err("type")
                .to_string(),
            "$multiply only supports numeric types, not array"
        );
        assert_eq!(
            eval(json!({"$add": []}), d.clone()).expect("ok"),
            Some(json!(0))
        );
        assert_eq!(
            eval(json!({"$add": "$i"}), d.clone()).expect("ok"),
            Some(json!(2))
        );
        assert_eq!(
            eval(json!({"$size": "$x"}), d.clone())
                .expect_err("size")
                .to_string(),
            "The argument to $size must be an array. Type of argument was: missing"
        );
        assert_eq!(
            eval(json!({"$in": [1, "$s"]}), d.clone())
                .expect_err("in")
                .to_string(),
            "$in requires an array as a second argument, found: string"
        );
        assert_eq!(
            eval(json!({"$concat": ["$s", "$x"]}), d.clone()).expect("ok"),
            Some(json!(null))
        );
        assert_eq!(
            eval(json!({"$concat": ["$s", "$i"]}), d)
                .expect_err("concat")
                .to_string(),
            "$concat only supports strings, not int"
        );
    }

    #[test]
    fn comparisons_cross_types_in_bson_order() {
        let d = json!({});
        assert_eq!(
            eval(json!({"$gt": ["a", 1]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(
            eval(json!({"$lt": [[1], true]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(
            eval(json!({"$eq": [1, 1.0]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(
            eval(json!({"$ne": [[1, 2], [1, 2]]}), d).expect("ok"),
            Some(json!(false))
        );
    }

    #[test]
    fn logic_short_circuits_and_cond_picks_one_branch() {
        let d = json!({"z": 0});
        assert_eq!(
            eval(json!({"$and": [false, {"$divide": [1, 0]}]}), d.clone()).expect("ok"),
            Some(json!(false))
        );
        assert_eq!(
            eval(json!({"$or": ["$z", [], {"$divide": [1, 0]}]}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(
            eval(
                json!({"$cond": ["$z", {"$divide": [1, 0]}, "no"]}),
                d.clone()
            )
            .expect("ok"),
            Some(json!("no"))
        );
        assert_eq!(
            eval(json!({"$not": [[]]}), d.clone()).expect("ok"),
            Some(json!(false))
        );
        assert_eq!(
            eval(json!({"$and": []}), d.clone()).expect("ok"),
            Some(json!(true))
        );
        assert_eq!(eval(json!({"$or": []}), d).expect("ok"), Some(json!(false)));
    }

    #[test]
    fn case_mapping_is_ascii_and_coerces_numbers() {
        let d = json!({"s": "Ärger aB", "f": 2.5, "i": -3, "b": true});
        assert_eq!(
            eval(json!({"$toUpper": "$s"}), d.clone()).expect("ok"),
            Some(json!("ÄRGER AB"))
        );
        assert_eq!(
            eval(json!({"$toLower": "$s"}), d.clone()).expect("ok"),
            Some(json!("Ärger ab"))
        );
        assert_eq!(
            eval(json!({"$toLower": "$f"}), d.clone()).expect("ok"),
            Some(json!("2.5"))
        );
        assert_eq!(
            eval(json!({"$toLower": "$i"}), d.clone()).expect("ok"),
            Some(json!("-3"))
        );
        assert_eq!(
            eval(json!({"$toUpper": "$x"}), d.clone()).expect("ok"),
            Some(json!(""))
        );
        assert!(eval(json!({"$toUpper": "$b"}), d).is_err());
    }

    #[test]
    fn built_values_are_bounded() {
        let big = "x".repeat(1 << 20);
        let d = json!({"s": big});
        let many: Vec<Value> = (0..40).map(|_| json!("$s")).collect();
        let e = eval(Value::Array(many.clone()), d.clone()).expect_err("too big");
        assert!(e.to_string().contains("16 MiB"), "{e}");
        let e = eval(json!({"$concat": many}), d).expect_err("too big");
        assert!(e.to_string().contains("16 MiB"), "{e}");
    }

    #[test]
    fn variables_read_the_innermost_binding() {
        let scope = Scope {
            vars: vec!["v".into()],
        };
        let e = Expr::parse(&json!("$$v.a"), 0, &scope).expect("parse");
        let vars = vec![
            ("v".to_owned(), Some(json!({"a": 1}))),
            ("v".to_owned(), Some(json!({"a": 2}))),
        ];
        let doc = json!({});
        let mut b = Budget::new();
        let got = e
            .eval(
                Env {
                    root: &doc,
                    vars: &vars,
                },
                &mut b,
            )
            .expect("eval");
        assert_eq!(got.map(Cow::into_owned), Some(json!(2)));
        let root = Expr::parse(&json!("$$ROOT.a"), 0, &scope).expect("parse");
        let doc = json!({"a": [{"b": 1}]});
        let got = root
            .eval(
                Env {
                    root: &doc,
                    vars: &vars,
                },
                &mut b,
            )
            .expect("eval");
        assert_eq!(got.map(Cow::into_owned), Some(json!([{"b": 1}])));
    }
}
