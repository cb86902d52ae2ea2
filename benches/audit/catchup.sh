#!/usr/bin/env bash
# The audit indexer's catch-up rate on SQLite (issue 14): GET Patient/{id} with wrk for
# DUR seconds (default 10) with the background indexer off, so the reads' AuditEvents pile
# up unindexed; then `AuditEvent?date=gt2000&_summary=count` until it answers 200 (each
# try indexes for half the request budget, then answers 503 and keeps what it did).
# Prints the events indexed per second.
# Usage: benches/audit/catchup.sh [BIN]   (default target/release/fhirgate)
set -u
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/fhirgate}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
W=$(mktemp -d); PORT=18301; BASE=http://127.0.0.1:$PORT/fhir
FHIRGATE_DATABASE__URL="sqlite://$W/b.db" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=false \
 FHIRGATE_CRYPTO__DEV_KEY_FILE="$W/dev.key" FHIRGATE_LOG__LEVEL=warn FHIRGATE_RATELIMIT__PER_CLIENT_PER_SEC=0 \
 FHIRGATE_AUDIT__INDEX_INTERVAL_MS=0 "$BIN" serve > $W/server.log 2>&1 &
S=$!
trap 'kill "$S" 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
kill -0 "$S" 2>/dev/null || { echo "the server exited:" >&2; cat "$W/server.log" >&2; exit 1; }
for i in $(seq 1 300); do
  curl -s -o /dev/null -D - -X POST "$BASE/Patient" -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' \
    -d "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Family$i\"}]}" | tr -d '\r' | sed -n 's#^location: .*/Patient/\([^/]*\)/_history.*#\1#p'
done > $W/ids.txt
export BENCH_IDS=$W/ids.txt
wrk -t2 -c32 -d${DUR:-10}s -s benches/load/get.lua "$BASE" | grep -E "Requests/sec"
t0=$(date +%s.%N); n=0
while :; do
  n=$((n+1))
  out=$(curl -s -w ' %{http_code}' "$BASE/AuditEvent?date=gt2000&_summary=count")
  case "$out" in *" 200") break;; esac
  [ "$n" -lt 100 ] || { echo "no answer 200 after $n searches: $out" >&2; exit 1; }
done
t1=$(date +%s.%N)
total=$(echo "$out" | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
echo "catch-up: $total events indexed in $(echo "$t1 - $t0" | bc) s over $n searches: $(echo "$total / ($t1 - $t0)" | bc) events/s"
