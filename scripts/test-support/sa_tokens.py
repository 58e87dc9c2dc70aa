"""Kubernetes service-account tokens minted by PyJWT and `cryptography`, a JOSE implementation
nobody here wrote, in the shape the API server issues them: a header of `alg` and `kid` only,
RS256 with a 2048-bit RSA key or ES256 with a P-256 key, and the `kubernetes.io` claim of a
token the kubelet requested for a pod. The tests of the CA and the end-to-end tests share it.

Usage: sa_tokens.py < SPEC.json

SPEC: {"keys": [{"kid": "k1", "kty": "RSA" | "EC"}, ...],
       "tokens": [{"name": "...", "key": "k1", "namespace": "ns", "service_account": "sa",
                   "audience": "trellis-ca",                 # optional, this by default
                   "set": {"exp": 1, "kubernetes.io.pod": {}},  # optional, dotted paths
                   "remove": ["exp"],                          # optional, dotted paths
                   "headers": {"crit": ["x"], "kid": null},     # optional, null removes
                   "forge": "none" | "hs256-public-key" | "tamper" | "alg-mismatch"}]}

Prints one JSON object: {"jwks": the public JWK Set of every key, "tokens": {name: token}}.
Forgeries: an unsigned token (`alg: none`); HS256 with the RSA public key (PEM) as the HMAC
secret; a good token with one signature character changed; a token signed with the key's
algorithm but whose header names the other one.
"""

import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode


def make_key(spec):
    if spec["kty"] == "RSA":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg, public_jwk = "RS256", RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        alg, public_jwk = "ES256", ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    # As /openid/v1/jwks publishes them (PyJWT adds key_ops, which the API server does not).
    public_jwk.pop("key_ops", None)
    public_jwk.update({"kid": spec["kid"], "use": "sig", "alg": alg})
    return {"private": private, "alg": alg, "jwk": public_jwk}


def claims(spec, now):
    namespace, account = spec["namespace"], spec["service_account"]
    out = {
        "aud": [spec.get("audience", "trellis-ca")],
        "exp": now + 3600,
        "iat": now,
        "iss": spec.get("issuer", "https://kubernetes.default.svc.cluster.local"),
        "jti": "4bb3fa5c-2cfa-4d05-9f2b-9c8c7d3c1a11",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "5d1c2a0e-7f4b-4d55-8d9f-0c1f5b1e2a33"},
            "pod": {"name": f"{account}-7d9c5b7f8-x2x9q",
                    "uid": "a1b2c3d4-0000-4000-8000-000000000001"},
            "serviceaccount": {"name": account, "uid": "e5f6a7b8-0000-4000-8000-000000000002"},
            "warnafter": now + 3000,
        },
        "nbf": now,
        "sub": f"system:serviceaccount:{namespace}:{account}",
    }
    for path, value in spec.get("set", {}).items():
        *parents, last = split(path)
        node = out
        for p in parents:
            node = node[p]
        node[last] = value
    for path in spec.get("remove", []):
        *parents, last = split(path)
        node = out
        for p in parents:
            node = node[p]
        del node[last]
    return out


def split(path):
    # `kubernetes.io` is one claim name although it has a dot.
    if path.startswith("kubernetes.io"):
        rest = path[len("kubernetes.io"):].lstrip(".")
        return ["kubernetes.io"] + (rest.split(".") if rest else [])
    return path.split(".")


def compact(header, payload, sign):
    signing_input = b".".join([
        base64url_encode(json.dumps(header, separators=(",", ":")).encode()),
        base64url_encode(json.dumps(payload, separators=(",", ":")).encode()),
    ])
    return (signing_input + b"." + base64url_encode(sign(signing_input))).decode()


def mint(spec, keys, now):
    key = keys[spec["key"]]
    kid, payload = spec["key"], claims(spec, now)
    forge = spec.get("forge")
    if forge == "none":
        return jwt.encode(payload, None, algorithm="none", headers={"kid": kid, "typ": None})
    if forge == "hs256-public-key":
        secret = key["private"].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return compact({"alg": "HS256", "kid": kid}, payload,
                       lambda m: hmac.new(secret, m, hashlib.sha256).digest())
    if forge == "alg-mismatch":
        other = "ES256" if key["alg"] == "RS256" else "RS256"
        algorithm = jwt.get_algorithm_by_name(key["alg"])
        return compact({"alg": other, "kid": kid}, payload,
                       lambda m: algorithm.sign(m, key["private"]))
    if "headers" in spec:
        header = {"alg": key["alg"], "kid": kid, **spec["headers"]}
        header = {k: v for k, v in header.items() if v is not None}
        algorithm = jwt.get_algorithm_by_name(key["alg"])
        token = compact(header, payload, lambda m: algorithm.sign(m, key["private"]))
    else:
        token = jwt.encode(payload, key["private"], algorithm=key["alg"],
                           headers={"kid": kid, "typ": None})
    if forge == "tamper":
        head, body, signature = token.split(".")
        i = len(signature) // 2
        signature = signature[:i] + ("B" if signature[i] == "A" else "A") + signature[i + 1:]
        token = ".".join([head, body, signature])
    elif forge is not None:
        raise SystemExit(f"unknown forge {forge!r}")
    return token


def main():
    spec = json.load(sys.stdin)
    now = int(time.time())
    keys = {k["kid"]: make_key(k) for k in spec["keys"]}
    print(json.dumps({
        "jwks": {"keys": [k["jwk"] for k in keys.values()]},
        "tokens": {t["name"]: mint(t, keys, now) for t in spec.get("tokens", [])},
    }))


if __name__ == "__main__":
    main()
