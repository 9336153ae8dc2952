# LLM Gateway: a slim, non-root image serving gRPC on 50051, with the OTLP and Prometheus
# exporters and the Redis and PostgreSQL clients a fleet needs.
# Build: make image (Docker) or make image-check (buildah: builds it and runs it, no engine)
# Run:   docker run -p 50051:50051 -e OPENROUTER_API_KEY_FILE=/run/secrets/openrouter \
#          -e GATEWAY_CALLERS_FILE=/etc/llm-gateway/callers.toml \
#          -v $PWD/callers.toml:/etc/llm-gateway/callers.toml:ro \
#          -v $PWD/openrouter.key:/run/secrets/openrouter:ro llm-gateway:dev
# Demo:  docker run -p 50051:50051 -e GATEWAY_SIMULATOR=true llm-gateway:dev  (key demo-key)
# Without a key and without GATEWAY_SIMULATOR=true the gateway refuses to start.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY service ./service
COPY clients/python ./clients/python
COPY schemas ./schemas
# Wheels of the project (with its exporters and fleet stores) and of its client package (the
# generated contract), pinned by the lock, installed into one prefix to copy over.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c requirements.lock ./clients/python '.[otlp,prometheus,redis,postgres]'


FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/schemas /app/schemas
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_LISTEN=0.0.0.0:50051 \
    GATEWAY_SCHEMAS_DIR=/app/schemas \
    GATEWAY_LEDGER_PATH=/var/lib/llm-gateway/usage.sqlite3
RUN mkdir -p /var/lib/llm-gateway && chown gateway:gateway /var/lib/llm-gateway
USER 10001:10001
WORKDIR /app
EXPOSE 50051 9464
# grpc.health.v1 on the GATEWAY_LISTEN port, without extra binaries (Kubernetes uses `grpc:`
# probes directly). Needs a Docker-format image: OCI images drop HEALTHCHECK.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-m", "service.healthcheck"]
# SIGTERM: NOT_SERVING, GATEWAY_DRAIN_DELAY_S still serving, then GATEWAY_SHUTDOWN_GRACE_S
# (default 30 s) for the calls in flight, then exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
