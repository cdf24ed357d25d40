//! MongoDB's comparison order, over JSON values: type brackets first
//! (null < numbers < strings < objects < arrays < booleans, as in BSON's
//! order restricted to the types JSON has), then values within a bracket.
//! Integers and floats compare exactly as numbers; strings by code point;
//! objects field by field; arrays element by element.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// The type bracket of a value; values in different brackets never match a
/// comparison operator and sort by bracket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bracket {
    /// `null` (and, for sorting, a missing field).
    Null = 1,
    /// Integers and floats.
    Number = 2,
    /// Strings.
    String = 3,
    /// Objects.
    Object = 4,
    /// Arrays.
    Array = 5,
    /// `true` / `false`.
    Bool = 8,
}

/// The bracket of `v`.
pub fn bracket(v: &Value) -> Bracket {
    match v {
        Value::Null => Bracket::Null,
        Value::Number(_) => Bracket::Number,
        Value::String(_) => Bracket::String,
        Value::Object(_) => Bracket::Object,
        Value::Array(_) => Bracket::Array,
        Value::Bool(_) => Bracket::Bool,
    }
}

/// Compares two numbers exactly (an `i64`, `u64` and `f64` mix included).
pub fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => compare_int_float(x, b.as_f64().unwrap_or(0.0)),
        (None, Some(y)) => compare_int_float(y, a.as_f64().unwrap_or(0.0)).reverse(),
        (None, None) => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

/// `i` against `f` without the rounding of `i as f64`.
fn compare_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= 1.7e38 {
        return Ordering::Less;
    }
    if f <= -1.7e38 {
        return Ordering::Greater;
    }
    let floor = f.floor();
    // `floor` is integral and within i128 range here.
    let fi = floor as i128;
    match i.cmp(&fi) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

/// Total order of JSON values in MongoDB's sense.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    let (ba, bb) = (bracket(a), bracket(b));
    if ba != bb {
        return ba.cmp(&bb);
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = compare(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => compare_objects(x, y),
        _ => Ordering::Equal,
    }
}

fn compare_objects(x: &Map<String, Value>, y: &Map<String, Value>) -> Ordering {
    for ((ka, va), (kb, vb)) in x.iter().zip(y) {
        // BSON compares each field's type, then its name, then its value.
        let o = bracket(va)
            .cmp(&bracket(vb))
            .then_with(|| ka.cmp(kb))
            .then_with(|| compare(va, vb));
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

/// Equality in MongoDB's sense (numbers by value: `1 == 1.0`).
pub fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_order_across_types() {
        let ordered = [
            json!(null),
            json!(-5),
            json!(2.5),
            json!("a"),
            json!({}),
            json!([]),
            json!(false),
            json!(true),
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(&w[0], &w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn numbers_compare_exactly_across_kinds() {
        assert!(equal(&json!(1), &json!(1.0)));
        assert_eq!(
            compare(&json!(9007199254740993_i64), &json!(9007199254740992.0)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&json!(u64::MAX), &json!(i64::MAX)),
            Ordering::Greater
        );
        assert_eq!(compare(&json!(-1), &json!(-0.5)), Ordering::Less);
        assert_eq!(compare(&json!(2), &json!(1.5)), Ordering::Greater);
        assert_eq!(compare(&json!(1e300), &json!(u64::MAX)), Ordering::Greater);
    }

    #[test]
    fn strings_by_code_point_and_arrays_elementwise() {
        assert_eq!(compare(&json!("Z"), &json!("a")), Ordering::Less);
        assert_eq!(compare(&json!("é"), &json!("z")), Ordering::Greater);
        assert_eq!(compare(&json!([1, 2]), &json!([1, 3])), Ordering::Less);
        assert_eq!(compare(&json!([1]), &json!([1, 0])), Ordering::Less);
        assert_eq!(
            compare(&json!({"a": 1}), &json!({"a": 1, "b": 0})),
            Ordering::Less
        );
        assert_eq!(compare(&json!({"a": 1}), &json!({"b": 0})), Ordering::Less);
    }
}
