# syntax=docker/dockerfile:1.7
#
# auditrelay container image.
#   docker build -t auditrelay .
#   docker run -d --name auditrelay \
#     -v auditrelay-state:/var/lib/auditrelay \
#     -v "$PWD/auditrelay.toml:/etc/auditrelay/auditrelay.toml:ro" \
#     -v "$PWD/asana-token:/run/secrets/asana-token:ro" \
#     -p 127.0.0.1:9464:9464 auditrelay
# See deploy/README.md.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source (rdkafka-sys): make, a C/C++ compiler,
# pkg-config, and the OpenSSL and zlib headers. The same list as
# scripts/test.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      g++ make pkg-config libssl-dev zlib1g-dev
# zlib is linked statically: the runtime image (distroless/cc-debian12) has
# libc, libgcc, libssl and libcrypto, but no libz.
ENV LIBZ_SYS_STATIC=1
WORKDIR /src
RUN --mount=type=bind,source=Cargo.toml,target=Cargo.toml \
    --mount=type=bind,source=Cargo.lock,target=Cargo.lock \
    --mount=type=bind,source=src,target=src \
    --mount=type=bind,source=migrations,target=migrations \
    --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin auditrelay \
 && install -D -m 0755 target/release/auditrelay /out/usr/local/bin/auditrelay
# Fail the build if the binary needs a shared library the runtime image
# lacks.
RUN ldd /out/usr/local/bin/auditrelay \
 && ! ldd /out/usr/local/bin/auditrelay \
      | grep -Ev '^\s*(linux-vdso|/lib64/ld-linux|lib(c|m|gcc_s|ssl|crypto|pthread|dl|rt)\.so)' \
      | grep .
# The state directory, owned by the runtime user, so that a new named volume
# mounted there starts with this owner and mode.
RUN install -d -m 0700 -o 65532 -g 65532 /out/var/lib/auditrelay

# distroless/cc: glibc, libgcc, libssl, CA certificates, tzdata; no shell,
# no package manager. :nonroot runs as 65532 by default; USER makes it
# explicit and numeric (Kubernetes runAsNonRoot can only verify a number).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/auditrelay /usr/local/bin/auditrelay
# Owner 65532, mode 0700 (from the build stage).
COPY --from=build --chown=65532:65532 /out/var/lib/auditrelay /var/lib/auditrelay
COPY deploy/container.toml /etc/auditrelay/auditrelay.toml
USER 65532:65532
# Nothing depends on the working directory (tests run it from /).
WORKDIR /
VOLUME ["/var/lib/auditrelay"]
# /metrics, /healthz, /readyz ([http] listen in the config).
EXPOSE 9464
# SIGTERM drains the sinks for up to shutdown_grace, then exits 0: give the
# container more than that (docker stop -t 30, compose stop_grace_period).
STOPSIGNAL SIGTERM
# Docker only; Kubernetes uses its own probes (deploy/kubernetes). The image
# has no curl: the binary does the GET itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/auditrelay", "health", "--url", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["/usr/local/bin/auditrelay"]
CMD ["run", "--config", "/etc/auditrelay/auditrelay.toml"]
