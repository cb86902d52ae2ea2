#!/usr/bin/env bash
# Token endpoint benchmark (issue 12): client_credentials with private_key_jwt (SMART Backend
# Services), tokens/s. Starts the release build on a fresh database with auth on (rate limits
# off), registers a client with `fhirgate clients add --jwks-file`, signs N client assertions
# with unique jti beforehand (benches/token/assertions.py: PyJWT + cryptography, in a venv),
# then replays them with wrk (benches/token/token.lua), each once.
# Usage: benches/token/run.sh sqlite|postgres [duration_s] [connections] [assertions]
#   defaults: 20 s, 32 connections, 40000 assertions (used up early above 2,000/s: raise it).
# ALG=ES384 (default) or RS384: the assertions' algorithm (and key type).
# SCOPE='system/*.rs' (default): the scope asked for.
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate (a relative path is
# taken from the repository root). SERVER_LOG=path keeps a copy of the server's log.
# BENCH_PORT=port listens there instead of 18183. BENCH_VENV=dir: the Python venv
# (default target/bench-venv, shared with benches/bundle/generate.sh).
# The assertions expire 280 s after they are signed; signing 30,000 takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
DURATION="${2:-20}"
CONNS="${3:-32}"
N="${4:-40000}"
ALG="${ALG:-ES384}"
SCOPE="${SCOPE:-system/*.rs}"
THREADS=2
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
if [ ! -x "$BIN" ]; then
  [ -z "${FHIRGATE_BIN:-}" ] || { echo "FHIRGATE_BIN=$BIN is not an executable" >&2; exit 1; }
  cargo build --release
fi
VENV="${BENCH_VENV:-target/bench-venv}"
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import jwt, cryptography' 2>/dev/null \
  || "$VENV/bin/pip" install -q "PyJWT==2.10.1" "cryptography==44.0.0"
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18183}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database token_bench
bench_core_package
export FHIRGATE_DATABASE__URL="$DB" FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=true \
  FHIRGATE_CRYPTO__DEV_KEY_FILE="$WORK/dev.key" FHIRGATE_LOG__LEVEL=warn \
  FHIRGATE_RATELIMIT__PER_CLIENT_PER_SEC=0 FHIRGATE_RATELIMIT__AUTH_PER_ADDR_PER_MIN=0
"$BIN" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
kill -0 "$SERVER" 2>/dev/null || { echo "the server exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
TOKEN_URL=$(curl -sf "http://127.0.0.1:$PORT/fhir/.well-known/smart-configuration" | sed -n 's/.*"token_endpoint": *"\([^"]*\)".*/\1/p')
[ -n "$TOKEN_URL" ] || { echo "no token_endpoint in the SMART configuration" >&2; exit 1; }
"$VENV/bin/python" benches/token/assertions.py key "$WORK" "$ALG"
REG=$("$BIN" clients add --name token-bench --jwks-file "$WORK/jwks.json" --scope 'system/*.*')
CID=$(echo "$REG" | sed -n 's/.*"client_id": *"\([^"]*\)".*/\1/p')
[ -n "$CID" ] || { echo "no client_id in: $REG" >&2; exit 1; }
echo "token endpoint $TOKEN_URL; client $CID ($ALG assertions); $BACKEND; load before: $(uptime | sed 's/.*load average: //')"
"$VENV/bin/python" benches/token/assertions.py sign "$WORK" "$ALG" "$CID" "$TOKEN_URL" 1 "$SCOPE" "$WORK/one.txt" 2>/dev/null
ONE=$(curl -s -w ' %{http_code}' -H 'Content-Type: application/x-www-form-urlencoded' --data @"$WORK/one.txt" "$TOKEN_URL")
case "$ONE" in
  *' 200') echo "check: one token issued (scope $(echo "$ONE" | sed -n 's/.*"scope": *"\([^"]*\)".*/\1/p'))" ;;
  *) echo "the token request was refused: $ONE" >&2; exit 1 ;;
esac
"$VENV/bin/python" benches/token/assertions.py sign "$WORK" "$ALG" "$CID" "$TOKEN_URL" "$N" "$SCOPE" "$WORK/bodies.txt"
echo "--- POST /auth/token (client_credentials, private_key_jwt $ALG): $CONNS connections, ${DURATION}s, $N assertions"
BENCH_BODIES="$WORK/bodies.txt" BENCH_THREADS=$THREADS \
  wrk -t$THREADS -c"$CONNS" -d"${DURATION}s" --latency -s benches/token/token.lua "$TOKEN_URL"
echo "load after: $(uptime | sed 's/.*load average: //')"
