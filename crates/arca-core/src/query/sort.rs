//! Sort orders: `sort=-age,name` parsed into fields and directions, sort
//! keys with MongoDB's array rule (an array sorts by its smallest element
//! ascending and its largest descending), and ties broken by `_id`. The
//! sort-key rule here is also the pipeline's `$sort`'s (`sort_key`).

use std::cmp::Ordering;

use serde_json::Value;

use super::eval::{DocumentRoot, Root};
use super::filter::{FieldPath, FilterError};
use super::order::compare;

/// Most fields in a sort.
pub const MAX_SORT_FIELDS: usize = 8;

/// A parsed sort order (always completed by `_id` ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    fields: Vec<(FieldPath, bool)>,
}

/// The values a document sorts by, one per sort field.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey(pub Vec<Value>);

impl Sort {
    /// `_id` ascending.
    pub fn by_id() -> Self {
        Self { fields: Vec::new() }
    }

    /// Adds the top-level fields the sort reads to `out`.
    pub fn top_level_fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        for (path, _) in &self.fields {
            path.add_top_level(out);
        }
    }

    /// Parses `-age,name` (`-` descending, `+` or nothing ascending).
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let mut fields = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(FilterError("sort: empty field name".into()));
            }
            let (desc, name) = match part.as_bytes()[0] {
                b'-' => (true, &part[1..]),
                b'+' => (false, &part[1..]),
                _ => (false, part),
            };
            let path = FieldPath::parse(name).map_err(|e| FilterError(format!("sort: {}", e.0)))?;
            if fields.iter().any(|(p, _): &(FieldPath, bool)| p == &path) {
                return Err(FilterError(format!("sort: field \"{name}\" appears twice")));
            }
            fields.push((path, desc));
        }
        if fields.len() > MAX_SORT_FIELDS {
            return Err(FilterError(format!(
                "sort takes at most {MAX_SORT_FIELDS} fields"
            )));
        }
        // A trailing `_id` ascending is what the tie-break does anyway.
        if fields
            .last()
            .is_some_and(|(p, d)| p.as_str() == "_id" && !d)
        {
            fields.pop();
        }
        Ok(Self { fields })
    }

    /// Whether this is the plain `_id` ascending order.
    pub fn is_by_id(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields and whether each is descending.
    pub fn fields(&self) -> &[(FieldPath, bool)] {
        &self.fields
    }

    /// A canonical text of the order (for cursor fingerprints).
    pub fn canonical(&self) -> String {
        self.fields
            .iter()
            .map(|(p, d)| format!("{}{}", if *d { "-" } else { "+" }, p.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The sort key of `doc`.
    pub fn key(&self, doc: &Value) -> SortKey {
        self.key_of(doc)
    }

    /// The sort key of a stored document (as `key` of its `to_json()`).
    pub fn key_document(&self, doc: &crate::Document) -> SortKey {
        self.key_of(&DocumentRoot::new(doc))
    }

    /// MongoDB's sort key (the same rule as the pipeline's `$sort`): the
    /// smallest (ascending) or largest (descending) value the path offers,
    /// an array offering its elements and a missing field `null`; an empty
    /// array sorts below `null` and is kept as the key `[]`, which
    /// `compare` places below every value.
    fn key_of<R: Root + ?Sized>(&self, doc: &R) -> SortKey {
        SortKey(
            self.fields
                .iter()
                .map(|(path, desc)| {
                    sort_key_root(doc, path.segments(), *desc)
                        .unwrap_or_else(|| Value::Array(Vec::new()))
                })
                .collect(),
        )
    }

    /// Orders two documents by key, then by `_id` ascending.
    /// (The key `[]`, an empty array, is below every other.)
    pub fn compare(&self, a: &SortKey, a_id: &str, b: &SortKey, b_id: &str) -> Ordering {
        for (i, (_, desc)) in self.fields.iter().enumerate() {
            let (x, y) = (
                a.0.get(i).unwrap_or(&Value::Null),
                b.0.get(i).unwrap_or(&Value::Null),
            );
            let o = compare_keys(x, y);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a_id.cmp(b_id)
    }
}

/// Two keys of one sort field: an empty array (`[]`) below everything,
/// else the cross-type order.
fn compare_keys(x: &Value, y: &Value) -> Ordering {
    let empty = |v: &Value| matches!(v, Value::Array(a) if a.is_empty());
    match (empty(x), empty(y)) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => compare(x, y),
    }
}

static NULL: Value = Value::Null;

/// The value `doc` sorts by on one key: `None` for an empty array (below
/// null), else the smallest (ascending) or largest (descending) value the
/// path offers.
pub(crate) fn sort_key(doc: &Value, segs: &[String], desc: bool) -> Option<Value> {
    let mut offered: Vec<Option<&Value>> = Vec::new();
    sort_values(doc, segs, &mut offered);
    best_sort_value(offered, desc)
}

/// `sort_key` of a filter root (a stored document seen as one), for the
/// listings' `Sort`: the one rule of MongoDB's sort keys for both.
fn sort_key_root<R: Root + ?Sized>(root: &R, segs: &[String], desc: bool) -> Option<Value> {
    let mut offered: Vec<Option<&Value>> = Vec::new();
    match segs.split_first() {
        Some((first, rest)) => match root.field(first) {
            Some(v) => sort_values(v, rest, &mut offered),
            None => offered.push(Some(&NULL)),
        },
        None => offered.push(Some(&NULL)),
    }
    best_sort_value(offered, desc)
}

fn best_sort_value(offered: Vec<Option<&Value>>, desc: bool) -> Option<Value> {
    let mut best: Option<Option<&Value>> = None;
    for v in offered {
        let better = match best {
            None => true,
            Some(b) => {
                let o = compare_sort(v, b);
                if desc {
                    o == Ordering::Greater
                } else {
                    o == Ordering::Less
                }
            }
        };
        if better {
            best = Some(v);
        }
    }
    best.unwrap_or(Some(&NULL)).cloned()
}

fn sort_values<'a>(v: &'a Value, segs: &[String], out: &mut Vec<Option<&'a Value>>) {
    let Some((seg, rest)) = segs.split_first() else {
        match v {
            Value::Array(items) if items.is_empty() => out.push(None),
            Value::Array(items) => out.extend(items.iter().map(Some)),
            other => out.push(Some(other)),
        }
        return;
    };
    match v {
        Value::Object(m) => match m.get(seg) {
            Some(child) => sort_values(child, rest, out),
            None => out.push(Some(&NULL)),
        },
        Value::Array(items) => {
            if let Some(i) = positional(seg) {
                match items.get(i) {
                    Some(child) => sort_values(child, rest, out),
                    None => out.push(Some(&NULL)),
                }
                return;
            }
            if items.is_empty() {
                out.push(Some(&NULL));
            }
            for item in items {
                if item.is_object() {
                    sort_values(item, segs, out);
                } else {
                    out.push(Some(&NULL));
                }
            }
        }
        _ => out.push(Some(&NULL)),
    }
}

/// A path segment that is an array position: digits without a leading
/// zero (or `0` itself).
fn positional(seg: &str) -> Option<usize> {
    if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if seg.len() > 1 && seg.starts_with('0') {
        return None;
    }
    seg.parse().ok()
}

/// Orders two sort values (`None`, an empty array, below all).
pub(crate) fn compare_sort(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => compare(x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrays_sort_by_min_ascending_and_max_descending() {
        let asc = Sort::parse("a").expect("sort");
        let desc = Sort::parse("-a").expect("sort");
        let doc = json!({"a": [3, 1, 2]});
        assert_eq!(asc.key(&doc), SortKey(vec![json!(1)]));
        assert_eq!(desc.key(&doc), SortKey(vec![json!(3)]));
        assert_eq!(asc.key(&json!({})), SortKey(vec![json!(null)]));
    }

    #[test]
    fn an_empty_array_sorts_below_null_and_missing() {
        // MongoDB's manual: "an empty array [is treated] as less than null
        // or a missing field"; descending, it comes last.
        let asc = Sort::parse("a").expect("sort");
        let desc = Sort::parse("-a").expect("sort");
        let (empty, missing, null) = (json!({"a": []}), json!({}), json!({"a": null}));
        for s in [&asc, &desc] {
            let order = |x: &Value, y: &Value| s.compare(&s.key(x), "x", &s.key(y), "y");
            let below = if std::ptr::eq(s, &asc) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            assert_eq!(order(&empty, &missing), below);
            assert_eq!(order(&empty, &null), below);
            assert_eq!(order(&empty, &json!({"a": [5]})), below);
        }
        // A missing field in one element of an array of objects is null.
        assert_eq!(
            asc.key(&json!({"a": [{"b": 1}, {"c": 2}]})),
            Sort::parse("a")
                .expect("s")
                .key(&json!({"a": [{"b": 1}, {"c": 2}]}))
        );
        let ab = Sort::parse("a.b").expect("sort");
        assert_eq!(
            ab.key(&json!({"a": [{"b": 1}, {"c": 2}]})),
            SortKey(vec![json!(null)])
        );
    }

    #[test]
    fn ties_break_by_id_and_bad_sorts_are_refused() {
        let s = Sort::parse("-n").expect("sort");
        let k = SortKey(vec![json!(1)]);
        assert_eq!(s.compare(&k, "a", &k, "b"), Ordering::Less);
        for bad in ["", "a,,b", "a,a", "-", "$a", "a,b,c,d,e,f,g,h,i"] {
            assert!(Sort::parse(bad).is_err(), "{bad}");
        }
        assert!(Sort::parse("_id").expect("id").is_by_id());
    }
}
