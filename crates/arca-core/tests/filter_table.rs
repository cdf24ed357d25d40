//! The filter table: each case names the MongoDB rule it checks and the
//! documents it must match, over a fixed set of documents. The same table
//! (`filter_cases.json`) is run through the MongoDB stand-in by
//! `scripts/differential.py` to compare with a MongoDB-compatible engine.

use arca_core::query::Filter;
use serde_json::Value;

#[test]
fn every_case_of_the_table_matches_its_expected_documents() {
    let table: Value = serde_json::from_str(include_str!("filter_cases.json")).expect("table");
    let docs = table["docs"].as_array().expect("docs");
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let filter =
            Filter::parse(&case["filter"]).unwrap_or_else(|e| panic!("{}: {e}", case["rule"]));
        let got: Vec<&str> = docs
            .iter()
            .filter(|d| filter.matches(d))
            .map(|d| d["_id"].as_str().unwrap_or_default())
            .collect();
        let want: Vec<&str> = case["expect"]
            .as_array()
            .expect("expect")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if got != want {
            failures.push(format!(
                "{}: filter {} gave {got:?}, expected {want:?}",
                case["rule"], case["filter"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn documents_match_exactly_as_their_json_does() {
    use arca_core::{DocId, Document, SystemFields};
    let table: Value = serde_json::from_str(include_str!("filter_cases.json")).expect("table");
    let mut extra = table["cases"].as_array().expect("cases").clone();
    for f in [
        serde_json::json!({"_rev": 3}),
        serde_json::json!({"_owner": {"$in": ["o", "p"]}}),
        serde_json::json!({"_created_at": {"$gt": "2026"}, "_id": {"$ne": "b"}}),
        serde_json::json!({"_updated_at": {"$exists": false}}),
    ] {
        extra.push(serde_json::json!({"filter": f}));
    }
    for d in table["docs"].as_array().expect("docs") {
        let mut body = d.as_object().cloned().unwrap_or_default();
        let id = body
            .remove("_id")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let doc = Document {
            system: SystemFields {
                id: DocId::parse(&id).expect("id"),
                rev: 3,
                created_at: "2026-01-01T00:00:00.000Z".into(),
                updated_at: "2026-01-02T00:00:00.000Z".into(),
                owner: "o".into(),
            },
            body,
        };
        assert_eq!(
            serde_json::to_value(&doc).expect("serialize"),
            doc.to_json(),
            "Serialize matches to_json"
        );
        for case in &extra {
            let f = Filter::parse(&case["filter"]).expect("filter");
            assert_eq!(
                f.matches_document(&doc),
                f.matches(&doc.to_json()),
                "{} on {id}",
                case["filter"]
            );
        }
        for s in [
            "age",
            "-tags",
            "address.city,-_rev",
            "-_created_at",
            "_owner,items.qty",
        ] {
            let sort = arca_core::query::Sort::parse(s).expect("sort");
            assert_eq!(
                sort.key_document(&doc),
                sort.key(&doc.to_json()),
                "sort {s} on {id}"
            );
        }
    }
}
