"""A patient's access token for benches/load/run.sh (AUTH=patient): the standalone
launch of a public client with PKCE, the user played through fhirgate's login and
consent forms with `requests`, the code exchanged. Prints the access token.

    python3 benches/load/patient_token.py ROOT CLIENT_ID REDIRECT_URI USERNAME PASSWORD

ROOT: the server's root (http://127.0.0.1:18181). Needs `requests` (the venv of
tests/smart_clients has it: tests/smart_clients/.venv/bin/python).
"""

import base64
import hashlib
import secrets
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests


class Form(HTMLParser):
    """The first form of a page: its action, hidden inputs and scope checkboxes."""

    def __init__(self):
        super().__init__()
        self.action, self.hidden, self.scopes, self.names = None, [], [], set()
        self._in = self._done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._done:
            return
        if tag == "form":
            self._in, self.action = True, a.get("action") or ""
        elif self._in and tag == "input":
            self.names.add(a.get("name"))
            if a.get("type") == "hidden":
                self.hidden.append((a["name"], a.get("value", "")))
            elif a.get("type") == "checkbox" and a.get("name") == "scope":
                self.scopes.append(a["value"])

    def handle_endtag(self, tag):
        if tag == "form" and self._in:
            self._in, self._done = False, True


def main():
    root, client_id, redirect, username, password = sys.argv[1:6]
    base = f"{root}/fhir"
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect,
        "scope": "launch/patient patient/*.rs", "state": state, "aud": base,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    s = requests.Session()
    r = s.get(f"{root}/auth/authorize?{query}", allow_redirects=False, timeout=30)
    for _ in range(4):
        if r.status_code in (302, 303):
            break
        f = Form()
        f.feed(r.text)
        if f.action is None:
            sys.exit(f"no form ({r.status_code}): {r.text[:300]}")
        fields = list(f.hidden)
        if "username" in f.names:
            fields += [("username", username), ("password", password)]
        else:
            fields += [("scope", v) for v in f.scopes] + [("decision", "allow")]
        r = s.post(urljoin(r.url, f.action), data=fields, allow_redirects=False, timeout=30)
    params = parse_qs(urlsplit(r.headers.get("Location", "")).query)
    if params.get("state") != [state] or "code" not in params:
        sys.exit(f"no code: {r.status_code} {r.headers.get('Location')}")
    t = requests.post(f"{root}/auth/token", data={
        "grant_type": "authorization_code", "code": params["code"][0],
        "redirect_uri": redirect, "code_verifier": verifier, "client_id": client_id,
    }, timeout=30)
    t.raise_for_status()
    print(t.json()["access_token"])


if __name__ == "__main__":
    main()
