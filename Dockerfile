# deprovisiond container image.
#   docker build -t deprovisiond .                         production: `serve`, no simulator compiled in
#   docker build -t deprovisiond:demo --build-arg FEATURES=demo .   adds `demo` and `simulate`
# The runtime image is distroless (glibc, CA certificates, no shell) and runs as a non-root user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG FEATURES=""
WORKDIR /src

# 1. Dependencies only: the manifests and empty sources, so this layer is rebuilt only when a manifest
#    or Cargo.lock changes, not on every code change.
COPY Cargo.toml Cargo.lock ./
COPY crates/azure-iot-sim/Cargo.toml crates/azure-iot-sim/
RUN mkdir -p src tests/it crates/azure-iot-sim/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs tests/it/main.rs tests/azure_clients.rs \
    && echo 'fn main() {}' > crates/azure-iot-sim/src/main.rs && touch crates/azure-iot-sim/src/lib.rs \
    && cargo build --release --locked --no-default-features --features "${FEATURES}" --bin deprovisiond \
    && rm -rf src crates/azure-iot-sim/src tests

# 2. The service. COPY keeps the files' times, which can be older than the empty sources built above:
#    touching the crate roots makes cargo rebuild the real code.
COPY src src
COPY migrations migrations
COPY crates/azure-iot-sim/src crates/azure-iot-sim/src
COPY tests tests
RUN touch src/lib.rs src/main.rs crates/azure-iot-sim/src/lib.rs crates/azure-iot-sim/src/main.rs \
    && cargo build --release --locked --no-default-features --features "${FEATURES}" --bin deprovisiond \
    && install -D -m 0755 target/release/deprovisiond /out/deprovisiond

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/deprovisiond /usr/local/bin/deprovisiond
# Listen on every interface inside the container; publish the port deliberately (compose binds loopback).
ENV DEPROVISIOND_LISTEN=0.0.0.0:8080 \
    DEPROVISIOND_LOG_FORMAT=json \
    DEPROVISIOND_GRACE_SECS=20
EXPOSE 8080
USER 65532:65532
# SIGTERM starts the graceful shutdown: in-flight steps get DEPROVISIOND_GRACE_SECS to finish, then their
# leases are released. Give the container longer than that to stop (compose: stop_grace_period 30s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/deprovisiond", "healthcheck", "--url", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/deprovisiond"]
CMD ["serve"]
