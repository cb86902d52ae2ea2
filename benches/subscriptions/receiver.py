#!/usr/bin/env python3
"""A rest-hook receiver for benches/subscriptions/run.sh: answers 200 to every POST and
records, per notification, the time it arrived, its event number and subscription (from
the path), and the notified version's lastModified (the commit's clock reading, on this
machine). Usage: receiver.py PORT OUT_FILE. `report OUT_FILE [SINCE_US]` prints the count
and the latency p50/p95/p99/max (arrival - lastModified) of the lines after SINCE_US, and
the rate of arrivals between the first and the last of them."""
import asyncio
import json
import sys
import time
from datetime import datetime


def micros(instant):
    return int(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() * 1_000_000)


class Hook(asyncio.Protocol):
    """One connection: HTTP/1.1 requests with Content-Length bodies, kept alive; each is
    answered 200 at once. asyncio rather than http.server: one thread, no thread per
    connection, a listen backlog of 1,024 (http.server's 5 drops connection attempts under
    bursts, and the client's SYN is retried a second later)."""

    def __init__(self, sink):
        self.sink = sink
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4:end + 4 + n]
            self.buf = self.buf[end + 4 + n:]
            arrived = time.time_ns() // 1000
            modified = 0
            try:
                modified = micros(json.loads(body)["entry"][0]["response"]["lastModified"])
            except Exception:
                pass
            self.sink.write(f"{arrived} {headers.get('x-fhirgate-event-number')} {path} {modified}\n")
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def serve(port, out):
    sink = open(out, "a", buffering=1)

    async def main():
        server = await asyncio.get_running_loop().create_server(
            lambda: Hook(sink), "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


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
