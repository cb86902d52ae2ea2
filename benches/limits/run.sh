#!/usr/bin/env bash
# The costliest searches the default limits admit (issue 13 item 1): seeds PATIENTS Patients
# (default 3,000) through one transaction Bundle, then times each search shape at the limits
# (`search.max_params` 30 with `_total`, `search.max_values_per_param` 100) twice and prints
# the wall time and status of each. Usage: benches/limits/run.sh sqlite|postgres
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-postgres}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || { echo "$BIN is not built (cargo build --release, or FHIRGATE_BIN=...)" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18183}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database limits
bench_core_package
bench_serve
python3 - "$WORK/seed.json" "${PATIENTS:-3000}" <<'PY'
import json, random, sys
random.seed(1)
letters = 'abcdefghijklmnopqrstuvwxyz'
entries = []
for i in range(int(sys.argv[2])):
    fam = ''.join(random.choice(letters) for _ in range(6))
    entries.append({"resource": {"resourceType": "Patient", "name": [{"family": fam, "given": [fam[::-1]]}],
                    "gender": "male", "birthDate": "1970-01-01"}, "request": {"method": "POST", "url": "Patient"}})
json.dump({"resourceType": "Bundle", "type": "transaction", "entry": entries}, open(sys.argv[1], "w"))
PY
curl -sf -o /dev/null -H 'Content-Type: application/fhir+json' --data-binary @"$WORK/seed.json" "$BASE"
python3 - "$BASE" <<'PY'
import random, sys, time, urllib.error, urllib.request
base = sys.argv[1]
random.seed(2)
def rs(n=3): return ''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(n))
cases = {
    '29 repeats of family (AND)': '&'.join('family=' + rs() for _ in range(29)),
    'family with 100 values (OR)': 'family=' + ','.join(rs() for _ in range(100)),
    '10 string parameters x 100 values': '&'.join(p + '=' + ','.join(rs() for _ in range(100)) for p in
        ['name', 'family', 'given', 'address', 'address-city', 'phonetic', 'telecom', 'email', 'phone', 'identifier']),
    '29 repeats of name:contains (3 letters)': '&'.join('name:contains=' + rs() for _ in range(29)),
    'name:contains with 100 values of 2 letters': 'name:contains=' + ','.join(rs(2) for _ in range(100)),
    'name:contains with 100 values of 3 letters': 'name:contains=' + ','.join(rs(3) for _ in range(100)),
    '29 repeats of birthdate': '&'.join('birthdate=ge19%02d-01-01' % i for i in range(29)),
}
for rnd in (1, 2):
    for name, q in cases.items():
        url = base + '/Patient?' + q + '&_total=accurate'
        t = time.time()
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                code = r.status; r.read()
        except urllib.error.HTTPError as e:
            code = e.code; e.read()
        print(f'round {rnd}: {time.time() - t:7.3f} s  {code}  {len(url):5d} B  {name}')
PY
