"""Configuration from the environment, built once in ``main()`` and passed down.

Names follow the plan this service comes from (``OPENROUTER_*``); the gateway's own settings
use ``GATEWAY_*``. Secrets are ``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_LISTEN = "0.0.0.0:50051"
"""Every interface: a server's usual default (and what a container needs)."""
DEMO_LISTEN = "127.0.0.1:50051"
"""Where simulator (demo) mode listens unless GATEWAY_LISTEN says otherwise."""

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
"""A DNS name or a dotted IPv4 address (digits are labels too)."""
_UNIX_PREFIXES = ("unix:", "unix-abstract:")
_MAX_SECONDS = 86_400.0
"""Upper bound of a duration setting: a day (a larger value is a typo, e.g. milliseconds)."""


class ConfigError(Exception):
    """Start-up configuration is unusable; the message is one clear line for the operator."""


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Turns a missing optional package (an extra not installed) into one clear line.

    ``what`` names the feature and the setting that asked for it. An ImportError of one of
    our own modules is a bug, not a missing extra, and is raised as it is.
    """
    try:
        yield
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "service":
            raise
        raise ConfigError(
            f"{what} needs the {exc.name} package, which is not installed "
            f"(install the '{extra}' extra: pip install 'llm-gateway[{extra}]')"
        ) from None


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) split and checked; ValueError says what is wrong."""
    if address.startswith("["):
        host, sep, port_text = address[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPV6]:PORT, e.g. [::]:50051")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:50051")
        if ":" in host:
            raise ValueError("an IPv6 host goes in brackets, e.g. [::]:50051")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host[:64]!r} is not a host name or address")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"the port {port_text[:16]!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"the port {port} is out of range (0-65535)")
    return host, port


def _check_listen(value: str) -> str:
    value = value.strip()
    if value.startswith(_UNIX_PREFIXES):
        return value
    split_host_port(value)
    return value


class OpenRouterSettings(BaseSettings):
    """How to reach OpenRouter."""

    model_config = SettingsConfigDict(env_prefix="OPENROUTER_", extra="ignore", frozen=True)

    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    """A file holding the key (a mounted Secret); read at start-up and on every reload."""
    base_url: AnyHttpUrl = AnyHttpUrl(DEFAULT_BASE_URL)
    default_model: str = "openai/gpt-4o-mini"
    default_embedding_model: str = "openai/text-embedding-3-small"
    """Used by Embed when a request names no model; empty: requests must name one."""
    http_referer: str = ""
    x_title: str = "LLM Gateway"
    timeout_ms: int = Field(default=45_000, ge=100, le=3_600_000)
    """Overall budget for one call (all attempts) when the caller set no deadline."""
    max_retries: int = Field(default=2, ge=0, le=10)
    connect_timeout_ms: int = Field(default=5_000, ge=50, le=600_000)
    read_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    """Longest silence between two reads of a response; keep-alive comments reset it."""
    retry_after_cap_ms: int = Field(default=10_000, ge=0, le=3_600_000)
    """Upper bound on a ``Retry-After`` wait, so a huge hint cannot stall a caller."""
    backoff_base_ms: int = Field(default=250, ge=1, le=600_000)
    backoff_max_ms: int = Field(default=4_000, ge=1, le=600_000)
    models_ttl_s: float = Field(default=300.0, ge=1.0, le=_MAX_SECONDS)
    max_connections: int = Field(default=1024, ge=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenRouterSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set OPENROUTER_API_KEY or OPENROUTER_API_KEY_FILE, not both")
        return self

    @property
    def base(self) -> str:
        return str(self.base_url).rstrip("/")


class GatewaySettings(BaseSettings):
    """The gateway's own settings."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    listen: str = DEFAULT_LISTEN
    """``HOST:PORT`` (``[IPV6]:PORT``) or ``unix:PATH``; port 0 picks a free port."""
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
    max_parts_per_message: int = Field(default=64, ge=1)
    max_part_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_embed_inputs: int = Field(default=2048, ge=1, le=100_000)
    """Inputs of one Embed call."""
    """Inline bytes of one media part (image, file, audio, video)."""
    max_media_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """Inline media bytes of one request; must stay below ``max_message_bytes``."""
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """gRPC message size limit, both directions: room for ``max_media_bytes`` of media plus
    the text, and for the images an answer brings back."""
    shutdown_grace_s: float = Field(default=30.0, ge=0.0, le=_MAX_SECONDS)
    drain_delay_s: float = Field(default=0.0, ge=0.0, le=_MAX_SECONDS)
    """After SIGTERM, how long health says NOT_SERVING while calls are still accepted, so load
    balancers take the endpoint out before calls are refused (then the grace starts)."""
    reload_interval_s: float = Field(default=5.0, ge=0.0, le=_MAX_SECONDS)
    """How often the callers file, schemas folder and key file are checked for changes; 0:
    only on SIGHUP."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""
    ledger_path: Path = Path("var/usage.sqlite3")
    """SQLite file of the usage ledger (the default store)."""
    ledger_dsn: SecretStr | None = None
    """PostgreSQL DSN (``postgresql://…``); when set, the ledger lives there instead."""
    ledger_durability: Literal["batched", "sync"] = "batched"
    """``batched``: a call's status leaves at once, its row is committed with the next batch;
    ``sync``: the status waits for the row's commit (group commit), so a crash loses no row
    of an answered call. See the README for what kill -9 can lose in each."""
    reconcile_interval_s: float = Field(default=60.0, gt=0, le=_MAX_SECONDS)
    """How often cancelled streams' costs are fetched from OpenRouter's ``/generation``."""
    redis_url: SecretStr | None = None
    """Redis for quotas shared by several replicas; unset: quotas held in-process."""
    quota_failure_policy: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When Redis is unreachable: refuse calls (UNAVAILABLE) or let them through unchecked."""
    quota_lease_margin_s: float = Field(default=5.0, gt=0, le=3600)
    """How long past its call's longest possible end a reservation stays held unless settled
    (the lease; see ``service.domain.quotas``): covers the settle itself and clock skew
    between replicas."""
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    """Server processes sharing the port (``SO_REUSEPORT``); ``auto``: one per usable CPU.
    Above 1 needs ``GATEWAY_REDIS_URL`` (see ``service.workers``)."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """The event loop: uvloop (measured 17 % less CPU per call) when installed, unless asked."""
    gc_threshold: int = Field(default=50_000, ge=0)
    """Allocations between two young-generation garbage collections (CPython's default is
    700); 0 keeps the interpreter's setting. See ``service.gc_tuning``."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    simulator: bool = False
    """Serve against the built-in simulator with a demo caller (``make run`` sets it when no
    key is set); never chosen implicitly."""
    prometheus_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (on the GATEWAY_LISTEN host); unset: no endpoint."""

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str) -> str:
        return _check_listen(value)

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE and _KEY_FILE")
        tcp = not self.listen.startswith(_UNIX_PREFIXES)
        if self.prometheus_port and tcp and split_host_port(self.listen)[1] == self.prometheus_port:
            raise ValueError("GATEWAY_PROMETHEUS_PORT is the GATEWAY_LISTEN port")
        if self.max_media_bytes >= self.max_message_bytes:
            # gRPC would refuse such a request before the gateway could name the part too large.
            raise ValueError("GATEWAY_MAX_MEDIA_BYTES must be below GATEWAY_MAX_MESSAGE_BYTES")
        return self

    @property
    def listen_host(self) -> str:
        """The host part of ``listen`` (for a unix socket, 127.0.0.1: metrics need TCP)."""
        if self.listen.startswith(_UNIX_PREFIXES):
            return "127.0.0.1"
        host, _ = split_host_port(self.listen)
        return host


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


# --- one clear line per bad setting, naming the variable -----------------------------------

_UNITS = {"_ms": "milliseconds", "_s": "seconds", "_bytes": "bytes", "_port": "a TCP port"}


def _variable(settings: type[BaseSettings], name: str) -> str:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _is_secret(settings: type[BaseSettings], name: str) -> bool:
    field = settings.model_fields.get(name)
    return field is not None and "SecretStr" in str(field.annotation)


def describe_invalid(settings: type[BaseSettings], exc: ValidationError) -> str:
    """The first problem of ``exc`` as one line: the environment variable, the value given
    (unless it is a secret; cut short) and what was expected, with the unit when it has one."""
    first: Any = exc.errors(include_url=False)[0]
    loc = first.get("loc") or ()
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        # A check across settings: its message names the variables itself.
        return message
    message = message[:1].lower() + message[1:]
    name = str(loc[0])
    variable = _variable(settings, name)
    unit = next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), None)
    if unit:
        message = f"{message} ({unit})"
    given = first.get("input")
    if isinstance(given, str) and not _is_secret(settings, name):
        shown = given if len(given) <= 64 else given[:64] + "…"
        return f"{variable}={shown!r}: {message}"
    return f"{variable}: {message}"
