"""Assembles and runs the gateway: upstream client, domain, gRPC server, health, reflection.

``GatewayServer`` is used both by ``python -m service`` and by the tests (port 0), so the
tests exercise exactly what production runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import socket
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.auth import Authenticator
from service.api.decoding import register_decoding
from service.api.health import GatewayHealth
from service.api.reflection import enable_reflection
from service.api.servicer import SERVICE_NAME, CompletionServicer, FinishHook, register
from service.callers_file import load_callers, log_policies
from service.config import ConfigError, GatewaySettings, OpenRouterSettings
from service.domain.accounting import Accountant, Durability
from service.domain.callers import Caller, CallerRegistry
from service.domain.gateway import Gateway, GatewayPolicy, ModelCatalog
from service.domain.limits import RequestLimits
from service.domain.models import ModelInfo
from service.domain.quotas import FailurePolicy, LeasePolicy, QuotaStore
from service.domain.schemas import SchemaLoadError, SchemaRegistry
from service.errors import GatewayError
from service.key_file import read_key_file
from service.ledger import open_ledger
from service.ledger.reconcile import Reconciler
from service.quotas import open_quota_store
from service.reload import (
    ConfigReloader,
    ReloadOutcome,
    api_key_source,
    callers_source,
    schemas_source,
)
from service.telemetry import Telemetry, UpstreamTelemetry
from service.telemetry.core import Instruments
from service.upstream.openrouter import OpenRouterClient

log = logging.getLogger(__name__)

_REFUSAL_GRACE_S = 0.5


@runtime_checkable
class _SharedStoreCounts(Protocol):
    """What a shared quota store (Redis) counts about its outages, and its warm-up before the
    first calls; the Redis module is not imported here, as its client library is an optional
    extra."""

    store_failures: int
    unchecked_admissions: int

    async def warm(self) -> None: ...


def server_options(settings: GatewaySettings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """``reuse_port``: bind with ``SO_REUSEPORT``, beside the other workers (``service.workers``);
    otherwise never, so a second gateway on a taken port fails instead of sharing it."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping idle connections so dead peers of long streams are noticed (and their upstream
        # requests closed) within ~40 s, and let clients keep long streams alive with pings.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def _credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        cert = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file: {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def request_limits(settings: GatewaySettings) -> RequestLimits:
    return RequestLimits(
        max_messages=settings.max_messages,
        max_message_chars=settings.max_message_chars,
        max_total_chars=settings.max_total_chars,
        max_history_turns=settings.max_history_turns,
        default_max_tokens=min(settings.default_max_tokens, settings.max_tokens_cap),
        max_tokens_cap=settings.max_tokens_cap,
        max_parts_per_message=settings.max_parts_per_message,
        max_part_bytes=min(settings.max_part_bytes, settings.max_media_bytes),
        max_media_bytes=settings.max_media_bytes,
        max_embedding_inputs=settings.max_embed_inputs,
    )


@dataclass
class GatewayServer:
    """One running gateway. ``start()`` it, read ``port``, ``stop()`` it.

    ``telemetry`` is its owner's to shut down, after ``stop()``.
    """

    settings: GatewaySettings
    openrouter: OpenRouterSettings
    callers: Sequence[Caller]
    on_finish: FinishHook | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    port: int = 0
    reuse_port: bool = False
    """Bind the port beside other workers (``service.workers``), who checked it is free."""
    reconcile: bool = True
    """Run the ledger's reconciler (of several workers, only one does)."""
    health: GatewayHealth = field(default_factory=GatewayHealth)
    _server: grpc.aio.Server | None = None
    _servicer: CompletionServicer | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _on_stopped: list[Callable[[], None]] = field(default_factory=list)
    _delay_cut: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise

    def _embedding_default(self, models: Sequence[ModelInfo]) -> str:
        """The default embedding model; one the catalog lacks is only warned about (chat
        does not need it) and Embed calls that name no model then fail naming the field."""
        default = self.openrouter.default_embedding_model
        if default and not any(m.id == default and m.makes_embeddings for m in models):
            log.warning(
                "OPENROUTER_DEFAULT_EMBEDDING_MODEL is not an embedding model of the catalog",
                extra={"model": default},
            )
        return default

    async def _start(self) -> None:
        if self.openrouter.api_key_file is not None:
            self.openrouter = self.openrouter.model_copy(
                update={"api_key": read_key_file(self.openrouter.api_key_file)}
            )
        client = OpenRouterClient(
            self.openrouter, observer=UpstreamTelemetry.create(self.telemetry)
        )
        await client.start()
        self._stack.push_async_callback(client.close)
        self.client = client
        try:
            models = await client.list_models()
        except GatewayError as exc:
            raise ConfigError(
                f"cannot load OpenRouter's model list from {self.openrouter.base}: {exc.message}"
            ) from None
        default = self.openrouter.default_model
        if not any(m.id == default for m in models):
            raise ConfigError(
                f"OPENROUTER_DEFAULT_MODEL '{default}' is not in OpenRouter's model list"
            )
        allowed = self.settings.allowed_models
        if allowed and not any(fnmatch.fnmatchcase(default, pattern) for pattern in allowed):
            raise ConfigError(
                f"OPENROUTER_DEFAULT_MODEL '{default}' is not allowed by GATEWAY_ALLOWED_MODELS"
            )
        try:
            schemas = SchemaRegistry.load(self.settings.schemas_dir)
        except SchemaLoadError as exc:
            raise ConfigError(str(exc)) from None
        ledger_target = (
            self.settings.ledger_dsn.get_secret_value()
            if self.settings.ledger_dsn
            else self.settings.ledger_path
        )
        durability = Durability(self.settings.ledger_durability)
        ledger = open_ledger(ledger_target, fsync_commits=durability is Durability.SYNC)
        try:
            await ledger.start()
        except Exception as exc:
            raise ConfigError(f"cannot open the usage ledger: {type(exc).__name__}") from None
        # Closed last (callbacks run in reverse): every call's row is queued before it flushes.
        self._stack.push_async_callback(ledger.close)
        self.ledger = ledger
        reconciler = Reconciler(
            ledger,
            client.get_generation,
            models=ModelCatalog(client).get,
            interval_s=self.settings.reconcile_interval_s,
        )
        if self.reconcile:
            reconciler.start()
        self._stack.push_async_callback(reconciler.close)
        self.reconciler = reconciler
        quotas = open_quota_store(
            self.settings.redis_url.get_secret_value() if self.settings.redis_url else None,
            failure_policy=FailurePolicy(self.settings.quota_failure_policy),
        )
        self._stack.push_async_callback(quotas.close)
        if isinstance(quotas, _SharedStoreCounts):
            await quotas.warm()
        gateway = Gateway(
            client,
            GatewayPolicy(
                default_model=default,
                default_embedding_model=self._embedding_default(models),
                allowed_models=self.settings.allowed_models,
                limits=request_limits(self.settings),
                leases=LeasePolicy(
                    call_timeout_s=self.openrouter.timeout_ms / 1000,
                    margin_s=self.settings.quota_lease_margin_s,
                ),
            ),
            schemas=schemas,
            quotas=quotas,
            ledger=ledger,
        )
        self.gateway = gateway
        self.registry = registry = CallerRegistry(self.callers)
        await self._start_reloader(registry, gateway, schemas, client)
        if self.telemetry.instruments is not None:
            self.telemetry.instruments.observe_ledger(ledger.counters)
            self._observe_quota_store(self.telemetry.instruments, quotas)
        credentials = _credentials(self.settings)
        server = grpc.aio.server(options=server_options(self.settings, reuse_port=self.reuse_port))
        # Bound before the servicer is made, so that its spans can name the port.
        if not self.reuse_port:
            check_listen_address(self.settings.listen)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError:
            # grpcio raises a bare RuntimeError for a busy or unresolvable address.
            self.port = 0
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen} (in use or invalid)")
        self._servicer = servicer = CompletionServicer(
            gateway,
            Authenticator(
                registry,
                trust_client_certificates=self.settings.tls_client_ca_file is not None,
            ),
            accountant=Accountant(ledger, durability),
            on_finish=self.on_finish,
            telemetry=self.telemetry,
            address=(_listen_host(self.settings.listen), self.port),
            # The same limit as grpc.max_send_message_length in server_options.
            max_send_bytes=self.settings.max_message_bytes,
        )
        register(servicer, server)
        register_decoding(health_pb2_grpc.add_HealthServicer_to_server, self.health, server)
        enable_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
        )
        await server.start()
        self._server = server
        # Once serving (a start-up that fails says one thing: why): which policy is whose.
        log_policies(self.callers)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def _start_reloader(
        self,
        registry: CallerRegistry,
        gateway: Gateway,
        schemas: SchemaRegistry,
        client: OpenRouterClient,
    ) -> None:
        sources = [schemas_source(self.settings.schemas_dir, schemas)]
        if self.settings.callers_file is not None:
            sources.append(callers_source(self.settings.callers_file, registry, gateway))
        if self.openrouter.api_key_file is not None:
            sources.append(api_key_source(self.openrouter.api_key_file, client))
        reloader = ConfigReloader(
            sources,
            interval_s=self.settings.reload_interval_s,
            instruments=self.telemetry.instruments,
        )
        await reloader.start()
        self._stack.push_async_callback(reloader.close)
        self.reloader = reloader

    @staticmethod
    def _observe_quota_store(instruments: Instruments, quotas: QuotaStore) -> None:
        if isinstance(quotas, _SharedStoreCounts):
            instruments.observe_quota_store(
                lambda: quotas.store_failures, lambda: quotas.unchecked_admissions
            )
        else:
            # The in-process store cannot be unreachable; the series exist all the same, so
            # that dashboards and alerts read zero rather than nothing.
            instruments.observe_quota_store(lambda: 0, lambda: 0)

    async def reload(self) -> list[ReloadOutcome]:
        """Reload the callers file, schemas and key file now (SIGHUP)."""
        return await self.reloader.reload()

    async def stop(self, grace_s: float | None = None, *, delay_s: float | None = None) -> None:
        """Drain: NOT_SERVING at once; keep serving new calls for ``delay_s`` (default
        ``GATEWAY_DRAIN_DELAY_S``) while load balancers take the endpoint out; then refuse new
        calls, let in-flight ones finish for ``grace_s`` (default from settings), cancel the
        rest, then close the upstream.

        A stop while another runs (a test's teardown after a failure, say) joins it: it cuts
        the delay short and, once its own grace has passed, the calls still running, and it
        returns when the one sequence has ended. Two sequences side by side would close the
        ledger, the quota store and the upstream client twice at once. A stop after a
        finished one returns at once."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        delay = self.settings.drain_delay_s if delay_s is None else delay_s
        if self._stopping is not None:
            await self._join_stop(self._stopping, grace)
            return
        self._stopping = asyncio.ensure_future(self._stop(grace, delay))
        await self._stopping

    async def _join_stop(self, stopping: asyncio.Task[None], grace: float) -> None:
        self._delay_cut.set()
        # asyncio.wait, not await: the first stop's outcome is its caller's, not ours.
        done, _ = await asyncio.wait({stopping}, timeout=grace)
        if not done and self._servicer is not None:
            await self._servicer.cut()
        await asyncio.wait({stopping})
        if stopping.cancelled():
            # Its caller gave up half-way (a timeout around it): finish the job.
            self._stopping = None
            await self.stop(grace, delay_s=0)

    async def _stop(self, grace: float, delay: float) -> None:
        await self.health.enter_graceful_shutdown()
        if delay > 0 and self._server is not None:
            # Kubernetes removes a terminating pod from its endpoints while it sends SIGTERM,
            # and clients watching health move away; both take a moment, during which calls
            # still arrive here. They are served as usual rather than refused.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._delay_cut.wait()
        if self._server is not None and self._servicer is not None:
            # While draining, the listener stays open and new calls get UNAVAILABLE with
            # ErrorInfo (retryable elsewhere) instead of being cut by the transport.
            if not await self._servicer.drain(grace):
                # The grace ran out: the calls still running end with UNAVAILABLE, ErrorInfo
                # and RetryInfo (their upstream requests closed) and their rows are queued,
                # all before the transport stops and the ledger is flushed and closed.
                cut = await self._servicer.cut()
                log.warning("shutdown grace ran out: %d call(s) ended with UNAVAILABLE", cut)
            # A short grace lets the statuses of refused and cut calls reach their callers.
            await self._server.stop(_REFUSAL_GRACE_S)
            self._server = None
        await self._stack.aclose()

    def end_drain_delay(self) -> None:
        """Cut the drain delay short (a second signal: the operator does not want to wait)."""
        self._delay_cut.set()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1"
        return f"{host}:{self.port}"


def check_listen_address(listen: str) -> None:
    """Fail with one clear line when the address is taken, before grpc core logs its own."""
    host, _, port_text = listen.rpartition(":")
    if not port_text.isdigit() or int(port_text) == 0:
        return  # grpc resolves the rest (unix sockets, names, port 0)
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - probing the address we will serve on
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port_text)))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None


def _listen_host(listen: str) -> str | None:
    """The host of ``GATEWAY_LISTEN``, or None for a wildcard (which names no server)."""
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - naming the wildcard, not binding it
        return None
    return host.strip("[]")


def load_caller_list(settings: GatewaySettings) -> list[Caller]:
    if settings.callers_file is None:
        raise ConfigError("GATEWAY_CALLERS_FILE is not set: no caller could authenticate")
    return load_callers(settings.callers_file)


__all__ = [
    "SERVICE_NAME",
    "GatewayServer",
    "check_listen_address",
    "load_caller_list",
    "server_options",
]
