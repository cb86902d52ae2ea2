#!/usr/bin/env python3
"""Loads NDJSON resources into fhirgate with PUT (ids kept), from several threads
over keep-alive connections, and reports resources per second.
    load.py BASE_URL FILE.ndjson [THREADS]"""
import http.client
import json
import queue
import sys
import threading
import time
from urllib.parse import urlparse


def worker(base, q, errors, counter, lock):
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while True:
        line = q.get()
        if line is None:
            return
        r = json.loads(line)
        path = f"{u.path}/{r['resourceType']}/{r['id']}"
        for attempt in range(5):
            try:
                conn.request("PUT", path, body=line.encode("utf-8"),
                             headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 300:
                    with lock:
                        errors.append((resp.status, path))
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
                time.sleep(0.1 * (attempt + 1))
        with lock:
            counter[0] += 1


def main():
    base, path = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    q = queue.Queue(maxsize=10000)
    errors, counter, lock = [], [0], threading.Lock()
    ts = [threading.Thread(target=worker, args=(base, q, errors, counter, lock), daemon=True)
          for _ in range(threads)]
    for t in ts:
        t.start()
    start = time.time()
    last = start
    with open(path, encoding="utf-8") as f:
        for line in f:
            q.put(line)
            now = time.time()
            if now - last > 30:
                print(f"  {counter[0]} resources, {counter[0] / (now - start):.0f}/s", flush=True)
                last = now
    for _ in ts:
        q.put(None)
    for t in ts:
        t.join()
    took = time.time() - start
    print(f"loaded {counter[0]} resources in {took:.0f} s: {counter[0] / took:.0f} resources/s; {len(errors)} errors")
    for e in errors[:10]:
        print("  error", e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
