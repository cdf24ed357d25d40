//! Fuzzing by property test: the filter parser, the evaluator, sort and
//! projection parsing and cursor decoding never panic on arbitrary input,
//! operator-shaped JSON included.

use arca_core::query::{Cursor, Filter, Projection, Sort};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![Just("a"), Just("b"), Just("a.b"), Just("a.0"), Just("0"), Just("_id"), Just("")].prop_map(str::to_owned),
        4 => prop_oneof![
            Just("$eq"), Just("$ne"), Just("$gt"), Just("$gte"), Just("$lt"), Just("$lte"), Just("$in"),
            Just("$nin"), Just("$exists"), Just("$type"), Just("$regex"), Just("$options"), Just("$and"),
            Just("$or"), Just("$nor"), Just("$not"), Just("$elemMatch"), Just("$size"), Just("$all"),
            Just("$where"), Just("$claim"), Just("$expr")
        ].prop_map(str::to_owned),
        1 => ".{0,6}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("string"),
            Just("i"),
            Just("^a.*"),
            Just("(?=x)"),
            Just("[")
        ]
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn filter_parsing_and_evaluation_never_panic(filter in json(), doc in json()) {
        if let Ok(f) = Filter::parse(&filter) {
            let _ = f.matches(&doc);
        }
        let _ = Filter::parse_str(&filter.to_string());
    }

    #[test]
    fn sort_projection_and_cursor_parsing_never_panic(text in ".{0,40}", doc in json()) {
        if let Ok(s) = Sort::parse(&text) {
            let _ = s.key(&doc);
        }
        if let Ok(p) = Projection::parse(&text) {
            let _ = p.apply(&doc);
        }
        let _ = Cursor::decode(&text, "0000000000000000", 1, &[1u8; 32]);
        let _ = Filter::parse_str(&text);
    }
}
