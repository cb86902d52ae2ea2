#!/usr/bin/env bash
# The audit benchmark at scale (issue 14): EVENTS interactions' AuditEvents on PostgreSQL,
# loaded by the bulk loader (benches/audit_load.rs: fhirgate's own audit path, chained and
# indexed), then the issue's two searches timed through the HTTP API, `fhirgate audit verify`
# over the whole chain, and the database's size.
#
# Usage: benches/audit/scale.sh EVENTS [ROUNDS]
#   EVENTS  interactions to load (searches and denials make two AuditEvents each: the
#           loader prints how many events it made)
#   ROUNDS  searches per query shape (default 200; benches/audit/queries.py)
# KEEP=NAME keeps the database fhirgate_audit_NAME and its master key in
#   /work/bench-data/audit-NAME.key after the run, and reuses them when they exist (the
#   load is skipped): loading 10 million events takes a long time.
# PATIENTS, USERS, DAYS: the loader's --patients (100,000), --users (5,000), --days (730).
# FHIRGATE_BIN=path runs that server binary instead of target/release/fhirgate.
# SEARCHES_ONLY=1 skips the size, verify and tamper steps. COLD=1 empties the operating
#   system's page cache and restarts PostgreSQL before the searches (root only), so the
#   first pass reads from disk, as after a restart or when the index exceeds memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS="${1:?usage: benches/audit/scale.sh EVENTS [ROUNDS]}"
ROUNDS="${2:-200}"
PATIENTS="${PATIENTS:-100000}"
USERS="${USERS:-5000}"
DAYS="${DAYS:-730}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || cargo build --release
PORT="${BENCH_PORT:-18190}"
BACKEND=postgres
WORK="$(mktemp -d)"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_core_package
if [ -n "${KEEP:-}" ]; then
  NAME="fhirgate_audit_$KEEP"
  DB="postgres://postgres@127.0.0.1:5432/$NAME"
  mkdir -p /work/bench-data
  KEY="/work/bench-data/audit-$KEEP.key"
  trap '[ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT
  if ! psql -h 127.0.0.1 -U postgres -d test -tAc "SELECT 1 FROM pg_database WHERE datname = '$NAME'" | grep -q 1; then
    psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $NAME" >/dev/null
    head -c 32 /dev/urandom | base64 > "$KEY"
    LOAD=1
  else
    LOAD=0
  fi
else
  bench_database audit
  KEY="$WORK/master.key"
  head -c 32 /dev/urandom | base64 > "$KEY"
  LOAD=1
fi
export FHIRGATE_DATABASE__URL="$DB" FHIRGATE_CRYPTO__MASTER_KEY_FILE="$KEY" FHIRGATE_LOG__LEVEL=warn

if [ "$LOAD" = 1 ]; then
  echo "=== load: $EVENTS interactions ($PATIENTS patients, $USERS users, $DAYS days)"
  cargo bench --quiet --bench audit_load -- "$EVENTS" --patients "$PATIENTS" --users "$USERS" --days "$DAYS"
  psql -q -h 127.0.0.1 -U postgres -d "$NAME" -c "VACUUM ANALYZE" >/dev/null
else
  echo "=== reusing $NAME (no load)"
fi

if [ "${SEARCHES_ONLY:-0}" != 1 ]; then
echo "=== size"
psql -h 127.0.0.1 -U postgres -d "$NAME" -tA -F ' ' -c "
  SELECT 'audit_log rows', count(*) FROM audit_log
  UNION ALL SELECT 'database bytes', pg_database_size(current_database())
  UNION ALL SELECT relname || ' bytes', pg_total_relation_size(oid)
    FROM pg_class WHERE relname IN ('audit_log', 'audit_chain', 'search_blind', 'search_date', 'search_reference', 'search_uri')"

echo "=== fhirgate audit verify (whole process: start, chain catch-up, walk)"
t0=$(date +%s.%N)
"$BIN" audit verify > "$WORK/verify.json"
t1=$(date +%s.%N)
cat "$WORK/verify.json"
echo "verify seconds: $(echo "$t1 - $t0" | bc)"

echo "=== one byte of the AuditEvent in the middle of the chain changed: verify must name its position (then restored)"
MID=$(psql -h 127.0.0.1 -U postgres -d "$NAME" -tAc "SELECT seq FROM audit_chain WHERE pos = (SELECT head_pos / 2 FROM audit_chain_state)")
psql -q -h 127.0.0.1 -U postgres -d "$NAME" -c "CREATE TABLE bench_tamper AS SELECT seq, body FROM audit_log WHERE seq = $MID" \
  -c "UPDATE audit_log SET body = set_byte(body, 40, (get_byte(body, 40) + 1) % 256) WHERE seq = $MID"
set +e
"$BIN" audit verify > "$WORK/tampered.json"
rc=$?
set -e
psql -q -h 127.0.0.1 -U postgres -d "$NAME" -c "UPDATE audit_log a SET body = t.body FROM bench_tamper t WHERE a.seq = t.seq" -c "DROP TABLE bench_tamper"
cat "$WORK/tampered.json"
echo "exit code $rc (1: broken) for seq $MID"
[ "$rc" = 1 ] || { echo "the changed AuditEvent was not caught" >&2; exit 1; }
fi

if [ "${COLD:-0}" = 1 ]; then
  echo "=== cold: page cache dropped, PostgreSQL restarted"
  sync && echo 3 > /proc/sys/vm/drop_caches
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main restart
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

echo "=== searches ($ROUNDS per shape, one client, keep-alive)"
export FHIRGATE_PACKAGES__CACHE
env FHIRGATE_SERVER__LISTEN="127.0.0.1:$PORT" FHIRGATE_AUTH__ENABLED=false \
  FHIRGATE_SERVER__REQUEST_TIMEOUT_SECS="${REQUEST_TIMEOUT_SECS:-30}" \
  "$BIN" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
BASE="http://127.0.0.1:$PORT/fhir"
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
python3 benches/audit/queries.py "$BASE" "$ROUNDS" "$PATIENTS" "$USERS" "$DAYS"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
