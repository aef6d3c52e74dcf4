# Multi-stage build of the CPU image. The CUDA variant is described in README.md ("GPU build").
FROM rust:1.95-bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config clang libclang-dev libssl-dev libavcodec-dev libavformat-dev libavutil-dev \
      libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
COPY migrations migrations
COPY world world
COPY openapi.yaml ./
RUN cargo build --release --bin entrovid

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/entrovid entrovid
COPY --from=build /src/target/release/entrovid /usr/local/bin/entrovid
COPY models /opt/entrovid/models
USER entrovid
WORKDIR /var/lib/entrovid
EXPOSE 8080
VOLUME ["/var/lib/entrovid/data"]
ENTRYPOINT ["entrovid"]
CMD ["serve", "--bind", "0.0.0.0:8080", "--data-dir", "/var/lib/entrovid/data", "--models-dir", "/opt/entrovid/models"]
