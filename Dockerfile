# Build stage: the same command as the README's build step.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# Runtime: the binary only, as a non-root user, data on a volume.
FROM debian:bookworm-slim
# CA roots for https webhook targets.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mailgate --create-home mailgate
COPY --from=build /src/target/release/mailgate /usr/local/bin/mailgate
USER mailgate
WORKDIR /var/lib/mailgate
VOLUME ["/var/lib/mailgate"]
ENV MAILGATE_HTTP__LISTEN=0.0.0.0:8080 \
    MAILGATE_STORAGE__PATH=/var/lib/mailgate/data
EXPOSE 8080
ENTRYPOINT ["mailgate"]
CMD ["serve"]
