# Build: docker build -t drctl .
# Run:   docker run --rm -v "$PWD:/work" -w /work drctl list
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY policies ./policies
RUN cargo build --release --locked && strip target/release/drctl

# Runtime: the PostgreSQL 15 client tools drctl drives (pg_dump,
# pg_restore, psql), plus zstd and age for restores without drctl.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 zstd age ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/drctl --uid 10001 drctl
COPY --from=build /src/target/release/drctl /usr/local/bin/drctl
# Completions and man pages, generated from the binary's own flags.
RUN mkdir -p /usr/share/bash-completion/completions /usr/local/share/man/man1 \
 && drctl completions bash > /usr/share/bash-completion/completions/drctl \
 && drctl man --dir /usr/local/share/man/man1
USER drctl
WORKDIR /var/lib/drctl
ENV PATH="/usr/lib/postgresql/15/bin:${PATH}"
ENTRYPOINT ["drctl"]
CMD ["--help"]
