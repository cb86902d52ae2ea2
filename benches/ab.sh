#!/usr/bin/env bash
# A/B run of the REST load benchmark and the Bundle benchmark: two release binaries, alternated
# on the same machine state, so that a change of the machine's load shows as noise between
# rounds of the same build instead of as a difference between the builds.
#
# Usage: benches/ab.sh
#   BEFORE=path  the baseline binary      (default /work/bench-bin/fhirgate-before)
#   AFTER=path   the binary to compare    (default: the newest /work/bench-bin/fhirgate-after-*)
#   BACKENDS="sqlite postgres"            backends, in this order
#   LOAD_ROUNDS=2 DURATION=20 CONNS=32    benches/load/run.sh BACKEND DURATION CONNS, per round
#                                         before then after
#   BUNDLE_ROUNDS=1 CLIENTS=8             benches/bundle/run.sh BACKEND CLIENTS, per round
#                                         before then after
#   LOAD_PORT=28181 BUNDLE_PORT=28182    ports of the servers (BENCH_PORT of the two scripts)
#   OUT=dir                               raw output and server logs of every run
#                                         (default /work/bench-ab-<time>)
# Needs wrk, jq, bc, psql (PostgreSQL at 127.0.0.1:5432, user postgres) and the data of
# benches/bundle/generate.sh in target/bench-data. Build the binaries beforehand, e.g. from
# `git worktree add --detach DIR COMMIT` and `cargo build --release` in DIR.
# Example:
#   BEFORE=/work/bench-bin/fhirgate-before AFTER=/work/bench-bin/fhirgate-after-92e5dbf \
#     benches/ab.sh 2>&1 | tee /work/bench-ab-92e5dbf.log
# Prints every run as it goes, then one summary table: req/s and p99 of GET and POST
# (load), resources/s of transaction ingest and of `fhirgate import` (bundle), per build and
# round, and the change of after against before in each round (and of the means).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE="${BEFORE:-/work/bench-bin/fhirgate-before}"
AFTER="${AFTER:-$(ls -t /work/bench-bin/fhirgate-after-* 2>/dev/null | head -1 || true)}"
BACKENDS="${BACKENDS:-sqlite postgres}"
LOAD_ROUNDS="${LOAD_ROUNDS:-2}"
BUNDLE_ROUNDS="${BUNDLE_ROUNDS:-1}"
DURATION="${DURATION:-20}"
CONNS="${CONNS:-32}"
CLIENTS="${CLIENTS:-8}"
LOAD_PORT="${LOAD_PORT:-28181}"
BUNDLE_PORT="${BUNDLE_PORT:-28182}"
OUT="${OUT:-/work/bench-ab-$(date +%Y%m%d-%H%M%S)}"
for b in "$BEFORE" "$AFTER"; do
  [ -n "$b" ] && [ -x "$b" ] || { echo "not an executable binary: '$b' (set BEFORE and AFTER)" >&2; exit 1; }
done
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"   # backend bench round build metric value
: > "$RESULTS"

echo "before: $BEFORE ($(sha256sum "$BEFORE" | cut -c1-12))"
echo "after:  $AFTER ($(sha256sum "$AFTER" | cut -c1-12))"
echo "backends: $BACKENDS; load: $LOAD_ROUNDS rounds of ${DURATION}s, $CONNS connections; bundle: $BUNDLE_ROUNDS rounds, $CLIENTS clients"
echo "raw output: $OUT"
echo "start $(date -Is); load average: $(uptime | sed 's/.*load average: //')"

# wrk latency to ms: 1.23ms, 850.00us, 1.02s
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.2f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else printf "%s", v }'
}
port_free() { [ -z "$(ss -Hltn "sport = :$1")" ]; }
# Other people's builds and tests running now (they make the figures noisy).
others() {
  local p
  p=$(ps -eo pid,pcpu,etime,args --sort=-pcpu | grep -E '[c]argo |[r]ustc |/target/(debug|release)/deps/' | cut -c1-120 | head -3 || true)
  [ -z "$p" ] || { echo "!! other processes running:"; echo "$p"; }
}
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }

# Parse one benches/load/run.sh output: the GET section, then the POST section.
parse_load() {
  local file="$1" backend="$2" round="$3" build="$4" section name rps p99 bad
  for section in GET POST; do
    # the lines of this section of wrk's output
    awk -v s="--- $section " 'index($0, s) == 1 { on = 1; next } /^--- / { on = 0 } on' "$file" > "$file.$section"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file.$section")
    p99=$(awk '$1 == "99%" { print $2 }' "$file.$section")
    p50=$(awk '$1 == "50%" { print $2 }' "$file.$section")
    bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file.$section")
    errs=$(awk '/Socket errors:/ { sub(/.*Socket errors: */, ""); print }' "$file.$section")
    record "$backend" load "$round" "$build" "${section}_rps" "${rps:-NA}"
    record "$backend" load "$round" "$build" "${section}_p50_ms" "$(to_ms "${p50:-NA}")"
    record "$backend" load "$round" "$build" "${section}_p99_ms" "$(to_ms "${p99:-NA}")"
    record "$backend" load "$round" "$build" "${section}_non2xx" "${bad:-0}"
    [ -z "$errs" ] || echo "!! $backend $section round $round $build: socket errors: $errs"
    [ -z "$bad" ] || echo "!! $backend $section round $round $build: $bad non-2xx/3xx responses"
  done
}

parse_bundle() {
  local file="$1" backend="$2" round="$3" build="$4" ingest import
  ingest=$(sed -n 's/^transaction ingest: .* s, \([0-9]*\) resources\/s$/\1/p' "$file")
  import=$(sed -n 's/^imported .* (\([0-9]*\) resources\/s);.*/\1/p' "$file")
  record "$backend" bundle "$round" "$build" ingest_rps "${ingest:-NA}"
  record "$backend" bundle "$round" "$build" import_rps "${import:-NA}"
  grep -q '^answers: *[0-9]* 200 *$' "$file" || echo "!! $backend bundle round $round $build: $(grep '^answers:' "$file" || echo 'no answers line')"
  grep -q ' 0 bad$' "$file" || echo "!! $backend import round $round $build: $(grep '^imported' "$file" || echo 'no import summary')"
}

# Run one benchmark with one build; keep going when a run fails (its figures stay NA).
run_one() {
  local kind="$1" backend="$2" round="$3" build="$4" bin="$5" file
  file="$OUT/$kind-$backend-r$round-$build.txt"
  echo
  echo "=== $kind $backend round $round: $build ($(date +%H:%M:%S), load average $(uptime | sed 's/.*load average: //'))"
  others
  local port=$LOAD_PORT
  [ "$kind" = load ] || port=$BUNDLE_PORT
  for _ in $(seq 1 60); do port_free "$port" && break; echo "port $port is taken, waiting"; sleep 1; done
  local rc=0
  if [ "$kind" = load ]; then
    BENCH_PORT=$LOAD_PORT FHIRGATE_BIN="$bin" SERVER_LOG="$file.server.log" benches/load/run.sh "$backend" "$DURATION" "$CONNS" > "$file" 2>&1 || rc=$?
  else
    BENCH_PORT=$BUNDLE_PORT FHIRGATE_BIN="$bin" SERVER_LOG="$file.server.log" benches/bundle/run.sh "$backend" "$CLIENTS" > "$file" 2>&1 || rc=$?
  fi
  cat "$file"
  [ "$rc" = 0 ] || echo "!! $kind $backend round $round $build: exit code $rc"
  # The server log holds two expected start-up warnings (auth off, development key); anything else is reported.
  local unexpected
  unexpected=$(sed 's/\x1b\[[0-9;]*m//g' "$file.server.log" 2>/dev/null \
    | grep -vE 'auth.enabled = false: every request|no master key configured: created a development key' \
    | sed -E 's/^[0-9T:.Z-]+ +//' | sort | uniq -c | sort -rn || true)
  [ -z "$unexpected" ] || { echo "!! server log of $kind $backend round $round $build ($file.server.log):"; echo "$unexpected" | head -8 | cut -c1-300; }
  if [ "$kind" = load ]; then parse_load "$file" "$backend" "$round" "$build"
  else parse_bundle "$file" "$backend" "$round" "$build"; fi
}

for backend in $BACKENDS; do
  for round in $(seq 1 "$LOAD_ROUNDS"); do
    run_one load "$backend" "$round" before "$BEFORE"
    run_one load "$backend" "$round" after "$AFTER"
  done
  for round in $(seq 1 "$BUNDLE_ROUNDS"); do
    run_one bundle "$backend" "$round" before "$BEFORE"
    run_one bundle "$backend" "$round" after "$AFTER"
  done
done
echo
echo "end $(date -Is); load average: $(uptime | sed 's/.*load average: //')"

# Summary: one row per backend, metric and round; before, after, change; then the means.
echo
echo "=== summary (after against before; p99: lower is better, so a rise is a regression)"
python3 - "$RESULTS" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
val = {}
order = []
for backend, bench, rnd, build, metric, v in rows:
    key = (backend, bench, metric)
    if key not in order:
        order.append(key)
    try:
        val[(key, int(rnd), build)] = float(v)
    except ValueError:
        val[(key, int(rnd), build)] = None
names = {"GET_rps": "GET Patient/{id} req/s", "GET_p99_ms": "GET p99 ms", "GET_p50_ms": "GET p50 ms",
         "POST_rps": "POST Patient req/s", "POST_p99_ms": "POST p99 ms", "POST_p50_ms": "POST p50 ms",
         "ingest_rps": "transaction ingest resources/s", "import_rps": "import resources/s"}
def fmt(x):
    return "NA" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.2f}")
def pct(b, a):
    return "NA" if a is None or b is None or b == 0 else f"{(a - b) / b * 100:+.1f} %"
print("| backend | figure | round | before | after | change |")
print("|---|---|---|---|---|---|")
worst = []
for key in order:
    backend, bench, metric = key
    if metric.endswith("_non2xx") or metric.endswith("_p50_ms"):
        continue
    rounds = sorted({r for (k, r, _b) in val if k == key})
    means = {}
    for build in ("before", "after"):
        xs = [val.get((key, r, build)) for r in rounds]
        xs = [x for x in xs if x is not None]
        means[build] = sum(xs) / len(xs) if xs else None
    for r in rounds:
        b, a = val.get((key, r, "before")), val.get((key, r, "after"))
        print(f"| {backend} | {names.get(metric, metric)} | {r} | {fmt(b)} | {fmt(a)} | {pct(b, a)} |")
        if a is not None and b:
            change = (a - b) / b * 100
            bad = change > 5 if metric.endswith("_ms") else change < -5
            if bad:
                worst.append(f"{backend} {names.get(metric, metric)} round {r}: {change:+.1f} %")
    if len(rounds) > 1:
        print(f"| {backend} | {names.get(metric, metric)} | mean | {fmt(means['before'])} | {fmt(means['after'])} | {pct(means['before'], means['after'])} |")
non2xx = [(k, r, b, v) for (k, r, b), v in val.items() if k[2].endswith("_non2xx") and v]
print()
print("non-2xx/3xx wrk responses: " + (", ".join(f"{k[0]} {k[2]} r{r} {b}: {v:.0f}" for k, r, b, v in non2xx) or "none"))
print("figures worse by more than 5 % (throughput down, or p99 up): " + ("; ".join(worst) or "none"))
PY
