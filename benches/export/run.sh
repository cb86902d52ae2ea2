#!/usr/bin/env bash
# Bulk Data export benchmark (issue 16): PATIENTS Patients with PER Observations each
# (benches/search/generate.py) loaded by `fhirgate import` into a fresh database, then:
#   1. a system $export of everything alone: resources/s, files, the server's peak
#      resident memory while it ran (VmRSS sampled every 100 ms, and VmHWM);
#   2. GET Patient/{id} alone (wrk, CONNS connections, DURATION s): the reference;
#   3. the same export again with the GET load beside it: both rates.
# Usage: benches/export/run.sh [postgres|sqlite] [PATIENTS] [PER] [DURATION_S] [CONNS]
# KEEP_DB=name keeps the database (PostgreSQL database or SQLite file name) and its
# master key (/tmp/fhirgate-export-NAME.key); SKIP_LOAD=1 reuses them.
# FHIRGATE_BIN=path runs that binary. Settings pass through FHIRGATE_* variables.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-postgres}"
PATIENTS="${2:-100000}"
PER="${3:-9}"
DURATION="${4:-10}"
CONNS="${5:-32}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || { echo "$BIN is not built (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18484}"
KEEP="${KEEP_DB:-}"
case "$BACKEND" in
  sqlite) DB="sqlite://${KEEP:+/tmp/fhirgate-export-$KEEP.db}"; DB="${DB%://}"; [ "$DB" = sqlite ] && DB="sqlite://$WORK/bench.db" ;;
  postgres)
    NAME="${KEEP:-fhirgate_export_$$}"
    [ "${SKIP_LOAD:-0}" = 1 ] || psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $NAME" >/dev/null
    DB="postgres://postgres@127.0.0.1:5432/$NAME" ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac
KEYFILE="${KEEP:+/tmp/fhirgate-export-$KEEP.key}"
KEYFILE="${KEYFILE:-$WORK/master.key}"
[ -f "$KEYFILE" ] || head -c 32 /dev/urandom | base64 > "$KEYFILE"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  if [ -z "$KEEP" ] && [ "$BACKEND" = postgres ]; then
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
export FHIRGATE_PACKAGES__CACHE="${FHIRGATE_PACKAGES__CACHE:-$HOME/.fhir/packages}"
export FHIRGATE_DATABASE__URL="$DB" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=false \
  FHIRGATE_CRYPTO__MASTER_KEY_FILE="$KEYFILE" FHIRGATE_LOG__LEVEL="${FHIRGATE_LOG__LEVEL:-warn}" \
  FHIRGATE_BULK__DIR="$WORK/bulk"
echo "# $BIN, $BACKEND, $PATIENTS Patients x $PER Observations, $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${SKIP_LOAD:-0}" != 1 ]; then
  DATA="/tmp/fhirgate-search-$PATIENTS-$PER.ndjson"
  [ -f "$DATA" ] || python3 benches/search/generate.py "$PATIENTS" "$PER" "$DATA"
  start=$(date +%s.%N)
  "$BIN" import --quiet --jobs "${IMPORT_JOBS:-2}" "$DATA"
  end=$(date +%s.%N)
  python3 -c "import sys; n=int(sys.argv[1]); t=float(sys.argv[3])-float(sys.argv[2]); print(f'load: {n} resources by fhirgate import in {t:.1f} s ({n/t:.0f} resources/s)')" \
    "$(wc -l < "$DATA")" "$start" "$end"
fi
"$BIN" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
BASE="http://127.0.0.1:$PORT/fhir"
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
seq 0 $((PATIENTS - 1)) | sed 's/^/p/' > "$WORK/ids"
get_load() {
  BENCH_IDS="$WORK/ids" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/load/get.lua "$BASE" \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} END {printf "%s req/s, p99 %s", rps, p99}'
}
# export LABEL: kicks off a system export, waits for its manifest; prints the rate,
# the files and the server's peak resident memory while it ran.
export_all() {
  local hwm0 loc t0 t1 peak=0 rss status
  t0=$(date +%s.%N)
  loc=$(curl -s -D - -o /dev/null -H 'Prefer: respond-async' "$BASE/\$export" | awk 'tolower($1)=="content-location:" {print $2}' | tr -d '\r')
  [ -n "$loc" ] || { echo "no kick-off" >&2; exit 1; }
  while :; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    status=$(curl -s -o "$WORK/manifest.json" -w '%{http_code}' "$loc")
    [ "$status" = 200 ] && break
    [ "$status" = 202 ] || { echo "status $status" >&2; cat "$WORK/manifest.json" >&2; exit 1; }
    sleep 0.1
  done
  t1=$(date +%s.%N)
  python3 - "$WORK/manifest.json" "$t0" "$t1" "$peak" "$(awk '/VmHWM/ {print $2}' "/proc/$SERVER/status")" "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
n = sum(o["count"] for o in m["output"])
t = float(sys.argv[3]) - float(sys.argv[2])
print(f"{sys.argv[6]}: {n} resources in {len(m['output'])} files, {t:.1f} s: {n/t:,.0f} resources/s; "
      f"server VmRSS peak {int(sys.argv[4])/1024:.0f} MiB (VmHWM since start {int(sys.argv[5])/1024:.0f} MiB)")
PY
  curl -s -o /dev/null -X DELETE "$loc"
}
echo "idle: server VmRSS $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$SERVER/status")"
# The export alone first, so that its memory is its own (a GET load grows the heap).
export_all "export alone"
echo "GET Patient/{id} alone: $(get_load)"
( sleep 1; echo "GET Patient/{id} during the export: $(get_load)" > "$WORK/get-during" ) &
DURING=$!
export_all "export with the GET load beside it"
wait "$DURING"
cat "$WORK/get-during"
du -sh "$WORK/bulk" 2>/dev/null | awk '{print "bulk dir after cancelling both: " $1}'
