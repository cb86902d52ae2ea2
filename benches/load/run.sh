#!/usr/bin/env bash
# Load benchmark of the REST API (issue: foundation): GET Patient/{id} over 1,000 patients and
# POST Patient, with audit and encryption on, against the release build, with wrk on the same
# machine. Usage: benches/load/run.sh sqlite|postgres [duration_s] [connections]
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate (a relative path is
# taken from the repository root; benches/ab.sh uses it to compare two builds).
# SERVER_LOG=path keeps a copy of the server's log there (it is deleted with the work dir).
# BENCH_PORT=port listens there instead of 18181.
# Validation: FHIRGATE_VALIDATION__MODE=off|structure|full (default full) passes through;
# US_CORE=1 also loads US Core 6.1.0 and requires US Core Patient of every Patient written.
# AUTH=1 runs with SMART authorization on: a client registered with the CLI, every request
# with its client_credentials token (system/*.*; per-client rate limit off).
# AUTH=patient: the patients are seeded with that system token, then a patient user (the
# first patient) signs in through a public client's code flow (benches/load/patient_token.py,
# run by $PYTHON, default tests/smart_clients/.venv/bin/python: it needs `requests`), and GET
# reads that patient's own record with the patient token (compartment narrowing on every
# read); no POST (a patient/*.rs token does not create). ONE_PATIENT=1 with auth off GETs
# the same one patient, the comparison for AUTH=patient.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
DURATION="${2:-20}"
CONNS="${3:-32}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
if [ ! -x "$BIN" ]; then
  [ -z "${FHIRGATE_BIN:-}" ] || { echo "FHIRGATE_BIN=$BIN is not an executable" >&2; exit 1; }
  cargo build --release
fi
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18181}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database bench
bench_core_package
if [ "${US_CORE:-0}" = 1 ]; then
  if [ ! -d "$FHIRGATE_PACKAGES__CACHE/hl7.fhir.us.core#6.1.0" ] && [ -d ../shared/fhir-packages ]; then
    "$BIN" packages install ../shared/fhir-packages/hl7.fhir.us.core-6.1.0.tgz
  fi
  export FHIRGATE_PACKAGES__LOAD='["hl7.fhir.r4.core#4.0.1", "hl7.fhir.us.core#6.1.0"]'
  export FHIRGATE_VALIDATION__REQUIRED_PROFILES__PATIENT='["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]'
fi
AUTH="${AUTH:-0}"
echo "validation.mode=${FHIRGATE_VALIDATION__MODE:-full} US_CORE=${US_CORE:-0} AUTH=$AUTH"
AUTH_ENABLED=false
[ "$AUTH" != 0 ] && AUTH_ENABLED=true
export FHIRGATE_DATABASE__URL="$DB" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=$AUTH_ENABLED \
  FHIRGATE_CRYPTO__DEV_KEY_FILE="$WORK/dev.key" FHIRGATE_LOG__LEVEL=warn
# Only with auth: builds from before the rate limiter (issue 12) refuse an unknown settings
# section, and benches/ab.sh runs this script with them.
[ "$AUTH" != 0 ] && export FHIRGATE_RATELIMIT__PER_CLIENT_PER_SEC=0
"$BIN" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
kill -0 "$SERVER" 2>/dev/null || { echo "the server exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT/fhir"
export BENCH_TOKEN=""
if [ "$AUTH" != 0 ]; then
  REG=$("$BIN" clients add --name bench --secret --scope 'system/*.*')
  CID=$(echo "$REG" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')
  SECRET=$(echo "$REG" | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p')
  BENCH_TOKEN=$(curl -s -u "$CID:$SECRET" -d grant_type=client_credentials -d 'scope=system/*.*' \
    "http://127.0.0.1:$PORT/auth/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
  [ -n "$BENCH_TOKEN" ] || { echo "no token" >&2; exit 1; }
fi
AUTH_HEADER=(-H "Authorization: Bearer $BENCH_TOKEN")
[ "$AUTH" != 0 ] || AUTH_HEADER=()
echo "seeding 1000 patients ($BACKEND)"
for i in $(seq 1 1000); do
  curl -s -o /dev/null -D - -X POST "$BASE/Patient" "${AUTH_HEADER[@]}" -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' \
    -d "{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:mrn\",\"value\":\"MRN$i\"}],\"name\":[{\"family\":\"Family$i\",\"given\":[\"Given$i\"]}],\"gender\":\"female\",\"birthDate\":\"1970-01-01\",\"telecom\":[{\"system\":\"phone\",\"value\":\"555-01$i\"}],\"address\":[{\"line\":[\"$i Main St\"],\"city\":\"Springfield\",\"postalCode\":\"12345\"}]}" \
    | tr -d '\r' | sed -n 's#^location: .*/Patient/\([^/]*\)/_history.*#\1#p'
done > "$WORK/ids.txt"
echo "$(wc -l < "$WORK/ids.txt") patients"
export BENCH_IDS="$WORK/ids.txt"
if [ "$AUTH" = patient ] || [ "${ONE_PATIENT:-0}" = 1 ]; then
  head -1 "$WORK/ids.txt" > "$WORK/one.txt"
  export BENCH_IDS="$WORK/one.txt"
  echo "GET reads one patient: $(cat "$WORK/one.txt")"
fi
if [ "$AUTH" = patient ]; then
  PYTHON="${PYTHON:-tests/smart_clients/.venv/bin/python}"
  printf 'bench-patient-password' > "$WORK/password"
  "$BIN" users add --username benchpat --password-file "$WORK/password" \
    --fhir-user "Patient/$(cat "$WORK/one.txt")" --role patient > /dev/null
  APP=$("$BIN" clients add --name bench-app --public --redirect-uri http://127.0.0.1:9/cb)
  APP_ID=$(echo "$APP" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')
  BENCH_TOKEN=$("$PYTHON" benches/load/patient_token.py "http://127.0.0.1:$PORT" "$APP_ID" \
    http://127.0.0.1:9/cb benchpat bench-patient-password)
  [ -n "$BENCH_TOKEN" ] || { echo "no patient token" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_TOKEN" \
    "$BASE/Patient/$(cat "$WORK/one.txt")")
  [ "$code" = 200 ] || { echo "the patient token reads its patient with $code" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_TOKEN" \
    "$BASE/Patient/$(sed -n 2p "$WORK/ids.txt")")
  [ "$code" = 404 ] || { echo "the patient token reads another patient with $code" >&2; exit 1; }
  echo "patient token: reads its patient (200), not another (404)"
fi
echo "--- GET Patient/{id}: $CONNS connections, ${DURATION}s"
wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/load/get.lua "$BASE"
[ "$AUTH" = patient ] && exit 0
echo "--- POST Patient: $CONNS connections, ${DURATION}s"
wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/load/post.lua "$BASE/Patient"
