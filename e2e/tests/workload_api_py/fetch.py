"""A SPIFFE Workload API client on gRPC's C core (Python grpcio), as py-spiffe uses it.

Usage: fetch.py SOCKET PROTO_DIR

Compiles workload.proto from PROTO_DIR with grpcio-tools into a temporary directory, dials
the default target for a Unix socket (unix:///path, whose default :authority is the socket
path, percent-encoded), and prints one JSON line: the first FetchX509SVID and
FetchX509Bundles answers (DER as hex), and the status code of a call without the security
header.
"""

import importlib
import importlib.resources
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc

TIMEOUT = 10.0
HEADER = (("workload.spiffe.io", "true"),)


def stubs(proto_dir, out_dir):
    include = importlib.resources.files("grpc_tools") / "_proto"
    code = protoc.main([
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "workload.proto",
    ])
    if code != 0:
        sys.exit(f"protoc failed on {proto_dir}/workload.proto")
    sys.path.insert(0, out_dir)
    return importlib.import_module("workload_pb2"), importlib.import_module("workload_pb2_grpc")


def first(stream):
    for message in stream:
        stream.cancel()
        return message
    sys.exit("the stream ended without a message")


def main():
    socket, proto_dir = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out_dir:
        pb, pb_grpc = stubs(proto_dir, out_dir)
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            api = pb_grpc.SpiffeWorkloadAPIStub(channel)
            svids = first(api.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=TIMEOUT))
            bundles = first(api.FetchX509Bundles(pb.X509BundlesRequest(), metadata=HEADER, timeout=TIMEOUT))
            try:
                first(api.FetchX509SVID(pb.X509SVIDRequest(), timeout=TIMEOUT))
                refused = "OK"
            except grpc.RpcError as e:
                refused = e.code().name
    svid = svids.svids[0]
    print(json.dumps({
        "spiffe_id": svid.spiffe_id,
        "x509_svid": svid.x509_svid.hex(),
        "x509_svid_key": svid.x509_svid_key.hex(),
        "bundle": svid.bundle.hex(),
        "bundles": {td: der.hex() for td, der in bundles.bundles.items()},
        "without_header": refused,
    }))


if __name__ == "__main__":
    main()
