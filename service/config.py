"""Configuration from the environment, built once in ``main()`` and passed down.

Names follow the plan this service comes from (``OPENROUTER_*``); the gateway's own settings
use ``GATEWAY_*``. Secrets are ``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"


class OpenRouterSettings(BaseSettings):
    """How to reach OpenRouter."""

    model_config = SettingsConfigDict(env_prefix="OPENROUTER_", extra="ignore", frozen=True)

    api_key: SecretStr | None = None
    base_url: AnyHttpUrl = AnyHttpUrl(DEFAULT_BASE_URL)
    default_model: str = "openai/gpt-4o-mini"
    http_referer: str = ""
    x_title: str = "LLM Gateway"
    timeout_ms: int = Field(default=45_000, ge=100, le=3_600_000)
    """Overall budget for one call (all attempts) when the caller set no deadline."""
    max_retries: int = Field(default=2, ge=0, le=10)
    connect_timeout_ms: int = Field(default=5_000, ge=50)
    read_timeout_ms: int = Field(default=60_000, ge=100)
    """Longest silence between two reads of a response; keep-alive comments reset it."""
    retry_after_cap_ms: int = Field(default=10_000, ge=0)
    """Upper bound on a ``Retry-After`` wait, so a huge hint cannot stall a caller."""
    backoff_base_ms: int = Field(default=250, ge=1)
    backoff_max_ms: int = Field(default=4_000, ge=1)
    models_ttl_s: float = Field(default=300.0, ge=1.0)
    max_connections: int = Field(default=1024, ge=1)

    @property
    def base(self) -> str:
        return str(self.base_url).rstrip("/")


class GatewaySettings(BaseSettings):
    """The gateway's own settings."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    listen: str = "0.0.0.0:50051"
    schemas_dir: Path = Path(__file__).resolve().parent.parent / "schemas"
    """Folder of versioned JSON Schemas for CompleteStructured (``<name>_v<N>.json``)."""
    callers_file: Path | None = None
    """TOML file of callers (ids, key hashes, allowed models, limits)."""
    # NoDecode: the variable is a comma-separated list, not JSON.
    allowed_models: Annotated[tuple[str, ...], NoDecode] = ()
    """Global allow-list of model globs; empty means every model in the catalog."""
    max_messages: int = Field(default=256, ge=1)
    max_message_chars: int = Field(default=200_000, ge=1)
    max_total_chars: int = Field(default=1_000_000, ge=1)
    max_history_turns: int = Field(default=64, ge=1)
    """Non-system messages kept (the most recent ones) when a history is longer."""
    default_max_tokens: int = Field(default=1024, ge=1)
    max_tokens_cap: int = Field(default=16_384, ge=1)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0.0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""
    ledger_path: Path = Path("var/usage.sqlite3")
    """SQLite file of the usage ledger (the default store)."""
    ledger_dsn: SecretStr | None = None
    """PostgreSQL DSN (``postgresql://…``); when set, the ledger lives there instead."""
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    """How often cancelled streams' costs are fetched from OpenRouter's ``/generation``."""
    redis_url: SecretStr | None = None
    """Redis for quotas shared by several replicas; unset: quotas held in-process."""
    quota_failure_policy: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When Redis is unreachable: refuse calls (UNAVAILABLE) or let them through unchecked."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """The event loop: uvloop (measured 17 % less CPU per call) when installed, unless asked."""
    gc_threshold: int = Field(default=50_000, ge=0)
    """Allocations between two young-generation garbage collections (CPython's default is
    700); 0 keeps the interpreter's setting. See ``service.gc_tuning``."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    simulator: bool | None = None
    """Serve against the built-in simulator; by default, exactly when no API key is set."""
    prometheus_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (on the GATEWAY_LISTEN host); unset: no endpoint."""

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class TelemetrySettings(BaseSettings):
    """OpenTelemetry's standard ``OTEL_*`` variables that decide what the gateway exports.

    Unlike the SDK's own defaults, nothing is exported unless asked for: an exporter is named
    in ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``, or an OTLP endpoint is set. The
    exporters read their details (headers, certificates, timeouts, export interval, sampler,
    ``OTEL_RESOURCE_ATTRIBUTES``) from the environment themselves, so those are not copied here
    and OTLP headers, which may hold a key, pass through no object of ours.
    """

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore", frozen=True)

    sdk_disabled: bool = False
    service_name: str = "llm-gateway"
    traces_exporter: str = ""
    """Comma-separated ``otlp``, ``console``, ``none``; empty: ``otlp`` if an endpoint is set."""
    metrics_exporter: str = ""
    """Comma-separated: ``otlp``, ``prometheus``, ``console`` or ``none``; empty as above."""
    exporter_otlp_endpoint: str = ""
    exporter_otlp_traces_endpoint: str = ""
    exporter_otlp_metrics_endpoint: str = ""
    exporter_otlp_protocol: str = "grpc"
    """Only ``grpc`` is installed (``opentelemetry-exporter-otlp-proto-grpc``)."""
