# LLM Gateway: a slim, non-root image serving gRPC on 50051.
# Build: make image   (needs a Docker engine)
# Run:   docker run -p 50051:50051 -e OPENROUTER_API_KEY=... \
#          -e GATEWAY_CALLERS_FILE=/etc/llm-gateway/callers.toml \
#          -v $PWD/callers.toml:/etc/llm-gateway/callers.toml:ro llm-gateway:dev

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY service ./service
COPY clients/python ./clients/python
COPY schemas ./schemas
# Wheels of the project and of its client package (the generated contract) plus their pinned
# dependencies, installed into one prefix to copy over.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c requirements.lock ./clients/python '.[postgres,redis]'


FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/schemas /app/schemas
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_LISTEN=0.0.0.0:50051 \
    GATEWAY_SCHEMAS_DIR=/app/schemas \
    GATEWAY_LEDGER_PATH=/var/lib/llm-gateway/usage.sqlite3
RUN mkdir -p /var/lib/llm-gateway && chown gateway /var/lib/llm-gateway
USER 10001
WORKDIR /app
EXPOSE 50051
# grpc.health.v1 probe without extra binaries: Kubernetes can use `grpc:` probes directly.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-m", "service.healthcheck", "127.0.0.1:50051"]
# SIGTERM drains in-flight calls for GATEWAY_SHUTDOWN_GRACE_S (default 30 s) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
