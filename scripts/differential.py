#!/usr/bin/env python3
"""Differential run of the filter table through a MongoDB-compatible engine.

Loads crates/arca-core/tests/filter_cases.json, inserts its documents into
the MongoDB stand-in (mongoeco, started here) or into the MongoDB given by
ARCA_TEST_MONGODB_URI, runs every case with find(), and compares the ids
with the table's expectation (which is what Arca's reference evaluator
returns; the Rust test asserts that).

Known disagreements are recorded in docs/query-differential.json with the
side that follows the MongoDB manual. The run fails on any disagreement
that is not recorded there, and on a recorded one that no longer happens
(so the record stays true).
"""
import json, os, socket, subprocess, sys, time
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
TABLE = json.loads((ROOT / "crates/arca-core/tests/filter_cases.json").read_text())
KNOWN = json.loads((ROOT / "docs/query-differential.json").read_text())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    uri = os.environ.get("ARCA_TEST_MONGODB_URI")
    proc = None
    target = "MongoDB at ARCA_TEST_MONGODB_URI"
    if not uri:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "fixtures/mongo-standin/serve.py"), str(port), "memory"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            print(f"stand-in did not start: {line}{proc.stdout.read()}")
            return 2
        uri = line.split()[1]
        target = "the mongoeco stand-in (not MongoDB)"
    try:
        client = MongoClient(uri, serverSelectionTimeoutMS=10000)
        coll = client["arca_differential"]["filter_table"]
        coll.drop()
        coll.insert_many(TABLE["docs"])
        disagreements = {}
        for case in TABLE["cases"]:
            try:
                got = sorted(d["_id"] for d in coll.find(case["filter"], {"_id": 1}))
            except Exception as e:  # the engine refused the filter
                got = f"error: {type(e).__name__}"
            if got != case["expect"]:
                disagreements[case["rule"]] = {"filter": case["filter"], "arca": case["expect"], "engine": got}
        coll.drop()
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=10)

    known = {k["rule"]: k for k in KNOWN["disagreements"]}
    new = [r for r in disagreements if r not in known]
    gone = [r for r in known if r not in disagreements]
    print(f"differential run of {len(TABLE['cases'])} filter cases against {target}")
    for rule, d in disagreements.items():
        mark = "known" if rule in known else "NEW"
        print(f"  [{mark}] {rule}: filter {json.dumps(d['filter'])} arca={d['arca']} engine={d['engine']}")
    for rule in gone:
        print(f"  [FIXED] {rule}: recorded as a disagreement but both sides now agree; update docs/query-differential.json")
    failed = len(new) + len(gone)
    print(f"{len(TABLE['cases']) - len(disagreements)} agreed, {len(disagreements)} disagreed ({len(new)} unrecorded)")
    print(f"differential: {len(TABLE['cases']) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
