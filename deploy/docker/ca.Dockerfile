# syntax=docker/dockerfile:1
# trellis-ca, built from the repository root:
#   docker build -f deploy/docker/ca.Dockerfile -t trellis/ca:0.1.0 .
# Build stage: the workspace's pinned toolchain floor; the lock file is used as is.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trellis-ca --bin trellis-ca \
 && cp target/release/trellis-ca /trellis-ca

# debian-slim rather than distroless: `kubectl cp` (which needs tar) is how an operator
# copies the admin credentials and trust bundle out of the data volume after first start.
FROM debian:bookworm-slim
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot \
 && mkdir -p /var/lib/trellis && chown 65532:65532 /var/lib/trellis
COPY --from=build /trellis-ca /usr/local/bin/trellis-ca
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trellis-ca"]
