#!/usr/bin/env bash
# Memory after large requests (issue 13 item 3): starts the real `fhirgate serve` on a fresh
# database and reads the server process's VmRSS and VmHWM (/proc/PID/status) at idle after
# start, then around a series of the largest requests the default settings admit
# (server.max_body_bytes 16 MiB, server.max_array_items 50,000, bundle.max_entries 10,000):
#   1. create a Patient with 10,000 names and a large narrative, just under 16 MiB of JSON
#      (10,000 six-letter names make ~230,000 index rows: search.max_index_rows admits no
#      more; the 2026-12-04 figures in docs/benchmarks.md were taken with 50,000, before it)
#      (the bulk is in the narrative: see patient() below for why);
#   2. read it back as JSON, 3. and as XML (_format=xml);
#   4. a transaction Bundle just under 16 MiB of 10,000 small Observations;
#   5. a search answering one page of ten Patients of 5,000 names, ~1.6 MB each;
#   6. 8 creates of the 16 MiB Patient at once, 7. 8 reads at once (4 XML, 4 page searches),
#      each with one client reading a small Patient every 100 ms beside them (its worst
#      latency is printed);
#   then idle 5 s and 30 s. Each row: wall time, the answers' statuses, VmRSS at the end of
# the phase, the highest VmRSS sampled every 20 ms during it, and VmHWM (peak since start).
# Only fhirgate's own process is measured (PostgreSQL's backends are not).
# Usage: benches/memory/run.sh sqlite|postgres
# FHIRGATE_BIN=path runs that binary instead of target/release/fhirgate.
# SERVER_ENV="NAME=value ..." is set for the server process only (allocator tuning such as
# MALLOC_ARENA_MAX=2 or _RJEM_MALLOC_CONF=..., or LD_PRELOAD of another malloc).
# LABEL=text names the run in the table's title. Settings pass through FHIRGATE_* variables.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKEND="${1:-sqlite}"
BIN="${FHIRGATE_BIN:-target/release/fhirgate}"
[ -x "$BIN" ] || { echo "$BIN is not built (cargo build --release, or FHIRGATE_BIN=...)" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT="${BENCH_PORT:-18183}"
# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_database memory
bench_core_package
# shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=value words
bench_serve ${SERVER_ENV:-}
echo "# ${LABEL:-$BIN} on $BACKEND (SERVER_ENV=${SERVER_ENV:-none}), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$SERVER" "$PORT" <<'PY'
import http.client, json, random, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

pid, port = int(sys.argv[1]), int(sys.argv[2])
MIB = 1024 * 1024


def mem():
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


peak = [0.0]
stop = threading.Event()


def sampler():
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], mem()["VmRSS"])
        except OSError:
            return
        time.sleep(0.02)


threading.Thread(target=sampler, daemon=True).start()


def call(method, path, body=None, accept="application/fhir+json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = "application/fhir+json"
        headers["Prefer"] = "return=minimal"
    try:
        conn.request(method, "/fhir" + path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        location[0] = r.getheader("Location") or location[0]
        return r.status, data
    except OSError as e:
        return f"error {type(e).__name__}", b""
    finally:
        conn.close()


rows = []
location = [None]


def phase(name, requests, concurrent=False, beside=False):
    """Runs the (method, path, body, accept) requests, one after the other or all at once;
    with `beside`, one client reads a small Patient every 100 ms meanwhile."""
    peak[0] = mem()["VmRSS"]
    lat, done = [], threading.Event()

    def cheap():
        while not done.is_set():
            t = time.perf_counter()
            s, _ = call("GET", "/Patient/small")
            lat.append(((time.perf_counter() - t) * 1000, s))
            done.wait(0.1)

    side = threading.Thread(target=cheap) if beside else None
    if side:
        side.start()
    t = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(requests)) as ex:
            answers = list(ex.map(lambda r: call(*r), requests))
    else:
        answers = [call(*r) for r in requests]
    took = time.perf_counter() - t
    done.set()
    if side:
        side.join()
    statuses = {}
    for s, _ in answers:
        statuses[s] = statuses.get(s, 0) + 1
    note = " ".join(f"{n}x{s}" for s, n in statuses.items())
    if answers and len(answers[0][1]) > 0:
        note += f", {len(answers[0][1]) / MIB:.1f} MiB answer"
    if side:
        worst = max(lat)[0] if lat else float("nan")
        bad = sum(1 for _, s in lat if s != 200)
        note += f"; beside: {len(lat)} GETs, max {worst:.0f} ms, {bad} not 200"
    m = mem()
    rows.append((name, f"{took:.1f}", note, m["VmRSS"], peak[0], m["VmHWM"]))
    for s, body in answers:
        if s not in (200, 201):
            print(f"  {name}: {s} {body[:300]!r}", file=sys.stderr)
    return answers


def idle(name, seconds):
    peak[0] = mem()["VmRSS"]
    time.sleep(seconds)
    m = mem()
    rows.append((name, f"{seconds}", "", m["VmRSS"], peak[0], m["VmHWM"]))


rng = random.Random(13)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word(n):
    return "".join(rng.choice(LETTERS) for _ in range(n)).capitalize()


def patient(n, size, pid_=None, identifier=None):
    """A Patient of n HumanNames (a 6-letter family each, all different) and a narrative
    that brings its JSON to about `size` bytes. The bulk is in the narrative because what a
    name costs is its search index rows: 50,000 names of about 330 bytes each (family,
    given, prefix, a 250-character text) ran for more than 17 minutes and past 13 GB
    resident in a debug build (the text's trigrams), so that shape does not finish."""
    p = {"resourceType": "Patient"}
    if pid_:
        p["id"] = pid_
    if identifier:
        p["identifier"] = [{"system": "urn:bench", "value": identifier}]
    p["name"] = [{"family": word(6)} for _ in range(n)]
    p["text"] = {"status": "generated", "div": ""}
    pad = size - len(json.dumps(p, separators=(",", ":")))
    words = " ".join(word(9) for _ in range(max(1, pad // 10 - 10)))
    p["text"]["div"] = f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{words}</p></div>'
    return json.dumps(p, separators=(",", ":")).encode()


big = patient(10_000, 16 * MIB - 64 * 1024)
assert len(big) < 16 * MIB, len(big)
page_patients = [patient(5_000, 1600 * 1024, f"page{i}", "page") for i in range(10)]
note_text = " ".join(word(9) for _ in range(120))
entries = [{
    "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
    "resource": {"resourceType": "Observation", "status": "final",
                 "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                 "subject": {"reference": "Patient/small"}, "effectiveDateTime": "2026-12-04T07:00:00Z",
                 "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
                 "note": [{"text": note_text}]},
    "request": {"method": "POST", "url": "Observation"}} for i in range(10_000)]
tx = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}, separators=(",", ":")).encode()
while len(tx) >= 16 * MIB:
    note_text = note_text[:-50]
    for e in entries:
        e["resource"]["note"][0]["text"] = note_text
    tx = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}, separators=(",", ":")).encode()
print(f"bodies: Patient {len(big) / MIB:.2f} MiB (10,000 names), transaction {len(tx) / MIB:.2f} MiB "
      f"(10,000 Observations), page Patients {len(page_patients[0]) / MIB:.2f} MiB each")

time.sleep(2)
m = mem()
rows.append(("idle after start", "", "", m["VmRSS"], m["VmRSS"], m["VmHWM"]))
s, _ = call("PUT", "/Patient/small", json.dumps({"resourceType": "Patient", "id": "small"}).encode())
assert s in (200, 201), s
location[0] = None
phase("1. create Patient, 10,000 names", [("POST", "/Patient", big)])
big_id = (location[0] or "/Patient/missing/").split("/Patient/")[1].split("/")[0]
phase("2. read it as JSON", [("GET", f"/Patient/{big_id}")])
phase("3. read it as XML", [("GET", f"/Patient/{big_id}?_format=xml", None, "application/fhir+xml")])
phase("4. transaction, 10,000 Observations", [("POST", "", tx)])
for i, p in enumerate(page_patients):
    call("PUT", f"/Patient/page{i}", p)
search = "/Patient?identifier=urn:bench|page&_count=10"
phase("5. search, a page of 10 x 5,000 names", [("GET", search)])
idle("idle 5 s", 5)
phase("6. 8 creates at once", [("POST", "/Patient", big)] * 8, concurrent=True, beside=True)
phase("7. 8 reads at once (4 XML, 4 pages)",
      [("GET", f"/Patient/{big_id}?_format=xml", None, "application/fhir+xml")] * 4 + [("GET", search)] * 4,
      concurrent=True, beside=True)
idle("idle 5 s", 5)
idle("idle 30 s more", 30)
stop.set()

print(f"| phase | s | answers | VmRSS after (MiB) | peak VmRSS in phase | VmHWM |")
print("|---|---|---|---|---|---|")
for name, took, note, rss, pk, hwm in rows:
    print(f"| {name} | {took} | {note} | {rss:.0f} | {pk:.0f} | {hwm:.0f} |")
PY
