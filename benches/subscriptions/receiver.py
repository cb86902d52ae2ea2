#!/usr/bin/env python3
"""A rest-hook receiver for benches/subscriptions/run.sh: answers 200 to every POST and
records, per notification, the time it arrived, its event number and subscription (from
the path), and the notified version's lastModified (the commit's clock reading, on this
machine). Usage: receiver.py PORT OUT_FILE. `report OUT_FILE [SINCE_US]` prints the count
and the latency p50/p95/p99/max (arrival - lastModified) of the lines after SINCE_US, and
the rate of arrivals between the first and the last of them."""
import json
import sys
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def micros(instant):
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1_000_000)


def serve(port, out):
    sink = open(out, "a", buffering=1)

    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            arrived = time.time_ns() // 1000
            body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            modified = 0
            try:
                entry = json.loads(body)["entry"][0]
                modified = micros(entry["response"]["lastModified"])
            except Exception:
                pass
            sink.write(f"{arrived} {self.headers.get('X-Fhirgate-Event-Number')} {self.path} {modified}\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()


def report(path, since=0):
    lat = []
    first = last = None
    for line in open(path):
        arrived, _, _, modified = line.split()
        arrived, modified = int(arrived), int(modified)
        if arrived >= since and modified:
            lat.append((arrived - modified) / 1000.0)
            first = arrived if first is None else min(first, arrived)
            last = arrived if last is None else max(last, arrived)
    lat.sort()
    if not lat:
        print("no notifications")
        return
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"notifications {len(lat)}  latency ms p50 {pick(0.5):.1f}  p95 {pick(0.95):.1f}  "
          f"p99 {pick(0.99):.1f}  max {lat[-1]:.1f}  "
          f"arrivals over {(last - first) / 1e6:.1f} s: {len(lat) / max((last - first) / 1e6, 1e-3):.0f}/s")


if __name__ == "__main__":
    if sys.argv[1] == "report":
        report(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    else:
        serve(int(sys.argv[1]), sys.argv[2])
