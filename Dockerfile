# syntax=docker/dockerfile:1
# One image for every binary of the saga platform; the container command chooses which runs:
#   order-service | payment-service | inventory-service | notification-service
#   dashboard-service | schema-registry (local use only) | sagactl <command>
# Build: docker build -t saga-platform:local .   (the first build takes several minutes: it
# compiles librdkafka from source through the rdkafka crate's bundled copy)

FROM rust:1-bookworm AS builder
# rdkafka-sys runs librdkafka's ./configure + make; cmake and pkg-config are there for crates
# that look for them, zlib1g-dev for librdkafka's compression support.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target directory are build caches; the binaries are copied out of the
# cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && for bin in order-service payment-service inventory-service notification-service dashboard-service schema-registry sagactl; do \
         cp "target/release/$bin" /out/ || exit 1; \
       done

FROM debian:bookworm-slim AS runtime
# ca-certificates for TLS endpoints; curl for container health checks (GET /health/ready).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 saga \
    && useradd --system --uid 10001 --gid saga --no-create-home --shell /usr/sbin/nologin saga
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV LOG_FORMAT=json
# order 8080, schema-registry 8081, payment 8082, inventory 8083, notification 8084, dashboard 8085
EXPOSE 8080 8081 8082 8083 8084 8085
# The binaries handle SIGTERM themselves (graceful shutdown), so they can run as PID 1.
CMD ["sagactl", "--help"]
