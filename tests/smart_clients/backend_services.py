"""SMART Backend Services against fhirgate: keys made here with `cryptography`,
client assertions signed by PyJWT (RS384 and ES384), the token requested with
`requests`, then a system-level search. Run by tests/api/smart_auth/clients.rs:

    python3 tests/smart_clients/backend_services.py keys DIR
        makes an RSA 2048 key and an EC P-384 key, writes their private PEMs
        in DIR and their public JWK Set to DIR/jwks.json (for the client's
        registration); prints {"jwks_file": ..., "kids": {alg: kid}}.

    python3 tests/smart_clients/backend_services.py token '<config JSON>'
        config: {"fhir_base", "client_id", "keys_dir", "scope", "search"}.
        For each algorithm: discovery, a signed assertion, the token, the
        search; then the same assertion again (a replayed jti) and one signed
        by a key the client never registered, under a registered kid.
        Prints one JSON object; the Rust test decides.

Exit status 2: a package is missing (the message says what to install).
"""

import json
import os
import sys
import time
import uuid

try:
    import jwt
    import requests
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
except ImportError as e:
    sys.stderr.write(
        f"{e}: install the pinned packages with "
        "`python3 -m venv tests/smart_clients/.venv && "
        "tests/smart_clients/.venv/bin/pip install -r tests/smart_clients/requirements.txt`\n"
    )
    sys.exit(2)

ALGS = {"RS384": "rs384.pem", "ES384": "es384.pem"}


def new_key(alg):
    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


def public_jwk(alg, key, kid):
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def make_keys(directory):
    os.makedirs(directory, exist_ok=True)
    keys, kids = [], {}
    for alg, file in ALGS.items():
        key = new_key(alg)
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(directory, file), "wb") as f:
            f.write(pem)
        keys.append(public_jwk(alg, key, kid))
        kids[alg] = kid
    with open(os.path.join(directory, "kids.json"), "w") as f:
        json.dump(kids, f)
    jwks_file = os.path.join(directory, "jwks.json")
    with open(jwks_file, "w") as f:
        json.dump({"keys": keys}, f)
    print(json.dumps({"jwks_file": jwks_file, "kids": kids}))


def assertion(client_id, token_endpoint, key, alg, kid):
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "exp": now + 240,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def ask_token(token_endpoint, scope, signed):
    r = requests.post(
        token_endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed,
        },
        timeout=60,
    )
    try:
        body = r.json()
    except ValueError:
        body = {"unparsed": r.text[:500]}
    return r.status_code, body


def run(cfg):
    base = cfg["fhir_base"].rstrip("/")
    discovery = requests.get(f"{base}/.well-known/smart-configuration", timeout=60).json()
    token_endpoint = discovery["token_endpoint"]
    with open(os.path.join(cfg["keys_dir"], "kids.json")) as f:
        kids = json.load(f)
    out = {
        "token_endpoint_auth_methods": discovery.get("token_endpoint_auth_methods_supported"),
        "signing_algs": discovery.get("token_endpoint_auth_signing_alg_values_supported"),
    }
    for alg, file in ALGS.items():
        with open(os.path.join(cfg["keys_dir"], file), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        signed = assertion(cfg["client_id"], token_endpoint, key, alg, kids[alg])
        status, tok = ask_token(token_endpoint, cfg["scope"], signed)
        res = {
            "token_status": status,
            "token_type": tok.get("token_type"),
            "scope": tok.get("scope"),
            "expires_in": tok.get("expires_in"),
            "has_refresh_token": "refresh_token" in tok,
            "error": tok.get("error"),
        }
        if status == 200:
            r = requests.get(
                f"{base}/{cfg['search']}",
                headers={
                    "Authorization": f"Bearer {tok['access_token']}",
                    "Accept": "application/fhir+json",
                },
                timeout=60,
            )
            res["search_status"] = r.status_code
            bundle = r.json()
            res["search_total"] = bundle.get("total")
            res["search_found"] = sorted(
                f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            )
        status, again = ask_token(token_endpoint, cfg["scope"], signed)
        res["replayed_assertion"] = {"status": status, "error": again.get("error")}
        stranger = new_key(alg)
        forged = assertion(cfg["client_id"], token_endpoint, stranger, alg, kids[alg])
        status, refused = ask_token(token_endpoint, cfg["scope"], forged)
        res["unregistered_key"] = {"status": status, "error": refused.get("error")}
        out[alg] = res
    print(json.dumps(out))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("keys", "token"):
        sys.stderr.write("usage: backend_services.py keys DIR | token CONFIG_JSON\n")
        sys.exit(2)
    if sys.argv[1] == "keys":
        make_keys(sys.argv[2])
    else:
        run(json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()
