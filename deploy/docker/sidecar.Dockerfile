# syntax=docker/dockerfile:1
# trellis-sidecar, built from the repository root:
#   docker build -f deploy/docker/sidecar.Dockerfile -t trellis/sidecar:0.1.0 .
# Build stage: the workspace's pinned toolchain floor; the lock file is used as is.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trellis-sidecar --bin trellis-sidecar \
 && cp target/release/trellis-sidecar /trellis-sidecar

# Debian slim with iptables: the same image runs the capture init step
# (`trellis-sidecar init-network`, as root with NET_ADMIN, which calls iptables-restore)
# and the sidecar (as uid 65532 with every capability dropped; injection sets both).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /trellis-sidecar /usr/local/bin/trellis-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trellis-sidecar"]
