#!/usr/bin/env bash
# Transaction ingest and import benchmark (issue 6), against the release build.
#  1. POSTs every transaction Bundle of target/bench-data/synthea/fhir (made by
#     benches/bundle/generate.sh) to a fresh server with CLIENTS parallel clients
#     (curl, Prefer: return=minimal), and reports resources/s; every Bundle must be
#     answered 200, and (CHECK=1) every stored reference must resolve.
#  2. `fhirgate import` of target/bench-data/ndjson into a fresh database: resources/s.
# Usage: benches/bundle/run.sh sqlite|postgres [clients]
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate (a relative path is
# taken from the repository root; benches/ab.sh uses it to compare two builds).
# SERVER_LOG=path keeps a copy of the server's log there (it is deleted with the work dir).
# BENCH_PORT=port listens there instead of 18182.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
CLIENTS="${2:-8}"
DATA=target/bench-data
[ -d "$DATA/synthea/fhir" ] || { echo "run benches/bundle/generate.sh first" >&2; exit 1; }
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
if [ ! -x "$BIN" ]; then
  [ -z "${FHIRGATE_BIN:-}" ] || { echo "FHIRGATE_BIN=$BIN is not an executable" >&2; exit 1; }
  cargo build --release
fi
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18182}"
NAMES=()
fresh_db() {
  case "$BACKEND" in
    sqlite) echo "sqlite://$WORK/bench-$1.db" ;;
    postgres)
      local name="fhirgate_bundle_bench_$$_$1"
      psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $name" >/dev/null
      NAMES+=("$name")
      echo "postgres://postgres@127.0.0.1:5432/$name" ;;
    *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
  esac
}
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  for n in "${NAMES[@]:-}"; do
    [ -n "$n" ] && psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $n WITH (FORCE)" >/dev/null || true
  done
  if [ -n "${SERVER_LOG:-}" ] && [ -f "$WORK/server.log" ]; then cp "$WORK/server.log" "$SERVER_LOG" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
export FHIRGATE_PACKAGES__CACHE="${FHIRGATE_PACKAGES__CACHE:-$HOME/.fhir/packages}"
if [ ! -d "$FHIRGATE_PACKAGES__CACHE/hl7.fhir.r4.core#4.0.1" ] && [ -d ../shared/fhir-packages ]; then
  "$BIN" packages install ../shared/fhir-packages/hl7.fhir.r4.core-4.0.1.tgz
fi
export FHIRGATE_AUTH__ENABLED=false FHIRGATE_CRYPTO__DEV_KEY_FILE="$WORK/dev.key" FHIRGATE_LOG__LEVEL=warn
echo "machine: $(nproc) cores; load before: $(uptime | sed 's/.*load average: //')"

FILES=$(find "$DATA/synthea/fhir" -name '*.json' | sort)
BUNDLES=$(echo "$FILES" | wc -l)
ENTRIES=$(echo "$FILES" | tr '\n' '\0' | xargs -0 jq '.entry | length' | paste -sd+ | bc)
FHIRGATE_DATABASE__URL="$(fresh_db api)" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" \
  "$BIN" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
kill -0 "$SERVER" 2>/dev/null || { echo "the server exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT/fhir"
echo "--- $BUNDLES transaction Bundles, $ENTRIES entries, $CLIENTS clients, $BACKEND"
START=$(date +%s.%N)
echo "$FILES" | tr '\n' '\0' | xargs -0 -P "$CLIENTS" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' --data-binary @{} "$BASE" > "$WORK/codes.txt"
END=$(date +%s.%N)
SECS=$(echo "$END - $START" | bc -l)
echo "answers: $(sort "$WORK/codes.txt" | uniq -c | tr '\n' ' ')"
printf 'transaction ingest: %.1f s, %.0f resources/s\n' "$SECS" "$(echo "$ENTRIES / $SECS" | bc -l)"
echo "load after: $(uptime | sed 's/.*load average: //')"
[ "$(grep -vc '^200$' "$WORK/codes.txt")" = 0 ] || { echo "some Bundles failed" >&2; tail -20 "$WORK/server.log" >&2; exit 1; }
if [ "${CHECK:-0}" = 1 ]; then python3 benches/bundle/check_refs.py "$BASE"; fi
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=

LINES=$(cat "$DATA"/ndjson/*.ndjson | wc -l)
echo "--- fhirgate import of $LINES NDJSON resources, $BACKEND"
FHIRGATE_DATABASE__URL="$(fresh_db import)" "$BIN" import --quiet "$DATA/ndjson"
