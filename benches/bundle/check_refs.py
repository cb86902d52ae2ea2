"""Reads every resource of a fhirgate server through its search API and checks that every
Reference.reference (`Type/id`) names a stored resource. Usage: check_refs.py BASE_URL"""
import json
import sys
import urllib.request

base = sys.argv[1].rstrip("/")


def get(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)


types = [r["type"] for r in get(f"{base}/metadata")["rest"][0]["resource"] if r["type"] != "AuditEvent"]
stored, refs = set(), []


def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "reference" and isinstance(x, str):
                if not x.startswith("#"):
                    refs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)


for t in types:
    url = f"{base}/{t}?_count=1000&_total=none"
    while url:
        page = get(url)
        for e in page.get("entry", []):
            r = e["resource"]
            stored.add(f"{r['resourceType']}/{r['id']}")
            walk(r)
        url = next((l["url"] for l in page.get("link", []) if l["relation"] == "next"), None)
bad = [r for r in refs if r not in stored]
print(f"{len(stored)} resources, {len(refs)} references, {len(bad)} unresolved")
for r in bad[:20]:
    print("  unresolved:", r)
sys.exit(1 if bad else 0)
