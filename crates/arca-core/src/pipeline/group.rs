//! `$group`: its specification (an `_id` expression of any shape and named
//! accumulators of the contract's list) and its running state.
//!
//! Semantics (MongoDB's manual for `$group` and each accumulator):
//!
//! - Documents group by the value of `_id`, compared as MongoDB compares
//!   values (`1` and `1.0` are one group; an object key is field order
//!   sensitive); a missing `_id` value groups under `null`. The output
//!   `_id` is the first value seen for the group. Output documents are
//!   `{_id, <accumulators in the order written>}`; groups come out in the
//!   order they were first seen (MongoDB leaves the order unspecified).
//! - `$sum` adds numbers and ignores everything else (an array too); with
//!   none it is `0`. `$avg` is a double, or null without numbers.
//! - `$min`/`$max` ignore null and missing, compare the rest in BSON order
//!   (arrays as whole values), and are null when nothing is left; of equal
//!   values the first is kept.
//! - `$first`/`$last` take the first/last document's value, null when it
//!   is missing there.
//! - `$push` collects values in order, leaving out missing ones (null is
//!   kept); `$addToSet` keeps the first of each distinct value, in the
//!   order first seen (MongoDB leaves the order unspecified).
//! - `$count` (takes `{}`) counts documents.
//!
//! An accumulator takes one expression; an array operand is refused, as
//! MongoDB does ("the $sum accumulator is a unary operator").

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::PipelineError;
use super::arith::SumState;
use super::expr::{Env, Expr, Scope, check_field_name};
use super::values::{Budget, equality_key, measure, nullish};
use crate::query::order;

/// An accumulator of the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccOp {
    /// `$sum`.
    Sum,
    /// `$avg`.
    Avg,
    /// `$min`.
    Min,
    /// `$max`.
    Max,
    /// `$first`.
    First,
    /// `$last`.
    Last,
    /// `$push`.
    Push,
    /// `$addToSet`.
    AddToSet,
    /// `$count`.
    Count,
}

impl AccOp {
    /// The accumulator's name.
    pub fn name(self) -> &'static str {
        match self {
            AccOp::Sum => "$sum",
            AccOp::Avg => "$avg",
            AccOp::Min => "$min",
            AccOp::Max => "$max",
            AccOp::First => "$first",
            AccOp::Last => "$last",
            AccOp::Push => "$push",
            AccOp::AddToSet => "$addToSet",
            AccOp::Count => "$count",
        }
    }
}

/// One output field of `$group`.
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulator {
    /// The output field name.
    pub field: String,
    /// The accumulator.
    pub op: AccOp,
    /// Its operand (`$count`: the literal `1`).
    pub arg: Expr,
}

/// A parsed `$group`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The grouping key.
    pub id: Expr,
    /// The accumulators, in the order written.
    pub accumulators: Vec<Accumulator>,
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, PipelineError> {
    Err(PipelineError::Invalid(msg.into()))
}

const ALLOWED_ACCUMULATORS: &str = "$sum $avg $min $max $first $last $push $addToSet $count";

/// Parses a `$group` specification.
pub(crate) fn parse_group(spec: &Value, scope: &Scope) -> Result<Group, PipelineError> {
    let Some(obj) = spec.as_object() else {
        return invalid("$group takes an object");
    };
    let Some(id) = obj.get("_id") else {
        return invalid("a $group specification must include an _id");
    };
    let id = Expr::parse(id, 0, scope)?;
    let mut accumulators = Vec::new();
    for (field, v) in obj {
        if field == "_id" {
            continue;
        }
        check_field_name(field).map_err(|e| PipelineError::Invalid(format!("$group: {e}")))?;
        let acc = v.as_object().filter(|m| m.len() == 1).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "$group: the field '{field}' must be an accumulator object, such as {{\"$sum\": \"$x\"}}"
            ))
        })?;
        let Some((name, arg)) = acc.iter().next() else {
            return invalid(format!("$group: the field '{field}' has no accumulator"));
        };
        let op = match name.as_str() {
            "$sum" => AccOp::Sum,
            "$avg" => AccOp::Avg,
            "$min" => AccOp::Min,
            "$max" => AccOp::Max,
            "$first" => AccOp::First,
            "$last" => AccOp::Last,
            "$push" => AccOp::Push,
            "$addToSet" => AccOp::AddToSet,
            "$count" => AccOp::Count,
            "$accumulator" | "$function" | "$where" => {
                return invalid(format!("accumulator {name} runs code and is not allowed"));
            }
            other => {
                return invalid(format!(
                    "unknown or unsupported accumulator {other} (supported: {ALLOWED_ACCUMULATORS})"
                ));
            }
        };
        let arg = if op == AccOp::Count {
            if !arg.as_object().is_some_and(Map::is_empty) {
                return invalid("$count takes no arguments, i.e. $count: {}");
            }
            Expr::Literal(Value::from(1))
        } else {
            if arg.is_array() {
                return invalid(format!("the {name} accumulator is a unary operator"));
            }
            Expr::parse(arg, 1, scope)?
        };
        accumulators.push(Accumulator {
            field: field.clone(),
            op,
            arg,
        });
    }
    Ok(Group { id, accumulators })
}

/// The running value of one accumulator in one group.
#[derive(Debug)]
enum AccState {
    Sum(SumState),
    Avg(SumState),
    Extreme(Option<Value>),
    First(Option<Value>),
    Last(Value),
    Push(Vec<Value>),
    Set(Vec<Value>, HashSet<String>),
    Count(u64),
}

#[derive(Debug)]
struct GroupState {
    id: Value,
    accs: Vec<AccState>,
}

/// `$group` while documents arrive: the groups so far and the bytes they
/// hold (keys, `_id` values and the accumulators' values).
#[derive(Debug, Default)]
pub(crate) struct GroupRun {
    by_key: HashMap<String, usize>,
    groups: Vec<GroupState>,
    held: u64,
}

impl GroupRun {
    /// Bytes held.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    /// Adds one document.
    pub(crate) fn add(
        &mut self,
        spec: &Group,
        env: Env<'_>,
        budget: &mut Budget,
    ) -> Result<(), PipelineError> {
        let id = spec
            .id
            .eval(env, budget)?
            .map_or(Value::Null, |v| v.into_owned());
        let key = equality_key(&id);
        let index = match self.by_key.get(&key) {
            Some(i) => *i,
            None => {
                self.held += (key.len() + measure(&id).bytes + 64) as u64;
                let accs = spec
                    .accumulators
                    .iter()
                    .map(|a| match a.op {
                        AccOp::Sum => AccState::Sum(SumState::default()),
                        AccOp::Avg => AccState::Avg(SumState::default()),
                        AccOp::Min | AccOp::Max => AccState::Extreme(None),
                        AccOp::First => AccState::First(None),
                        AccOp::Last => AccState::Last(Value::Null),
                        AccOp::Push => AccState::Push(Vec::new()),
                        AccOp::AddToSet => AccState::Set(Vec::new(), HashSet::new()),
                        AccOp::Count => AccState::Count(0),
                    })
                    .collect();
                self.groups.push(GroupState { id, accs });
                self.by_key.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let Some(group) = self.groups.get_mut(index) else {
            return Ok(());
        };
        for (a, state) in spec.accumulators.iter().zip(group.accs.iter_mut()) {
            if let AccState::Count(n) = state {
                *n += 1;
                continue;
            }
            // Evaluated for every document (an error there counts even
            // where the value is not kept, as on the server).
            let v = a.arg.eval(env, budget)?;
            let v = v.as_deref();
            match state {
                AccState::Sum(s) | AccState::Avg(s) => s.add(v),
                AccState::Extreme(best) => {
                    let Some(v) = v.filter(|v| !nullish(Some(v))) else {
                        continue;
                    };
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let o = order::compare(v, b);
                            if a.op == AccOp::Min {
                                o == std::cmp::Ordering::Less
                            } else {
                                o == std::cmp::Ordering::Greater
                            }
                        }
                    };
                    if better {
                        let new = measure(v).bytes as u64;
                        let old = best.as_ref().map_or(0, |b| measure(b).bytes as u64);
                        self.held = self.held.saturating_sub(old) + new;
                        *best = Some(v.clone());
                    }
                }
                AccState::First(first) => {
                    if first.is_some() {
                        continue;
                    }
                    let v = v.cloned().unwrap_or(Value::Null);
                    self.held += measure(&v).bytes as u64;
                    *first = Some(v);
                }
                AccState::Last(last) => {
                    let v = v.cloned().unwrap_or(Value::Null);
                    let old = measure(last).bytes as u64;
                    self.held = self.held.saturating_sub(old) + measure(&v).bytes as u64;
                    *last = v;
                }
                AccState::Push(items) => {
                    if let Some(v) = v {
                        self.held += measure(v).bytes as u64;
                        items.push(v.clone());
                    }
                }
                AccState::Set(items, seen) => {
                    if let Some(v) = v {
                        let k = equality_key(v);
                        if !seen.contains(&k) {
                            self.held += (measure(v).bytes + k.len() + 16) as u64;
                            seen.insert(k);
                            items.push(v.clone());
                        }
                    }
                }
                AccState::Count(_) => {}
            }
        }
        Ok(())
    }

    /// The output documents, in the order the groups were first seen.
    pub(crate) fn outputs(
        self,
        spec: &Group,
    ) -> impl Iterator<Item = Result<Value, PipelineError>> + '_ {
        self.groups.into_iter().map(move |g| {
            let mut out = Map::with_capacity(spec.accumulators.len() + 1);
            out.insert("_id".into(), g.id);
            for (a, state) in spec.accumulators.iter().zip(g.accs) {
                let v = match state {
                    AccState::Sum(s) => s.sum()?,
                    AccState::Avg(s) => s.avg()?,
                    AccState::Extreme(v) | AccState::First(v) => v.unwrap_or(Value::Null),
                    AccState::Last(v) => v,
                    AccState::Push(items) | AccState::Set(items, _) => Value::Array(items),
                    AccState::Count(n) => Value::from(n),
                };
                out.insert(a.field.clone(), v);
            }
            Ok(Value::Object(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(spec: Value, docs: &[Value]) -> Vec<Value> {
        let g = parse_group(&spec, &Scope::default()).expect("group");
        let mut r = GroupRun::default();
        for d in docs {
            let mut b = Budget::new();
            r.add(&g, Env { root: d, vars: &[] }, &mut b).expect("add");
        }
        r.outputs(&g).collect::<Result<_, _>>().expect("outputs")
    }

    #[test]
    fn refusals() {
        for (spec, needle) in [
            (json!({"n": {"$sum": 1}}), "_id"),
            (
                json!({"_id": null, "n": {"$accumulator": {}}}),
                "$accumulator",
            ),
            (json!({"_id": null, "n": {"$median": "$a"}}), "$median"),
            (json!({"_id": null, "n": {"$sum": ["$a", "$b"]}}), "unary"),
            (json!({"_id": null, "n": {"$count": 1}}), "$count"),
            (json!({"_id": null, "n": 1}), "accumulator object"),
            (json!({"_id": null, "a.b": {"$sum": 1}}), "'.'"),
            (
                json!({"_id": null, "n": {"$sum": 1, "$avg": 1}}),
                "accumulator object",
            ),
        ] {
            let e = parse_group(&spec, &Scope::default()).expect_err("refused");
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn groups_by_value_with_missing_as_null() {
        let docs = [
            json!({"k": 1, "v": 2}),
            json!({"k": 1.0, "v": 3.5}),
            json!({"v": "x"}),
            json!({"k": null}),
        ];
        let out = run(
            json!({"_id": "$k", "s": {"$sum": "$v"}, "a": {"$avg": "$v"}, "n": {"$count": {}}, "f": {"$first": "$v"}, "p": {"$push": "$v"}}),
            &docs,
        );
        assert_eq!(
            out,
            vec![
                json!({"_id": 1, "s": 5.5, "a": 2.75, "n": 2, "f": 2, "p": [2, 3.5]}),
                json!({"_id": null, "s": 0, "a": null, "n": 2, "f": "x", "p": ["x"]}),
            ]
        );
    }

    #[test]
    fn min_max_skip_nulls_and_sets_keep_first_seen() {
        let docs = [
            json!({"v": null}),
            json!({"v": 3}),
            json!({"v": "a"}),
            json!({"v": 3.0}),
            json!({}),
            json!({"v": [1]}),
        ];
        let out = run(
            json!({"_id": null, "lo": {"$min": "$v"}, "hi": {"$max": "$v"}, "set": {"$addToSet": "$v"}, "l": {"$last": "$v"}}),
            &docs,
        );
        assert_eq!(
            out,
            vec![json!({"_id": null, "lo": 3, "hi": [1], "set": [null, 3, "a", [1]], "l": [1]})]
        );
        let out = run(
            json!({"_id": {"a": "$nope"}, "lo": {"$min": "$nope"}, "l": {"$last": "$nope"}}),
            &[json!({})],
        );
        assert_eq!(out, vec![json!({"_id": {}, "lo": null, "l": null})]);
    }
}
