# syntax=docker/dockerfile:1
# trellis-injector (the sidecar injection webhook), built from the repository root:
#   docker build -f deploy/docker/injector.Dockerfile -t trellis/injector:0.1.0 .
# Build stage: the workspace's pinned toolchain floor; the lock file is used as is.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trellis-injector --bin trellis-injector \
 && cp target/release/trellis-injector /trellis-injector

# distroless "cc": glibc and libgcc (which aws-lc needs), no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /trellis-injector /usr/local/bin/trellis-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trellis-injector"]
