//! Generates the tonic/prost code from the .proto files with protox, a pure-Rust protobuf
//! compiler, so a fresh machine needs nothing but cargo (no system `protoc`).

const PROTOS: &[&str] = &[
    "proto/trellis/ca/v1/workload.proto",
    "proto/trellis/admin/v1/admin.proto",
    // The standard SPIFFE Workload API, served by the sidecar (no package: `/SpiffeWorkloadAPI/*`).
    "proto/spiffe/workload/workload.proto",
];

/// Messages with a secret field: their Debug output must never show it.
const SECRET_MESSAGES: &[&str] = &[
    ".trellis.ca.v1.CertifyRequest",
    ".trellis.ca.v1.CertifyRequest.credential",
    ".trellis.admin.v1.CreateJoinTokenResponse",
    ".trellis.ca.v1.MintJwtSvidResponse",
    // SPIFFE Workload API: an X.509-SVID's private key, a JWT-SVID bearer token.
    ".X509SVID",
    ".JWTSVID",
    ".ValidateJWTSVIDRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        // Messages that carry secrets get hand-written, redacting Debug impls (src/redact.rs).
        .skip_debug(SECRET_MESSAGES)
        .compile_fds(descriptors)?;
    Ok(())
}
