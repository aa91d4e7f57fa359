# syntax=docker/dockerfile:1
# Isthmus images, one per role, from one build:
#
#   docker build --target gateway    -t ghcr.io/isthmus-mesh/isthmus-gateway:dev .
#   docker build --target federation -t ghcr.io/isthmus-mesh/isthmus-federation:dev .
#   docker build --target ctl        -t ghcr.io/isthmus-mesh/isthmusctl:dev .
#   docker build --target sample     -t ghcr.io/isthmus-mesh/isthmus-sample:dev .
#
# The binaries need glibc, libm and libgcc_s only (TLS is aws-lc, linked
# in; protoc is vendored at build time). The gateway image also carries
# iptables: the sidecar's init container runs `isthmus-gateway
# init-iptables`, which feeds `iptables-restore`. Every image runs as a
# non-root user; the init container is given NET_ADMIN/NET_RAW by its
# pod, not by the image. `tests/tests/images.rs` checks that the binaries
# copied here are the ones the workspace builds.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked \
        -p isthmus-gateway -p isthmus-federation -p isthmus-ctl -p isthmus-sample \
    && mkdir -p /out \
    && cp target/dist/isthmus-gateway target/dist/isthmus-federation \
          target/dist/isthmusctl target/dist/isthmus-sample /out/

# Control plane, CLI and sample app: nothing but the C runtime.
FROM gcr.io/distroless/cc-debian12:nonroot AS federation
COPY --from=build /out/isthmus-federation /usr/local/bin/isthmus-federation
ENTRYPOINT ["/usr/local/bin/isthmus-federation"]

FROM gcr.io/distroless/cc-debian12:nonroot AS ctl
COPY --from=build /out/isthmusctl /usr/local/bin/isthmusctl
ENTRYPOINT ["/usr/local/bin/isthmusctl"]

FROM gcr.io/distroless/cc-debian12:nonroot AS sample
COPY --from=build /out/isthmus-sample /usr/local/bin/isthmus-sample
ENTRYPOINT ["/usr/local/bin/isthmus-sample"]

# Sidecar and east-west gateway: the C runtime and iptables.
FROM debian:bookworm-slim AS gateway
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1337 --no-create-home --shell /usr/sbin/nologin isthmus-proxy
COPY --from=build /out/isthmus-gateway /usr/local/bin/isthmus-gateway
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/isthmus-gateway"]
