#!/usr/bin/env python3
"""Signed client assertions for the token endpoint benchmark (benches/token/run.sh).

  assertions.py key DIR ALG
      makes a key pair for ALG (ES384: P-384; RS384: RSA 2048) in DIR/key.pem and its
      public JWK Set (kid "bench-1") in DIR/jwks.json, for `fhirgate clients add --jwks-file`.
  assertions.py sign DIR ALG CLIENT_ID TOKEN_ENDPOINT N SCOPE OUT
      writes N token request bodies to OUT, one a line: grant_type=client_credentials,
      scope, client_assertion_type and a client assertion (SMART Backend Services:
      iss = sub = CLIENT_ID, aud = TOKEN_ENDPOINT, exp 280 s ahead, a unique jti), signed
      with DIR/key.pem. fhirgate refuses an assertion whose exp is more than 5 minutes
      ahead and a jti it has seen before, so the file is usable once, within 280 s.

Signing uses both cores (multiprocessing); needs PyJWT and cryptography.
"""
import json
import multiprocessing
import os
import sys
import time
import urllib.parse
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

KID = "bench-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def make_key(directory, alg):
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    elif alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        sys.exit(f"alg must be ES384 or RS384, not {alg}")
    jwk.update({"kid": KID, "alg": alg, "use": "sig"})
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(os.path.join(directory, "key.pem"), "wb") as f:
        f.write(pem)
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)


_STATE = {}


def _init(pem, alg, client_id, aud, scope, exp):
    _STATE.update(
        key=serialization.load_pem_private_key(pem, password=None),
        alg=alg, client_id=client_id, aud=aud, scope=scope, exp=exp,
    )


def _body(_):
    s = _STATE
    now = int(time.time())
    claims = {
        "iss": s["client_id"],
        "sub": s["client_id"],
        "aud": s["aud"],
        "iat": now,
        "exp": s["exp"],
        "jti": str(uuid.uuid4()),
    }
    assertion = jwt.encode(claims, s["key"], algorithm=s["alg"], headers={"kid": KID})
    return urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "scope": s["scope"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    })


def sign(directory, alg, client_id, aud, n, scope, out):
    with open(os.path.join(directory, "key.pem"), "rb") as f:
        pem = f.read()
    exp = int(time.time()) + 280
    start = time.time()
    with multiprocessing.Pool(
        os.cpu_count(), initializer=_init, initargs=(pem, alg, client_id, aud, scope, exp)
    ) as pool:
        bodies = pool.map(_body, range(n), chunksize=500)
    with open(out, "w") as f:
        for b in bodies:
            f.write(b + "\n")
    print(f"{n} {alg} assertions signed in {time.time() - start:.1f} s, exp {exp}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "key":
        make_key(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 9 and sys.argv[1] == "sign":
        _, _, d, alg, cid, aud, n, scope, out = sys.argv
        sign(d, alg, cid, aud, int(n), scope, out)
    else:
        sys.exit(__doc__)
