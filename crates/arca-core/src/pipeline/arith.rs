//! Arithmetic with MongoDB's numeric rules, over JSON numbers.
//!
//! JSON integers are 64-bit (`long`; the MongoDB engine stores those within
//! 32 bits as `int`, which behaves the same here: int arithmetic widens to
//! long before it could overflow), JSON floats are `double`. As in MongoDB:
//!
//! - `$add`, `$subtract`, `$multiply` keep integers integral while the
//!   64-bit result fits, and fall back to doubles when it would overflow
//!   (no wrap-around, no error); any double operand makes the result a
//!   double. `$add` and `$multiply` accumulate a double total beside the
//!   integer one, left to right, exactly as the server does.
//! - `$divide` always gives a double; division by zero is an error.
//! - `$mod` of integers is an integer with the dividend's sign (the
//!   overflowing `MIN % -1` is 0, as MongoDB's `safeMod`); with a double it
//!   is C's `fmod`; by zero it is an error.
//! - `$sum` and `$avg` accumulate with MongoDB's double-double summation
//!   (2Sum/Fast2Sum, about 106 bits), so a sum of integers is exact and
//!   stays an integer whenever the total fits 64 bits, even if a partial
//!   total did not; `$avg` is the double total divided by the count. An
//!   integer is added as the MongoDB engine stores it (within 32 bits as
//!   one double, else split in two), which can matter for the last bit of
//!   a sum that mixes integers and doubles; an integer computed on the
//!   server (an `$add` with a 64-bit operand) may be split where the
//!   evaluator does not, a difference of at most that last bit.
//!
//! A result that is not a finite double (an overflow to infinity) cannot be
//! written as JSON: it is a runtime error here, where MongoDB would return
//! `Infinity` (the one deliberate difference).
//!
//! An integer above `i64::MAX` (which serde_json can hold, but the contract
//! refuses in documents) is treated as a double.

use serde_json::{Number, Value};

use super::PipelineError;
use super::values::type_name;

/// A number as the arithmetic sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
}

impl Num {
    /// The number in `v`, if it is one.
    pub(crate) fn of(v: Option<&Value>) -> Option<Num> {
        match v {
            Some(Value::Number(n)) => Some(Num::from_number(n)),
            _ => None,
        }
    }

    pub(crate) fn from_number(n: &Number) -> Num {
        match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64().unwrap_or(0.0)),
        }
    }

    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// The JSON value, or a runtime error for a non-finite double.
    pub(crate) fn into_value(self, op: &str) -> Result<Value, PipelineError> {
        match self {
            Num::Int(i) => Ok(Value::from(i)),
            Num::Float(f) => Number::from_f64(f).map(Value::Number).ok_or_else(|| {
                PipelineError::Runtime(format!(
                    "{op}: the result is not a finite number ({f}), which JSON cannot hold"
                ))
            }),
        }
    }
}

/// The running state of `$add` (MongoDB's `AddState` without dates).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddState {
    long_total: i64,
    double_total: f64,
    is_double: bool,
}

impl AddState {
    pub(crate) fn new() -> Self {
        Self {
            long_total: 0,
            double_total: 0.0,
            is_double: false,
        }
    }

    pub(crate) fn add(&mut self, n: Num) {
        match (self.is_double, n) {
            (false, Num::Int(i)) => match self.long_total.checked_add(i) {
                Some(t) => self.long_total = t,
                None => {
                    self.is_double = true;
                    self.double_total = self.long_total as f64 + i as f64;
                }
            },
            (false, Num::Float(f)) => {
                self.is_double = true;
                self.double_total = self.long_total as f64 + f;
            }
            (true, n) => self.double_total += n.as_f64(),
        }
    }

    pub(crate) fn result(self) -> Num {
        if self.is_double {
            Num::Float(self.double_total)
        } else {
            Num::Int(self.long_total)
        }
    }
}

/// The running state of `$multiply` (MongoDB's `MultiplyState` without
/// decimals): the double product is kept from the start, the integer one
/// until a double arrives or it would overflow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MultiplyState {
    long_product: i64,
    double_product: f64,
    is_double: bool,
}

impl MultiplyState {
    pub(crate) fn new() -> Self {
        Self {
            long_product: 1,
            double_product: 1.0,
            is_double: false,
        }
    }

    pub(crate) fn multiply(&mut self, n: Num) {
        self.double_product *= n.as_f64();
        if self.is_double {
            return;
        }
        match n {
            Num::Int(i) => match self.long_product.checked_mul(i) {
                Some(p) => self.long_product = p,
                None => self.is_double = true,
            },
            Num::Float(_) => self.is_double = true,
        }
    }

    pub(crate) fn result(self) -> Num {
        if self.is_double {
            Num::Float(self.double_product)
        } else {
            Num::Int(self.long_product)
        }
    }
}

/// `$subtract` of two values (either may be null or missing).
pub(crate) fn subtract(lhs: Option<&Value>, rhs: Option<&Value>) -> Result<Value, PipelineError> {
    match (Num::of(lhs), Num::of(rhs)) {
        (Some(Num::Int(a)), Some(Num::Int(b))) => match a.checked_sub(b) {
            Some(d) => Ok(Value::from(d)),
            None => Num::Float(a as f64 - b as f64).into_value("$subtract"),
        },
        (Some(a), Some(b)) => Num::Float(a.as_f64() - b.as_f64()).into_value("$subtract"),
        _ if super::values::nullish(lhs) || super::values::nullish(rhs) => Ok(Value::Null),
        _ => Err(PipelineError::Runtime(format!(
            "can't $subtract {} from {}",
            type_name(rhs),
            type_name(lhs)
        ))),
    }
}

/// `$divide` of two values.
pub(crate) fn divide(lhs: Option<&Value>, rhs: Option<&Value>) -> Result<Value, PipelineError> {
    match (Num::of(lhs), Num::of(rhs)) {
        (Some(a), Some(b)) => {
            let denominator = b.as_f64();
            if denominator == 0.0 {
                return Err(PipelineError::Runtime("can't $divide by zero".into()));
            }
            Num::Float(a.as_f64() / denominator).into_value("$divide")
        }
        _ if super::values::nullish(lhs) || super::values::nullish(rhs) => Ok(Value::Null),
        _ => Err(PipelineError::Runtime(format!(
            "$divide only supports numeric types, not {} and {}",
            type_name(lhs),
            type_name(rhs)
        ))),
    }
}

/// `$mod` of two values.
pub(crate) fn modulo(lhs: Option<&Value>, rhs: Option<&Value>) -> Result<Value, PipelineError> {
    match (Num::of(lhs), Num::of(rhs)) {
        (Some(a), Some(b)) => {
            if b.as_f64() == 0.0 {
                return Err(PipelineError::Runtime("can't $mod by zero".into()));
            }
            match (a, b) {
                // `checked_rem` fails only for MIN % -1, whose remainder is 0.
                (Num::Int(x), Num::Int(y)) => Ok(Value::from(x.checked_rem(y).unwrap_or(0))),
                _ => Num::Float(a.as_f64() % b.as_f64()).into_value("$mod"),
            }
        }
        _ if super::values::nullish(lhs) || super::values::nullish(rhs) => Ok(Value::Null),
        _ => Err(PipelineError::Runtime(format!(
            "$mod only supports numeric types, not {} and {}",
            type_name(lhs),
            type_name(rhs)
        ))),
    }
}

/// Double-double summation (MongoDB's `DoubleDoubleSummation`): an
/// unevaluated sum `sum + addend` kept with the 2Sum and Fast2Sum
/// error-free transformations (Dekker 1971; Møller 1965; Knuth, TAOCP 2),
/// so sums of 64-bit integers are exact up to about 2^106.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DoubleDouble {
    sum: f64,
    addend: f64,
    /// A plain running sum, the answer when the compensated one is NaN
    /// (infinities turning into NaN through the compensation).
    special: f64,
}

/// `(a + b, error)` assuming `|b| <= |a|`.
fn fast_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let z = s - a;
    (s, b - z)
}

/// `(a + b, error)` for any `a`, `b`.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let a_prime = s - b;
    let b_prime = s - a_prime;
    (s, (a - a_prime) + (b - b_prime))
}

impl DoubleDouble {
    pub(crate) fn add_double(&mut self, x: f64) {
        self.special += x;
        let (x, addend) = fast_two_sum(x, self.addend);
        self.addend = addend;
        let (sum, x) = two_sum(self.sum, x);
        self.sum = sum;
        self.addend += x;
    }

    /// A 64-bit integer, split into two doubles that hold it exactly.
    pub(crate) fn add_long(&mut self, x: i64) {
        let high = x / (1_i64 << 32) * (1_i64 << 32);
        let low = x - high;
        self.add_double(low as f64);
        self.add_double(high as f64);
    }

    /// A JSON integer as the MongoDB engine stores it: within 32 bits an
    /// `int` (added as one double), else a `long`.
    pub(crate) fn add_integer(&mut self, x: i64) {
        if i32::try_from(x).is_ok() {
            self.add_double(x as f64);
        } else {
            self.add_long(x);
        }
    }

    /// The double nearest the sum.
    pub(crate) fn double(&self) -> f64 {
        if self.sum.is_nan() {
            self.special
        } else {
            self.sum
        }
    }

    /// The sum as a 64-bit integer (rounded to nearest, halves away from
    /// zero), when it is in range.
    pub(crate) fn long(&self) -> Option<i64> {
        const MAX: f64 = i64::MAX as f64; // 2^63
        const MIN: f64 = i64::MIN as f64; // -2^63
        let fits = if self.sum > MIN && self.sum < MAX {
            true
        } else if self.sum == MAX {
            self.addend < -0.5
        } else if self.sum == MIN {
            self.addend >= -0.5
        } else {
            false
        };
        if !fits {
            return None;
        }
        if self.sum == MAX {
            // sum + addend = 2^63 + addend, with addend < -0.5.
            let a = self.addend.round() as i64;
            return a.checked_sub(i64::MIN);
        }
        let base = self.sum.round() as i64;
        let rest = ((self.sum - base as f64) + self.addend).round() as i64;
        base.checked_add(rest)
    }
}

/// `$sum` in `$group`: numbers are added, everything else (strings, null,
/// missing, arrays, objects, booleans) is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SumState {
    total: DoubleDouble,
    any_double: bool,
    count: u64,
}

impl SumState {
    pub(crate) fn add(&mut self, v: Option<&Value>) {
        match Num::of(v) {
            Some(Num::Int(i)) => {
                self.total.add_integer(i);
                self.count += 1;
            }
            Some(Num::Float(f)) => {
                self.total.add_double(f);
                self.any_double = true;
                self.count += 1;
            }
            None => {}
        }
    }

    /// The sum: an integer when only integers were added and the total
    /// fits 64 bits, else a double; `0` when nothing numeric was added.
    pub(crate) fn sum(&self) -> Result<Value, PipelineError> {
        if !self.any_double
            && let Some(i) = self.total.long()
        {
            return Ok(Value::from(i));
        }
        Num::Float(self.total.double()).into_value("$sum")
    }

    /// The average of the numbers added (always a double), or null when
    /// there were none.
    pub(crate) fn avg(&self) -> Result<Value, PipelineError> {
        if self.count == 0 {
            return Ok(Value::Null);
        }
        Num::Float(self.total.double() / self.count as f64).into_value("$avg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add_all(values: &[Value]) -> Num {
        let mut s = AddState::new();
        for v in values {
            s.add(Num::of(Some(v)).expect("number"));
        }
        s.result()
    }

    #[test]
    fn add_keeps_integers_until_overflow() {
        assert_eq!(add_all(&[json!(1), json!(2)]), Num::Int(3));
        assert_eq!(add_all(&[json!(1), json!(2.5)]), Num::Float(3.5));
        assert_eq!(
            add_all(&[json!(i64::MAX), json!(1)]),
            Num::Float(i64::MAX as f64 + 1.0)
        );
        // After the overflow the total stays a double.
        assert_eq!(
            add_all(&[json!(i64::MAX), json!(1), json!(-1)]),
            Num::Float(9223372036854775807.0)
        );
        assert_eq!(add_all(&[json!(0.1), json!(0.2)]), Num::Float(0.1 + 0.2));
    }

    #[test]
    fn multiply_subtract_divide_mod() {
        let mut m = MultiplyState::new();
        m.multiply(Num::Int(1 << 62));
        m.multiply(Num::Int(4));
        assert_eq!(m.result(), Num::Float(2f64.powi(64)));
        assert_eq!(
            subtract(Some(&json!(i64::MIN)), Some(&json!(1))).expect("ok"),
            json!(i64::MIN as f64 - 1.0)
        );
        assert_eq!(
            subtract(Some(&json!(5)), Some(&json!(7))).expect("ok"),
            json!(-2)
        );
        assert_eq!(subtract(None, Some(&json!(7))).expect("ok"), json!(null));
        assert_eq!(
            subtract(Some(&json!("a")), Some(&json!(1)))
                .expect_err("error")
                .to_string(),
            "can't $subtract int from string"
        );
        assert_eq!(
            divide(Some(&json!(1)), Some(&json!(0.0)))
                .expect_err("zero")
                .to_string(),
            "can't $divide by zero"
        );
        assert_eq!(
            divide(Some(&json!(6)), Some(&json!(3))).expect("ok"),
            json!(2.0)
        );
        assert_eq!(
            modulo(Some(&json!(-7)), Some(&json!(3))).expect("ok"),
            json!(-1)
        );
        assert_eq!(
            modulo(Some(&json!(i64::MIN)), Some(&json!(-1))).expect("ok"),
            json!(0)
        );
        assert_eq!(
            modulo(Some(&json!(7.5)), Some(&json!(2))).expect("ok"),
            json!(1.5)
        );
        assert!(modulo(Some(&json!(1)), Some(&json!(0))).is_err());
        assert!(
            divide(Some(&json!(1e308)), Some(&json!(1e-308)))
                .expect_err("inf")
                .to_string()
                .contains("finite")
        );
    }

    #[test]
    fn sums_are_exact_and_integral_when_they_fit() {
        let mut s = SumState::default();
        for v in [json!(i64::MAX), json!(1), json!(-2)] {
            s.add(Some(&v));
        }
        assert_eq!(s.sum().expect("sum"), json!(i64::MAX - 1));
        let mut s = SumState::default();
        for v in [json!(i64::MAX), json!(i64::MAX)] {
            s.add(Some(&v));
        }
        assert_eq!(s.sum().expect("sum"), json!(1.8446744073709552e19));
        let mut s = SumState::default();
        for v in [json!(0.1), json!(0.2), json!(0.3)] {
            s.add(Some(&v));
        }
        // The naive sum would be 0.6000000000000001.
        assert_eq!(s.sum().expect("sum"), json!(0.6));
        assert_eq!(s.avg().expect("avg"), json!(0.19999999999999998));
        let mut s = SumState::default();
        s.add(Some(&json!("3")));
        s.add(None);
        assert_eq!(s.sum().expect("sum"), json!(0));
        assert_eq!(s.avg().expect("avg"), json!(null));
        let mut s = SumState::default();
        s.add(Some(&json!(i64::MIN)));
        assert_eq!(s.sum().expect("sum"), json!(i64::MIN));
    }
}
