# Shared start-up of the bench scripts (sourced, not run): a fresh database for $BACKEND in
# $WORK, cleaned up on exit with the server, and the R4 core package in the cache.
#   bench_database TAG   sets DB (and NAME on PostgreSQL: fhirgate_TAG_PID), installs the
#                        EXIT trap: stops $SERVER and background jobs, drops the database,
#                        copies $WORK/server.log to $SERVER_LOG when set, removes $WORK.
#   bench_core_package   installs hl7.fhir.r4.core from ../shared when the cache lacks it.
# Expects BACKEND, BIN and WORK to be set.

bench_database() {
  case "$BACKEND" in
    sqlite) DB="sqlite://$WORK/bench.db" ;;
    postgres)
      NAME="fhirgate_$1_$$"
      psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $NAME" >/dev/null
      DB="postgres://postgres@127.0.0.1:5432/$NAME" ;;
    *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
  esac
  trap bench_cleanup EXIT
}

bench_cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  [ "$BACKEND" = postgres ] && psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null || true
  if [ -n "${SERVER_LOG:-}" ] && [ -f "$WORK/server.log" ]; then cp "$WORK/server.log" "$SERVER_LOG" || true; fi
  rm -rf "$WORK"
}

bench_core_package() {
  export FHIRGATE_PACKAGES__CACHE="${FHIRGATE_PACKAGES__CACHE:-$HOME/.fhir/packages}"
  if [ ! -d "$FHIRGATE_PACKAGES__CACHE/hl7.fhir.r4.core#4.0.1" ] && [ -d ../shared/fhir-packages ]; then
    "$BIN" packages install ../shared/fhir-packages/hl7.fhir.r4.core-4.0.1.tgz
  fi
}

# bench_serve [NAME=value ...]: starts `$BIN serve` on $PORT with $DB, a fresh master key,
# authorization off, warnings only (and the NAME=value settings given), sets SERVER and
# BASE, and waits until it is ready (a server that exits meanwhile prints its log).
bench_serve() {
  head -c 32 /dev/urandom | base64 > "$WORK/master.key"
  env FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_DATABASE__URL="$DB" \
    FHIRGATE_CRYPTO__MASTER_KEY_FILE="$WORK/master.key" FHIRGATE_AUTH__ENABLED=false \
    FHIRGATE_LOG__LEVEL="${FHIRGATE_LOG__LEVEL:-warn}" "$@" \
    "$BIN" serve > "$WORK/server.log" 2>&1 &
  SERVER=$!
  BASE="http://127.0.0.1:$PORT/fhir"
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && return 0
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
  done
}
