#!/usr/bin/env python3
"""Latency of the audit benchmark's searches (issue 14) against a running fhirgate.

Usage: queries.py BASE_URL ROUNDS PATIENTS USERS [DAYS]
  BASE_URL  e.g. http://127.0.0.1:18190/fhir (authorization off)
  ROUNDS    searches per query shape, one at a time on one keep-alive connection
  PATIENTS, USERS  as given to the loader (ids p0.. and Practitioner/pr0..)
  DAYS      the loader's --days (the date bounds are drawn inside that span)

Query shapes (the issue's two, each for typical and for the busiest values):
  patient-date       AuditEvent?patient=Patient/pN&date=ge<a day within the span>
  agent-sorted       AuditEvent?agent=Practitioner/prU&_sort=-date&_count=50 (U drawn from the
                     users at large; the loader's users are skewed, low numbers are busy)
  agent-busiest      the same for Practitioner/pr0, the busiest user
Prints one JSON line per shape: rounds, p50/p95/p99/max in ms, the mean number of matches
(from `total` where the server gives it, otherwise the entries on the page), and every
non-200 answer's status (a failed search is counted and reported, never dropped).
"""
import datetime
import http.client
import json
import random
import sys
import time
import urllib.parse


def main():
    base, rounds, patients, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    days = int(sys.argv[5]) if len(sys.argv) > 5 else 730
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    rng = random.Random(7)
    now = datetime.datetime.now(datetime.timezone.utc)

    def day_within():
        d = now - datetime.timedelta(days=rng.randrange(1, days))
        return d.strftime("%Y-%m-%d")

    shapes = {
        "patient-date": lambda: f"patient=Patient/p{rng.randrange(patients)}&date=ge{day_within()}",
        "agent-sorted": lambda: f"agent=Practitioner/pr{rng.randrange(users)}&_sort=-date&_count=50",
        "agent-busiest": lambda: "agent=Practitioner/pr0&_sort=-date&_count=50",
    }
    for name, make in shapes.items():
        times, matches, failures = [], [], {}
        for _ in range(rounds):
            query = make()
            t0 = time.perf_counter()
            conn.request("GET", f"{url.path}/AuditEvent?{query}", headers={"Accept": "application/fhir+json"})
            resp = conn.getresponse()
            body = resp.read()
            ms = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                failures[resp.status] = failures.get(resp.status, 0) + 1
                continue
            times.append(ms)
            bundle = json.loads(body)
            matches.append(bundle.get("total", len(bundle.get("entry", []))))
        times.sort()

        def pct(p):
            return round(times[min(len(times) - 1, int(len(times) * p))], 1) if times else None

        print(json.dumps({
            "shape": name,
            "rounds": rounds,
            "ok": len(times),
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "max_ms": round(times[-1], 1) if times else None,
            "mean_matches": round(sum(matches) / len(matches), 1) if matches else None,
            "failures": failures,
        }), flush=True)


if __name__ == "__main__":
    main()
