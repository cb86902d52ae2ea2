#!/usr/bin/env bash
# Cheap reads beside large writes (issue 13 item 2, SQLite's one writer): starts WRITES
# (default 8) creates at once of a Patient with NAMES names (default 10,000: about 200,000
# index rows, within search.max_index_rows), and while they run one client reads
# GET /fhir/Patient/p1 every 10 ms; prints the reads' p50, p99 and maximum and the creates'
# statuses. A read waits for its AuditEvent to be committed, which needs SQLite's write lock.
# Usage: benches/shares/writes.sh sqlite|postgres
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || { echo "$BIN is not built (cargo build --release, or FHIRGATE_BIN=...)" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18184}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database writes
bench_core_package
bench_serve FHIRGATE_SERVER__REQUEST_TIMEOUT_SECS="${FHIRGATE_SERVER__REQUEST_TIMEOUT_SECS:-600}"
curl -sf -o /dev/null -X PUT -H 'Content-Type: application/fhir+json' \
  -d '{"resourceType":"Patient","id":"p1"}' "$BASE/Patient/p1"
python3 - "$WORK/big.json" "${NAMES:-10000}" <<'PY'
import json, random, sys
random.seed(3)
letters = 'abcdefghijklmnopqrstuvwxyz'
names = [{"family": ''.join(random.choice(letters) for _ in range(6))} for _ in range(int(sys.argv[2]))]
json.dump({"resourceType": "Patient", "name": names}, open(sys.argv[1], "w"))
PY
PIDS=()
for i in $(seq 1 "${WRITES:-8}"); do
  curl -s -o /dev/null -w '%{http_code}\n' -H 'Content-Type: application/fhir+json' \
    --data-binary @"$WORK/big.json" "$BASE/Patient" > "$WORK/write.$i" &
  PIDS+=($!)
done
python3 - "$BASE/Patient/p1" "$WORK" "${WRITES:-8}" <<'PY'
import os, sys, time, urllib.request
url, work, writes = sys.argv[1], sys.argv[2], int(sys.argv[3])
def done():
    return sum(1 for i in range(1, writes + 1)
               if os.path.exists(f"{work}/write.{i}") and os.path.getsize(f"{work}/write.{i}") > 0)
lat, bad, start = [], 0, time.time()
while done() < writes and time.time() - start < 900:
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=300) as r:
            r.read()
    except Exception:
        bad += 1
    lat.append((time.perf_counter() - t) * 1000)
    time.sleep(0.01)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"writes done after {time.time() - start:.1f} s; reads: {len(lat)}, failed: {bad}, "
      f"p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
PY
wait "${PIDS[@]}" || true
echo "create answers: $(cat "$WORK"/write.* | sort | uniq -c | tr "\n" " ")"
