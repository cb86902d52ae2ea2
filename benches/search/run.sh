#!/usr/bin/env bash
# Search benchmark (issue 5): loads synthetic Patients and Observations through the API
# (reporting write throughput with indexing), then runs wrk against the search queries.
#   benches/search/run.sh sqlite|postgres [PATIENTS] [OBS_PER_PATIENT] [DURATION_S] [CONNS]
# KEEP_DB=name keeps (and reuses, with SKIP_LOAD=1) a PostgreSQL database or SQLite file.
# LOADER=api (default): PUT through the REST API with 8 clients; LOADER=import: `fhirgate
# import` (500 lines per transaction, IMPORT_JOBS jobs, default 2). Either way every resource
# passes the write path (validation, indexing, encryption, one AuditEvent per resource).
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-postgres}"
PATIENTS="${2:-100000}"
PER="${3:-10}"
DURATION="${4:-20}"
CONNS="${5:-32}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
[ -x target/release/fhirgate ] || cargo build --release
WORK="$(mktemp -d)"
PORT=18282
KEEP="${KEEP_DB:-}"
case "$BACKEND" in
  sqlite) DB="sqlite://${KEEP:-$WORK/bench.db}" ;;
  postgres)
    NAME="${KEEP:-fhirgate_search_$$}"
    [ "${SKIP_LOAD:-0}" = 1 ] || psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $NAME" >/dev/null
    DB="postgres://postgres@127.0.0.1:5432/$NAME" ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac
KEYFILE="${KEEP:+/tmp/fhirgate-bench-$KEEP.key}"
KEYFILE="${KEYFILE:-$WORK/dev.key}"
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  if [ -z "$KEEP" ] && [ "$BACKEND" = postgres ]; then
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
export FHIRGATE_PACKAGES__CACHE="${FHIRGATE_PACKAGES__CACHE:-$HOME/.fhir/packages}"
if [ ! -d "$FHIRGATE_PACKAGES__CACHE/hl7.fhir.r4.core#4.0.1" ] && [ -d ../shared/fhir-packages ]; then
  target/release/fhirgate packages install ../shared/fhir-packages/hl7.fhir.r4.core-4.0.1.tgz
fi
export FHIRGATE_DATABASE__URL="$DB" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=false \
  FHIRGATE_CRYPTO__DEV_KEY_FILE="$KEYFILE" FHIRGATE_LOG__LEVEL=warn
target/release/fhirgate serve > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
BASE="http://127.0.0.1:$PORT/fhir"
DATA="/tmp/fhirgate-search-$PATIENTS-$PER.ndjson"
if [ "${SKIP_LOAD:-0}" != 1 ]; then
  [ -f "$DATA" ] || python3 benches/search/generate.py "$PATIENTS" "$PER" "$DATA"
  if [ "${LOADER:-api}" = import ]; then
    echo "--- load $(wc -l < "$DATA") resources ($BACKEND, fhirgate import, ${IMPORT_JOBS:-2} jobs)"
    start=$(date +%s.%N)
    target/release/fhirgate import --quiet --jobs "${IMPORT_JOBS:-2}" "$DATA"
    end=$(date +%s.%N)
    python3 -c "import sys; n=int(sys.argv[1]); t=float(sys.argv[3])-float(sys.argv[2]); print(f'{n} resources in {t:.1f} s: {n/t:.0f} resources/s')" \
      "$(wc -l < "$DATA")" "$start" "$end"
  else
    echo "--- load $(wc -l < "$DATA") resources ($BACKEND, 8 clients, PUT with indexing, audit, encryption)"
    python3 benches/search/load.py "$BASE" "$DATA" 8
  fi
fi
if [ "$BACKEND" = postgres ]; then
  # Fresh statistics and visibility maps after a bulk load (autovacuum gets there later):
  # without statistics the planner takes the index tables for empty, without the visibility
  # map every index-only scan of them still reads the heap.
  psql -q -h 127.0.0.1 -U postgres -d "$NAME" -c "VACUUM (ANALYZE)"
  echo "--- index rows and sizes"
  psql -h 127.0.0.1 -U postgres -d "$NAME" -c "SELECT relname, n_live_tup AS rows,
      pg_size_pretty(pg_total_relation_size(relid)) AS size FROM pg_stat_user_tables
      WHERE relname LIKE 'search_%' OR relname IN ('resources_current','resource_versions','audit_log')
      ORDER BY relname"
fi
run() {
  echo "--- $1"
  QUERY="/fhir/$2" PATIENTS="$PATIENTS" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency \
    -s benches/search/query.lua "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx|requests in"
}
run "Patient?family=<prefix>" 'Patient?family={prefix}'
run "Patient?family=<prefix>&_total=none" 'Patient?family={prefix}&_total=none'
run "Patient?identifier=sys|val" 'Patient?identifier=http://hospital.example.org/mrn%7C{mrn}'
run "Observation?patient=X&code=sys|code&date=ge2020" 'Observation?patient=p{n}&code=http://loinc.org%7C29463-7&date=ge2020'
run "Observation?patient=X&_sort=-date&_count=10" 'Observation?patient=p{n}&_sort=-date&_count=10'
run "chain: Observation?subject:Patient.identifier=sys|val" 'Observation?subject:Patient.identifier=http://hospital.example.org/mrn%7C{mrn}'
run "Patient?_id=X&_revinclude=Observation:patient" 'Patient?_id=p{n}&_revinclude=Observation:patient'
