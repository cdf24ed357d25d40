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
