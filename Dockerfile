# syntax=docker/dockerfile:1
# Multi-stage build of the one binary; the runtime image is Debian slim, non-root, with a
# health check that needs no curl (`license-gateway healthcheck`).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source changes do not rebuild them.
# The test harness is a workspace member (a dev-dependency): its manifest must be present.
COPY Cargo.toml Cargo.lock ./
COPY tests/harness ./tests/harness
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/license-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/license-gateway /usr/local/bin/license-gateway
USER 10001:10001
ENV PORT=5000 HOST=0.0.0.0 LOG_FORMAT=json
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["license-gateway", "healthcheck"]
ENTRYPOINT ["license-gateway"]
CMD ["serve"]
