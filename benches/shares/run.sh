#!/usr/bin/env bash
# Cheap reads beside the worst searches (issue 13 item 2): seeds the issue's data (5 Patients,
# 130 Observations that refer to each other), starts eight of the issue's worst searches
# (`_has` nested four deep; `search.max_has_depth` raised to 4 for them, default deadline
# 30 s), and while they run measures GET /fhir/Patient/p1 as one client that reads every
# 10 ms (about 100 reads a second, so the figure is the latency of a read beside the
# searches, not of a saturated server) for DURATION seconds. SEARCHES=n runs n searches
# instead of eight (0: the baseline). Prints the reads' p50, p99 and maximum, how many
# searches were still running when the reads ended, and the search answers' statuses.
# Usage: benches/shares/run.sh sqlite|postgres [duration_s]
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate.
# Extra settings pass through the environment (e.g. FHIRGATE_DATABASE__SEARCH_CONNECTIONS).
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
DURATION="${2:-8}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || { echo "$BIN is not built (cargo build --release, or FHIRGATE_BIN=...)" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18182}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database shares
bench_core_package
bench_serve FHIRGATE_SEARCH__MAX_HAS_DEPTH=4
python3 - "$WORK/seed.json" <<'PY'
import json, sys
entries = [{"resource": {"resourceType": "Patient", "id": f"p{p}"},
            "request": {"method": "PUT", "url": f"Patient/p{p}"}} for p in range(5)]
for i in range(130):
    entries.append({"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": f"Patient/p{i % 5}"},
        "hasMember": [{"reference": f"Observation/o{(i + k * 7) % 130}"} for k in range(1, 7)]},
        "request": {"method": "PUT", "url": f"Observation/o{i}"}})
json.dump({"resourceType": "Bundle", "type": "transaction", "entry": entries}, open(sys.argv[1], "w"))
PY
curl -sf -o /dev/null -H 'Content-Type: application/fhir+json' --data-binary @"$WORK/seed.json" "$BASE"
COSTLY='Patient?_has:Observation:subject:_has:Observation:has-member:_has:Observation:has-member:_has:Observation:has-member:status=final'
PIDS=()
for i in $(seq 1 "${SEARCHES:-8}"); do
  curl -s -o /dev/null -w '%{http_code}\n' "$BASE/$COSTLY" > "$WORK/search.$i" &
  PIDS+=($!)
done
sleep 0.5
python3 - "$BASE/Patient/p1" "$DURATION" <<'PY'
import sys, time, urllib.request
url, duration = sys.argv[1], float(sys.argv[2])
lat, bad, end = [], 0, time.time() + duration
while time.time() < end:
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
    except Exception:
        bad += 1
    lat.append((time.perf_counter() - t) * 1000)
    time.sleep(0.01)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"reads: {len(lat)}, failed: {bad}, p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
PY
running=0
for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
echo "searches still running when the reads ended: $running of ${SEARCHES:-8}"
curl -s "http://127.0.0.1:$PORT/health/ready"; echo
[ ${#PIDS[@]} -eq 0 ] || wait "${PIDS[@]}" || true
echo "search answers: $(cat "$WORK"/search.* 2>/dev/null | sort | uniq -c | tr "\n" " ")"
