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
