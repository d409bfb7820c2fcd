# syntax=docker/dockerfile:1
#
# roomcast container image.
#   build:  docker build -t roomcast:0.1.0 .     (the chart's default image: roomcast:<appVersion>)
#   run:    docker run --rm -p 8080:8080 -p 9090:9090 roomcast:0.1.0
# The dev and CI machines have no Docker engine: scripts/check-image.sh stands in for
# `docker build` there (it lays out what the COPY lines copy and runs the RUN steps).
#
# Stage 1 compiles the release binary of the gateway (package roomcast, binary roomcast).
# The workspace is roomcast (src/), roomcast-protocol (crates/protocol), roomcast-bench
# (crates/bench, the load generator) and roomcast-hostile (crates/hostile, hostile test
# clients); neither of the last two is in the image. Cargo loads every member's manifest,
# and the file of every target a manifest declares explicitly must exist (crates/bench:
# [lib], [[bin]] roomcast-bench, [[bench]] kernel_floor), so the dependency graph is first built against the manifests and dummy sources:
# that layer is reused as long as no manifest and Cargo.lock change; editing src/ or
# crates/protocol/ only recompiles the workspace's own crates. roomcast-bench keeps its dummy
# sources (its dependencies are not built): editing the load generator does not rebuild the
# image.
# Stage 2 is distroless (glibc, libgcc, libssl3, CA certificates, no shell, no package
# manager) and runs as the image's unprivileged "nonroot" user (uid 65532).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /build

# 1. Dependencies only: the manifests, the lock file and dummy targets.
COPY Cargo.toml Cargo.lock ./
COPY crates/protocol/Cargo.toml crates/protocol/
COPY crates/bench/Cargo.toml crates/bench/
COPY crates/hostile/Cargo.toml crates/hostile/
RUN mkdir -p src crates/protocol/src crates/bench/src crates/bench/benches crates/hostile/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '//! placeholder used to build dependencies' > src/lib.rs \
    && echo '//! placeholder used to build dependencies' > crates/protocol/src/lib.rs \
    && echo '//! placeholder used to build dependencies' > crates/bench/src/lib.rs \
    && echo 'fn main() {}' > crates/bench/src/main.rs \
    && echo 'fn main() {}' > crates/bench/benches/kernel_floor.rs \
    && echo 'fn main() {}' > crates/hostile/src/main.rs \
    && cargo build --release --locked -p roomcast \
    && rm -rf src crates/protocol/src \
        target/release/roomcast target/release/roomcast.d \
        target/release/deps/roomcast-* target/release/deps/libroomcast-* \
        target/release/deps/roomcast_protocol-* target/release/deps/libroomcast_protocol-* \
        target/release/.fingerprint/roomcast-*

# 2. The real sources of the gateway and the protocol crate (everything they compile lives
#    under src/ and crates/protocol/src/, web assets included).
COPY src ./src
COPY crates/protocol ./crates/protocol
# Make sure cargo sees the real sources as newer than anything built in step 1.
RUN find src crates/protocol -type f -exec touch {} + \
    && cargo build --release --locked -p roomcast --bin roomcast \
    && install -D -m 0755 target/release/roomcast out/roomcast

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /build/out/roomcast /roomcast
USER 65532:65532
# 8080: chat page + WebSocket (/ws); 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9090
ENTRYPOINT ["/roomcast"]
CMD ["serve"]
