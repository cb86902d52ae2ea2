#!/usr/bin/env bash
# The audit indexer (issue 14, item 1): what indexing AuditEvents after commit costs.
# Usage: benches/audit/index.sh sqlite|postgres [duration_s] [connections]
# 1. GET Patient/{id} with wrk, the background indexer off (audit.index_interval_ms = 0):
#    the reads' AuditEvents pile up unindexed; then one AuditEvent search, timed: its
#    catch-up indexes the whole backlog (the indexer's rate, one thread).
# 2. The same GET load with the indexer on (every 1000 ms, the default) on a new server:
#    the read throughput while the indexer keeps up, and how far behind it is at the end.
# 3. An AuditEvent search when the index is up to date (the catch-up's fixed cost).
# 4. `fhirgate audit verify` over the whole chain of that run (builds that have it).
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
DURATION="${2:-15}"
CONNS="${3:-32}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || cargo build --release
PORT="${BENCH_PORT:-18182}"
BASE="http://127.0.0.1:$PORT/fhir"
export FHIRGATE_PACKAGES__CACHE="${FHIRGATE_PACKAGES__CACHE:-$HOME/.fhir/packages}"
if [ ! -d "$FHIRGATE_PACKAGES__CACHE/hl7.fhir.r4.core#4.0.1" ] && [ -d ../shared/fhir-packages ]; then
  "$BIN" packages install ../shared/fhir-packages/hl7.fhir.r4.core-4.0.1.tgz
fi
WORK="$(mktemp -d)"
SERVER=""
NAME=""
stop_server() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  SERVER=""
  if [ -n "$NAME" ]; then
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null || true
    NAME=""
  fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT
# start_server INTERVAL_MS: a fresh database and server, 1,000 patients seeded.
start_server() {
  case "$BACKEND" in
    sqlite) DB="sqlite://$WORK/bench-$1.db" ;;
    postgres)
      NAME="fhirgate_audit_bench_$$_$1"
      psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $NAME" >/dev/null
      DB="postgres://postgres@127.0.0.1:5432/$NAME" ;;
    *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
  esac
  FHIRGATE_DATABASE__URL="$DB" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=false \
    FHIRGATE_CRYPTO__DEV_KEY_FILE="$WORK/dev-$1.key" FHIRGATE_LOG__LEVEL=warn \
    FHIRGATE_RATELIMIT__PER_CLIENT_PER_SEC=0 FHIRGATE_AUDIT__INDEX_INTERVAL_MS="$1" \
    "$BIN" serve > "$WORK/server-$1.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
  kill -0 "$SERVER" 2>/dev/null || { echo "the server exited:" >&2; cat "$WORK/server-$1.log" >&2; exit 1; }
  for i in $(seq 1 1000); do
    curl -s -o /dev/null -D - -X POST "$BASE/Patient" -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' \
      -d "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Family$i\"}]}" \
      | tr -d '\r' | sed -n 's#^location: .*/Patient/\([^/]*\)/_history.*#\1#p'
  done > "$WORK/ids.txt"
  export BENCH_IDS="$WORK/ids.txt"
}
# timed_search QUERY: the wall time of one AuditEvent search, and its total.
timed_search() {
  local t0 t1 total
  t0=$(date +%s.%N)
  total=$(curl -s "$BASE/AuditEvent?$1" | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
  t1=$(date +%s.%N)
  echo "AuditEvent?$1: total $total in $(echo "$t1 - $t0" | bc) s"
}

echo "=== 1. indexer off during the load, then one search indexes the backlog ($BACKEND)"
start_server 0
wrk -t2 -c"$CONNS" -d"${DURATION}s" -s benches/load/get.lua "$BASE" | grep -E "Requests/sec|Latency"
timed_search "date=gt2000&_summary=count"
timed_search "date=gt2000&_summary=count"
stop_server

echo "=== 2. indexer on (every 1000 ms) during the same load ($BACKEND)"
start_server 1000
wrk -t2 -c"$CONNS" -d"${DURATION}s" -s benches/load/get.lua "$BASE" | grep -E "Requests/sec|Latency"
echo "right after the load, the search's catch-up indexes what the background left:"
timed_search "date=gt2000&_summary=count"
echo "=== 3. searches over an up-to-date index"
for q in "action=R&_count=50&_sort=-date" "_count=50" "outcome=4&_summary=count"; do timed_search "$q"; done
echo "=== 4. fhirgate audit verify over the whole chain (the server stopped)"
kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
SERVER=""
t0=$(date +%s.%N)
out=$(FHIRGATE_DATABASE__URL="$DB" FHIRGATE_CRYPTO__DEV_KEY_FILE="$WORK/dev-1000.key" FHIRGATE_LOG__LEVEL=warn \
  "$BIN" audit verify 2>/dev/null || true)
t1=$(date +%s.%N)
echo "audit verify: $out in $(echo "$t1 - $t0" | bc) s"
stop_server
