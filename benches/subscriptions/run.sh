#!/usr/bin/env bash
# Subscriptions benchmark (issue 15): POST Observation throughput with no subscriptions and
# with SUBS (default 1,000) active rest-hook subscriptions whose criteria are varied searches,
# in one run against one release build, and the delivery latency from commit to a real
# receiver on loopback (benches/subscriptions/receiver.py: arrival time minus the notified
# version's lastModified, both this machine's clock).
#   benches/subscriptions/run.sh sqlite|postgres [duration_s] [connections]
# The criteria: of every 10 subscriptions, 6 `Observation?code=urn:bench|bench-code-N`,
# 2 `code=...&subject=Patient/pN`, 1 `category=laboratory&code=...&value-quantity=gtN`,
# 1 `Observation?value-quantity=gt100000` (no token: it is evaluated in SQL on every write;
# never matches). wrk POSTs Observations whose code is one of bench-code-1..$CODES (100),
# so each POST matches about 3 subscriptions. Then a steady load below saturation
# (STEADY_CONNS 8 connections, each STEADY_DELAY_MS 40 ms between POSTs, STEADY_S 20 s), and
# LATENCY_POSTS (200) single POSTs one at a time (no load) give the latency of an idle server.
# CHANNEL=websocket makes websocket subscriptions that nobody binds: matched and stored, never
# delivered (the cost of matching and the outbox alone; the latency phases report nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
DURATION="${2:-20}"
CONNS="${3:-32}"
SUBS="${SUBS:-1000}"
export CODES="${CODES:-100}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || cargo build --release --bin fhirgate
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18181}"
HOOK_PORT="${HOOK_PORT:-18182}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database subs
bench_core_package
python3 benches/subscriptions/receiver.py "$HOOK_PORT" "$WORK/received.txt" &
bench_serve FHIRGATE_SUBSCRIPTIONS__ALLOW_HTTP=true \
  "FHIRGATE_SUBSCRIPTIONS__ALLOWED_HOSTS=[\"127.0.0.1\"]"
post() {
  echo "--- POST Observation: $1, $CONNS connections, ${DURATION}s"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s benches/subscriptions/post_observation.lua "$BASE/Observation"
}
post "no subscriptions"
echo "creating $SUBS subscriptions"
HOOK="http://127.0.0.1:$HOOK_PORT"
# CHANNEL=websocket: the subscriptions are matched and their events stored, but no socket
# binds them, so nothing is delivered: what matching and the outbox cost the POSTs alone.
channel() {
  if [ "${CHANNEL:-rest-hook}" = websocket ]; then
    printf '{"type":"websocket"}'
  else
    printf '{"type":"rest-hook","endpoint":"%s/s%s","payload":"application/fhir+json","_payload":{"extension":[{"url":"http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content","valueCode":"id-only"}]}}' "$HOOK" "$1"
  fi
}
for i in $(seq 1 "$SUBS"); do
  n=$(( i % CODES + 1 ))
  case $(( i % 10 )) in
    1|2|3|4|5|6) c="Observation?code=urn:bench|bench-code-$(( (i * 7) % (CODES * 5) + 1 ))" ;;
    7|8) c="Observation?code=urn:bench|bench-code-$n&subject=Patient/p$n" ;;
    9) c="Observation?category=laboratory&code=urn:bench|bench-code-$n&value-quantity=gt$(( n - 1 ))" ;;
    0) c="Observation?value-quantity=gt100000" ;;
  esac
  c_json=${c//\"/\\\"}

  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/Subscription" \
    -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' \
    -d "{\"resourceType\":\"Subscription\",\"status\":\"requested\",\"reason\":\"bench $i\",\"criteria\":\"$c_json\",\"channel\":$(channel "$i")}")
  [ "$code" = 201 ] || { echo "subscription $i ($c): $code" >&2; exit 1; }
done
sleep 2
START=$(( $(date +%s%N) / 1000 ))
post "$SUBS subscriptions"
# Let the deliveries finish, then report those of the load.
for _ in $(seq 1 120); do
  before=$(wc -l < "$WORK/received.txt"); sleep 1; after=$(wc -l < "$WORK/received.txt")
  [ "$before" = "$after" ] && break
done
echo "--- delivery under load (commit -> receiver)"
python3 benches/subscriptions/receiver.py report "$WORK/received.txt" "$START"
# A steady load below saturation: STEADY_CONNS connections, each waiting STEADY_DELAY_MS
# between its POSTs, for STEADY_S seconds.
STEADY=$(( $(date +%s%N) / 1000 ))
echo "--- POST Observation, steady: ${STEADY_CONNS:-8} connections, ${STEADY_DELAY_MS:-40} ms apart, ${STEADY_S:-20}s"
DELAY_MS="${STEADY_DELAY_MS:-40}" wrk -t1 -c"${STEADY_CONNS:-8}" -d"${STEADY_S:-20}s" --latency \
  -s benches/subscriptions/post_observation.lua "$BASE/Observation"
sleep 3
echo "--- delivery under the steady load (commit -> receiver)"
python3 benches/subscriptions/receiver.py report "$WORK/received.txt" "$STEADY"
IDLE=$(( $(date +%s%N) / 1000 ))
for i in $(seq 1 "${LATENCY_POSTS:-200}"); do
  c=$(( i % CODES + 1 ))
  curl -s -o /dev/null -X POST "$BASE/Observation" -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' \
    -d "{\"resourceType\":\"Observation\",\"status\":\"final\",\"code\":{\"coding\":[{\"system\":\"urn:bench\",\"code\":\"bench-code-$c\"}]},\"subject\":{\"reference\":\"Patient/p$c\"}}"
  sleep 0.05
done
sleep 3
echo "--- delivery one POST at a time (commit -> receiver)"
python3 benches/subscriptions/receiver.py report "$WORK/received.txt" "$IDLE"
