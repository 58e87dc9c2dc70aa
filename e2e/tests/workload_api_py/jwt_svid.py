"""A JWT-SVID fetched over gRPC's C core (Python grpcio) and validated by PyJWT, a JOSE
implementation nobody here wrote, with the key the JWKS from FetchJWTBundles names.

Usage: jwt_svid.py SOCKET PROTO_DIR AUDIENCE

Prints one JSON line: the validated claims and header, the kids of the JWKS, the PyJWT error
for a wrong audience, and the status code of a FetchJWTSVID without an audience.
"""

import json
import sys

import grpc
import jwt

from fetch import HEADER, TIMEOUT, first, stubs

import tempfile


def main():
    socket, proto_dir, audience = sys.argv[1], sys.argv[2], sys.argv[3]
    with tempfile.TemporaryDirectory() as out_dir:
        pb, pb_grpc = stubs(proto_dir, out_dir)
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            api = pb_grpc.SpiffeWorkloadAPIStub(channel)
            token = api.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=[audience]), metadata=HEADER, timeout=TIMEOUT
            ).svids[0].svid
            bundles = first(api.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER, timeout=TIMEOUT))
            try:
                api.FetchJWTSVID(pb.JWTSVIDRequest(), metadata=HEADER, timeout=TIMEOUT)
                no_audience = "OK"
            except grpc.RpcError as e:
                no_audience = e.code().name
    (jwks,) = bundles.bundles.values()
    key_set = jwt.PyJWKSet.from_json(jwks.decode())
    header = jwt.get_unverified_header(token)
    key = next(k for k in key_set.keys if k.key_id == header["kid"])
    claims = jwt.decode(token, key=key.key, algorithms=["ES256"], audience=audience,
                        options={"require": ["exp", "sub", "aud"]})
    try:
        jwt.decode(token, key=key.key, algorithms=["ES256"], audience="someone-else")
        wrong = "accepted"
    except jwt.InvalidTokenError as e:
        wrong = type(e).__name__
    print(json.dumps({
        "sub": claims["sub"],
        "aud": claims["aud"],
        "alg": header["alg"],
        "kid": header["kid"],
        "jwks_kids": [k.key_id for k in key_set.keys],
        "wrong_audience": wrong,
        "no_audience": no_audience,
    }))


if __name__ == "__main__":
    main()
