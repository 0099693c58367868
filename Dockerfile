# One image with the four binaries of noetl-dispatch: noetl-gateway, noetl-server, noetl-worker
# and noetlctl. The Kubernetes manifests in deploy/ pick the binary with `args`.
#
#   docker build -t noetl-dispatch:dev .
#
# Stages:
#   planner  reduces the workspace to its manifests plus empty sources (deploy/docker/stub-workspace.sh);
#   build    compiles every dependency from that reduced workspace first, in a layer that is reused
#            until a Cargo.toml or Cargo.lock changes, then copies the real sources and compiles
#            only our crates (cargo-chef's idea, without fetching cargo-chef);
#   runtime  debian:bookworm-slim with CA certificates, tini and the binaries, as a non-root user.
#
# The build fetches nothing but crates (from crates.io, as Cargo.lock pins them, `--locked`) and the
# Debian packages of the runtime stage. There is no offline query data to prepare: the server
# embeds its SQL migrations at compile time with `sqlx::migrate!("../migrations")`, and no
# `sqlx::query!` macros are used, so nothing needs a database (or `.sqlx/`, or SQLX_OFFLINE) while
# compiling.

# The toolchain CI tests with; the workspace's rust-version (1.85) is the oldest it supports.
ARG RUST_VERSION=1.95
# The builder and the runtime image use the same Debian release, so the binaries find the glibc
# they were linked against (--build-arg DEBIAN_RELEASE=trixie moves both).
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS planner
WORKDIR /src
COPY . .
RUN sh deploy/docker/stub-workspace.sh /src /recipe

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never
# Dependencies only: this layer changes only when a manifest or the lock file does.
COPY --from=planner /recipe/ ./
RUN cargo build --release --locked \
        --bin noetl-gateway --bin noetl-server --bin noetl-worker --bin noetlctl
# Our code, in place of the stubs (removed first, so that no empty src/main.rs or src/lib.rs of
# the stub workspace is left beside the real sources). COPY keeps the files' own modification
# times, which can be older than the stub build's artifacts; touching every source makes cargo
# rebuild our crates for certain.
RUN find . -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked \
        --bin noetl-gateway --bin noetl-server --bin noetl-worker --bin noetlctl \
    && mkdir -p /out \
    && cp target/release/noetl-gateway target/release/noetl-server \
        target/release/noetl-worker target/release/noetlctl /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: the worker's `http` action verifies TLS against the system trust store.
# tini: PID 1 that forwards SIGTERM (each binary drains on it) and reaps the orphans of
# programs the worker's `shell` action may start.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 noetl \
    && useradd --system --uid 10001 --gid noetl --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin noetl
COPY --from=build /out/ /usr/local/bin/
# Numeric, so Kubernetes can check runAsNonRoot without looking the name up.
USER 10001:10001
# gateway API and ops endpoint (gateway 8080; server and worker ops 9090, 9091 as the manifests set them)
EXPOSE 8080 9090 9091
ENV NOETL_LOG_FORMAT=json
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["noetlctl", "--help"]

LABEL org.opencontainers.image.title="noetl-dispatch" \
      org.opencontainers.image.description="noetl-gateway, noetl-server, noetl-worker and noetlctl" \
      org.opencontainers.image.licenses="Apache-2.0"
