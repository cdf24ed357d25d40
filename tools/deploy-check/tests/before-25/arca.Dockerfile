# syntax=docker/dockerfile:1
# Arca container image: a locked release build in a Rust image, then only the
# binary (and the CA certificates the distroless base carries) in a
# distroless runtime image running as a numeric non-root user.
#
#   docker build -f deploy/Dockerfile -t arca:dev .
#
# The build stage uses the Debian Rust image of the toolchain the project
# is tested with; the runtime is distroless "cc" (glibc, libgcc, CA
# certificates, tzdata; no shell, no package manager).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY crates/arca-core/Cargo.toml crates/arca-core/Cargo.toml
COPY crates/arca-auth/Cargo.toml crates/arca-auth/Cargo.toml
COPY crates/arca-store/Cargo.toml crates/arca-store/Cargo.toml
COPY crates/arca-server/Cargo.toml crates/arca-server/Cargo.toml
COPY crates/arca/Cargo.toml crates/arca/Cargo.toml
RUN for c in arca-core arca-auth arca-store arca-server; do \
      mkdir -p "crates/$c/src" && echo "" > "crates/$c/src/lib.rs"; \
    done \
 && mkdir -p crates/arca/src && echo "fn main() {}" > crates/arca/src/main.rs \
 && cargo build --release --locked -p arca \
 && rm -rf crates/*/src
COPY crates crates
# Make sure the real sources are newer than the placeholder build.
RUN find crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p arca \
 && install -D -m 0555 target/release/arca /out/arca

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/arca /arca
# nonroot in distroless is uid/gid 65532.
USER 65532:65532
# MIMALLOC_ARENA_EAGER_COMMIT=0: commit allocator memory on use only
# (idle RSS ~19 MiB instead of ~31 MiB; see bench/RESULTS.md).
ENV ARCA_SERVER__LISTEN=0.0.0.0:8080 \
    ARCA_LOG__FORMAT=json \
    MIMALLOC_ARENA_EAGER_COMMIT=0
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/arca", "healthcheck"]
ENTRYPOINT ["/arca"]
CMD ["serve"]
