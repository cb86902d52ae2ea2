"""A confidential SMART client (client secret) with Python fhirclient 4.4.0.

Run by tests/api/smart_auth/clients.rs:

    python3 tests/smart_clients/confidential_flow.py '<config JSON>'

config: {"fhir_base", "client_id", "client_secret", "redirect_uri", "scope",
         "username", "password", "other_patient"}

fhirclient finds the OAuth endpoints in the CapabilityStatement, builds the
authorization URL (with PKCE S256), exchanges the code with HTTP Basic client
authentication, refreshes with `reauthorize()`, and reads the patient and the
patient's Observations through its models. The person in between is played by
`requests`: it fills fhirgate's login, patient picker and consent forms from
the HTML it is given. Prints one JSON object; the Rust test decides.
Exit status 2: a package is missing (the message says what to install).
"""

import json
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

try:
    import requests
    from fhirclient import client
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import (
        FHIRNotFoundException,
        FHIRPermissionDeniedException,
        FHIRUnauthorizedException,
    )
except ImportError as e:
    sys.stderr.write(
        f"{e}: install the pinned packages with "
        "`python3 -m venv tests/smart_clients/.venv && "
        "tests/smart_clients/.venv/bin/pip install -r tests/smart_clients/requirements.txt`\n"
    )
    sys.exit(2)


class Form(HTMLParser):
    """The first <form> of a page: its action and fields as a browser sees them."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.inputs = []  # dicts of attributes
        self.selects = {}  # name -> [option values]
        self.buttons = []  # (name, value)
        self._select = None
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._done:
            return
        if tag == "form":
            self._in_form = True
            self.action = a.get("action") or ""
        elif not self._in_form:
            return
        elif tag == "input":
            self.inputs.append(a)
        elif tag == "select":
            self._select = a.get("name")
            self.selects[self._select] = []
        elif tag == "option" and self._select is not None:
            self.selects[self._select].append(a.get("value", ""))
        elif tag == "button":
            self.buttons.append((a.get("name"), a.get("value")))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


def parse_form(html):
    f = Form()
    f.feed(html)
    return f if f.action is not None else None


def hidden(form):
    return [(i["name"], i.get("value", "")) for i in form.inputs if i.get("type") == "hidden"]


def play_the_user(session, authorize_url, cfg, pages):
    """Answers fhirgate's pages until it redirects; returns the redirect URL."""
    r = session.get(authorize_url, allow_redirects=False, timeout=60)
    for _ in range(6):
        if r.status_code in (302, 303):
            return r.headers["Location"]
        form = parse_form(r.text) if r.status_code == 200 else None
        if form is None:
            raise RuntimeError(f"no form on the page ({r.status_code}): {r.text[:500]}")
        fields = hidden(form)
        names = {i.get("name") for i in form.inputs}
        if "username" in names:
            pages.append("login")
            fields += [("username", cfg["username"]), ("password", cfg["password"])]
        elif "patient" in form.selects:
            pages.append("patient-picker")
            fields.append(("patient", cfg["pick_patient"]))
        elif any(i.get("type") == "checkbox" and i.get("name") == "scope" for i in form.inputs):
            pages.append("consent")
            fields += [
                ("scope", i["value"])
                for i in form.inputs
                if i.get("type") == "checkbox" and i.get("name") == "scope" and "checked" in i
            ]
            fields.append(("decision", "allow"))
        else:
            raise RuntimeError(f"a page this client does not know: {r.text[:500]}")
        r = session.post(urljoin(r.url, form.action), data=fields, allow_redirects=False, timeout=60)
    raise RuntimeError("no redirect after six pages")


def status_of(f):
    try:
        v = f()
        return {"status": 200, "value": v}
    except (
        FHIRNotFoundException,
        FHIRPermissionDeniedException,
        FHIRUnauthorizedException,
        requests.HTTPError,
    ) as e:
        return {"status": e.response.status_code, "value": None}


def observations(smart, **query):
    found = Observation.where(struct=query).perform_resources(smart.server)
    return [{"id": o.id, "subject": o.subject.reference if o.subject else None} for o in found]


def main():
    cfg = json.loads(sys.argv[1])
    settings = {
        "app_id": cfg["client_id"],
        "app_secret": cfg["client_secret"],
        "api_base": cfg["fhir_base"],
        "redirect_uri": cfg["redirect_uri"],
        "scope": cfg["scope"],
    }
    smart = client.FHIRClient(settings=settings)
    out = {"pages": []}
    authorize_url = smart.authorize_url
    q = parse_qs(urlsplit(authorize_url).query)
    out["authorize_params"] = {
        "names": sorted(q),
        "code_challenge_method": q.get("code_challenge_method", [None])[0],
        "aud": q.get("aud", [None])[0],
        "scope": q.get("scope", [None])[0],
    }
    callback = play_the_user(requests.Session(), authorize_url, cfg, out["pages"])
    out["redirected_to_registered_uri"] = callback.startswith(cfg["redirect_uri"] + "?")
    smart.handle_callback(callback)
    out["ready"] = smart.ready
    out["patient_id"] = smart.patient_id
    out["scope"] = (smart.launch_context or {}).get("scope")
    out["token_type"] = (smart.launch_context or {}).get("token_type")
    out["has_refresh_token"] = smart.server.auth.refresh_token is not None
    p = smart.patient
    out["patient"] = {"id": p.id, "family": p.name[0].family if p and p.name else None}
    out["observations"] = observations(smart, patient=smart.patient_id)
    out["all_observations"] = observations(smart)

    other = status_of(lambda: Patient.read(cfg["other_patient"], smart.server))
    out["other_patient_read"] = {"status": other["status"], "id": other["value"].id if other["value"] else None}
    other_obs = status_of(lambda: observations(smart, patient=cfg["other_patient"]))
    out["other_patient_observations"] = {"status": other_obs["status"], "observations": other_obs["value"]}

    before = smart.server.auth.access_token
    out["reauthorized"] = bool(smart.reauthorize())
    out["access_token_changed"] = smart.server.auth.access_token not in (None, before)
    out["patient_after_refresh"] = Patient.read(smart.patient_id, smart.server).id
    print(json.dumps(out))


if __name__ == "__main__":
    main()
