#!/usr/bin/env python3
"""Regenerates the StructureDefinitions of fhirgate's own FHIR package (profiles/).

fhirgate's AuditEvents follow IHE BALP. BALP's profiles fix `outcome` to success, so the
failure and denial events claim variants made here: each is the BALP profile's snapshot
with the success-only rules lifted (and, where fhirgate's event has a different reason to
exist, a few slices relaxed), rebased on the core AuditEvent. The snapshots are derived
from the BALP package, not written by hand, and not committed (they copy BALP's and the
core specification's element definitions): a set-up step makes them, from the package's
.tgz or its folder in the package cache:

    python3 tools/generate_profiles.py ../shared/fhir-packages/ihe.iti.balp-1.1.4.tgz
    python3 tools/generate_profiles.py ~/.fhir/packages/ihe.iti.balp#1.1.4

The BALP package itself is not committed (CC-BY-4.0, downloaded like any package).
"""

import copy
import json
import sys
import tarfile
from pathlib import Path

CANONICAL = "https://fhirgate.org/fhir"
SD = CANONICAL + "/StructureDefinition/"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
CORE_AUDIT = "http://hl7.org/fhir/StructureDefinition/AuditEvent"
VERSION = "0.1.0"
OUT = Path(__file__).resolve().parent.parent / "profiles"


def balp(source):
    """The BALP StructureDefinitions, from the package's .tgz or from its folder in a
    package cache (`~/.fhir/packages/ihe.iti.balp#1.1.4`, after `fhirgate packages
    install`)."""
    out = {}
    folder = Path(source)
    if folder.is_dir():
        for f in sorted((folder / "package").glob("StructureDefinition-*.json")):
            sd = json.loads(f.read_text())
            out[sd["url"]] = sd
        return out
    with tarfile.open(source) as t:
        for m in t.getmembers():
            if m.name.startswith("package/StructureDefinition-") and m.name.endswith(".json"):
                sd = json.load(t.extractfile(m))
                out[sd["url"]] = sd
    return out


class Profile:
    def __init__(self, source, name, title, description):
        self.sd = copy.deepcopy(source)
        self.name = name
        self.changed = {}
        sd = self.sd
        for key in ["text", "date", "publisher", "contact", "jurisdiction", "copyright", "mapping", "extension", "identifier"]:
            sd.pop(key, None)
        sd["id"] = "fhirgate-" + name
        sd["url"] = SD + name
        sd["version"] = VERSION
        sd["name"] = name.replace(".", "")
        sd["title"] = title
        sd["status"] = "active"
        sd["publisher"] = "fhirgate"
        sd["description"] = description + f"\n\nDerived from {source['url']} (IHE BALP {source.get('version', '')}, CC-BY-4.0)."
        sd["baseDefinition"] = CORE_AUDIT
        sd["derivation"] = "constraint"

    def element(self, eid):
        for e in self.sd["snapshot"]["element"]:
            if e["id"] == eid:
                return e
        raise KeyError(f"{self.name}: no element {eid}")

    def note(self, e, **props):
        d = self.changed.setdefault(e["id"], {"id": e["id"], "path": e["path"]})
        d.update(props)

    def set(self, eid, **props):
        e = self.element(eid)
        e.update(props)
        self.note(e, **props)

    def drop(self, eid, *keys):
        e = self.element(eid)
        for k in keys:
            e.pop(k, None)
        self.note(e, **{k: None for k in keys})

    def remove_slice(self, eid):
        """Removes a slice and its children (a slice fhirgate's event never has)."""
        els = self.sd["snapshot"]["element"]
        self.sd["snapshot"]["element"] = [
            e for e in els if e["id"] != eid and not e["id"].startswith(eid + ".")
        ]
        self.changed[eid] = {"id": eid, "path": eid.split(":")[0],
                            "sliceName": eid.split(":")[-1], "max": "0"}

    def rename_slice(self, old, new):
        for e in self.sd["snapshot"]["element"]:
            if e["id"] == old or e["id"].startswith(old + "."):
                e["id"] = new + e["id"][len(old):]
            if e["id"] == new:
                e["sliceName"] = new.split(":")[-1]

    def write(self):
        elements = [e for e in self.changed.values()]
        # A differential lists what differs from the base; `None` marks a removed rule.
        self.sd["differential"] = {
            "element": [{k: v for k, v in e.items() if v is not None} for e in elements]
        }
        path = OUT / f"StructureDefinition-{self.sd['id']}.json"
        path.write_text(json.dumps(self.sd, indent=2, ensure_ascii=False) + "\n")
        return path


def failure_variants(defs):
    """Failures and denials of the RESTful interactions: BALP's shape, any outcome; the
    data entity may be absent (a refused create has no resource)."""
    made = []
    for name in ["Read", "PatientRead", "Query", "Create", "PatientCreate", "Update",
                 "PatientUpdate", "Delete", "PatientDelete"]:
        src = defs[BALP + "IHE.BasicAudit." + name]
        p = Profile(src, "AuditEvent.Failure." + name, f"fhirgate failed or denied {name}",
                    f"A {name} interaction that failed or was denied: the shape of BALP {name} "
                    "with any outcome (4 or 8) and its reason in outcomeDesc.")
        p.drop("AuditEvent.outcome", "patternCode")
        try:
            p.set("AuditEvent.entity:data", min=0)
        except KeyError:
            pass
        made.append(p)
    return made


def token_request_failure(defs):
    p = Profile(defs[BALP + "IHE.IUA.71"], "AuditEvent.Failure.TokenRequest",
                "fhirgate refused token request",
                "A token request (ITI-71 shaped) that the authorization server refused, with "
                "the OAuth error in outcomeDesc.")
    p.drop("AuditEvent.outcome", "patternCode")
    return [p]


def authz(defs):
    p = Profile(defs[BALP + "IHE.BasicAudit.AuthZconsent"], "AuditEvent.AuthZ",
                "fhirgate authorization decision",
                "An authorization decision of fhirgate (AuthZconsent shaped): permit when a "
                "token is issued or a user consents, deny with the reason in outcomeDesc. "
                "Unlike BALP's AuthZconsent the user's organization, the patient and the "
                "Consent resource are recorded when known (a backend service has neither "
                "user nor patient, a scope decision has no Consent resource), and the "
                "X-Request-Id entity ties the decision to its request.")
    p.remove_slice("AuditEvent.agent:userorg")
    p.set("AuditEvent.agent", min=2)
    p.set("AuditEvent.agent:user", min=0)
    p.set("AuditEvent.entity", min=1)
    e = p.element("AuditEvent.entity")
    e["slicing"]["rules"] = "open"
    p.note(e, slicing=e["slicing"])
    p.set("AuditEvent.entity:patient", min=0)
    p.set("AuditEvent.entity:consent", min=0)
    return [p]


def rest(defs):
    p = Profile(defs[BALP + "IHE.BasicAudit.Query"], "AuditEvent.Rest",
                "fhirgate RESTful interaction without a BALP pattern",
                "A RESTful interaction that BALP has no pattern for (history, batch, "
                "transaction, operations, capabilities), in the shape of BALP Query: client "
                "and server agents, the X-Request-Id entity, the restful-interaction code in "
                "subtype; any outcome.")
    p.rename_slice("AuditEvent.subtype:anySearch", "AuditEvent.subtype:interaction")
    p.set("AuditEvent.subtype:interaction", binding={
        "strength": "required",
        "valueSet": CANONICAL + "/ValueSet/restful-interaction",
    })
    p.drop("AuditEvent.action", "patternCode")
    p.drop("AuditEvent.outcome", "patternCode")
    p.remove_slice("AuditEvent.entity:query")
    return [p]


def authentication(defs):
    p = Profile(defs[BALP + "IHE.IUA.71"], "AuditEvent.Authentication",
                "fhirgate authentication event",
                "Sign-ins (succeeded, failed, account locked), token revocation and "
                "introspection, and throttled requests of the authorization server, in the "
                "shape of ITI-71: the client when known, the authorization server, the user "
                "when known; fhirgate's event code in subtype; any outcome.")
    p.drop("AuditEvent.type", "patternCoding")
    p.drop("AuditEvent.subtype", "patternCoding")
    p.set("AuditEvent.subtype", max="*")
    p.drop("AuditEvent.outcome", "patternCode")
    a = p.element("AuditEvent.agent")
    a["slicing"]["rules"] = "open"
    p.set("AuditEvent.agent", min=1, max="*", slicing=a["slicing"])
    p.set("AuditEvent.agent:client", min=0)
    ent = p.element("AuditEvent.entity")
    ent["slicing"]["rules"] = "open"
    p.set("AuditEvent.entity", min=0, max="*", slicing=ent["slicing"])
    p.set("AuditEvent.entity:token-request", min=0)
    return [p]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    defs = balp(sys.argv[1])
    profiles = (failure_variants(defs) + token_request_failure(defs) + authz(defs)
                + rest(defs) + authentication(defs))
    for old in OUT.glob("StructureDefinition-*.json"):
        old.unlink()
    # Every RESTful interaction code (R4 has value sets for the type and the system
    # level only; the code system's implicit value set is not in the core package).
    vs = {
        "resourceType": "ValueSet",
        "id": "fhirgate-restful-interaction",
        "url": CANONICAL + "/ValueSet/restful-interaction",
        "version": VERSION,
        "name": "RestfulInteraction",
        "title": "Every RESTful interaction",
        "status": "active",
        "publisher": "fhirgate",
        "description": "Every code of http://hl7.org/fhir/restful-interaction.",
        "compose": {"include": [{"system": "http://hl7.org/fhir/restful-interaction"}]},
    }
    (OUT / "ValueSet-fhirgate-restful-interaction.json").write_text(json.dumps(vs, indent=2) + "\n")
    for p in profiles:
        print(p.write().name)


if __name__ == "__main__":
    main()
