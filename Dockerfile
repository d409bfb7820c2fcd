# syntax=docker/dockerfile:1
#
# roomcast container image.
#   build:  docker build -t roomcast:dev .
#   run:    docker run --rm -p 8080:8080 -p 9090:9090 roomcast:dev
#
# Stage 1 compiles the release binary. The dependency graph is built first against dummy
# sources, so that layer is reused as long as Cargo.toml / Cargo.lock do not change; editing
# src/ only recompiles the roomcast crate itself.
# Stage 2 is distroless (glibc, libgcc, libssl3, CA certificates, no shell, no package
# manager) and runs as the image's unprivileged "nonroot" user (uid 65532).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /build

# 1. Dependencies only: manifest + lock file and empty targets.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '//! placeholder used to build dependencies' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src \
        target/release/roomcast target/release/roomcast.d \
        target/release/deps/roomcast-* target/release/deps/libroomcast-* \
        target/release/.fingerprint/roomcast-*

# 2. The real sources (everything the crate compiles lives under src/, web assets included).
COPY src ./src
# Make sure cargo sees the real sources as newer than anything built in step 1.
RUN find src -type f -exec touch {} + \
    && cargo build --release --locked --bin roomcast \
    && install -D -m 0755 target/release/roomcast /out/roomcast

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/roomcast /roomcast
USER 65532:65532
# 8080: chat page + WebSocket (/ws); 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9090
ENTRYPOINT ["/roomcast"]
CMD ["serve"]
