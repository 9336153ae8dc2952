"""Channels to the gateway with the caller's key and the recommended configuration.

Three transports, one per way a caller reaches the gateway:

- ``"tls"`` (the default): TLS plus the key as call credentials
  (``grpc.composite_channel_credentials``), optionally with a client certificate.
- ``"local"``: no encryption, for a gateway on the same host (``make run``, a sidecar):
  ``grpc.local_channel_credentials`` lets gRPC attach the call credentials, and refuses any
  peer that is not on a loopback address, so the key never crosses a network in clear text.
- ``"plaintext"``: no encryption over a network that is encrypted below gRPC (a service mesh
  with mTLS sidecars). gRPC never sends call credentials on an insecure channel, so an
  interceptor adds the ``authorization`` metadata instead. Choose it deliberately.

Use a ``dns:///host:port`` target: with the service config below, the channel then balances
calls round-robin over every address the name resolves to (a Kubernetes headless service).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import grpc
import grpc.aio

SERVICE = "llmgateway.v1.CompletionService"
# The gateway's default limit (GATEWAY_MAX_MESSAGE_BYTES, 32 MiB: room for media in and images
# out); larger messages fail on its side.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

Transport = Literal["tls", "local", "plaintext"]
ChannelOption = tuple[str, str | int]


def service_config(
    *, max_attempts: int = 3, initial_backoff_s: float = 0.2, max_backoff_s: float = 2.0
) -> dict[str, Any]:
    """gRPC service config: round-robin, and transparent retries of UNAVAILABLE only.

    UNAVAILABLE is the one code the gateway marks safe to retry blindly (the gateway was
    draining, or the upstream failed before anything was generated). gRPC retries a stream only
    until its first response message, so a retried StreamComplete never repeats output.
    """
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_s}s",
                    "maxBackoff": f"{max_backoff_s}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }


def channel_options(
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_time_ms: int = 30_000,
    config: dict[str, Any] | None = None,
) -> list[ChannelOption]:
    """The recommended channel options: service config, keepalive and message sizes.

    Keepalive pings every 30 s while calls are open keep long streams alive through NATs and
    load balancers and notice a dead gateway within ~40 s; the gateway accepts pings every 10 s.
    """
    return [
        ("grpc.service_config", json.dumps(config or service_config())),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def bearer_credentials(key: str) -> grpc.CallCredentials:
    """Call credentials sending ``authorization: Bearer <key>`` with every call."""
    return grpc.access_token_call_credentials(key)


def channel_credentials(
    key: str,
    *,
    transport: Literal["tls", "local"] = "tls",
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials that carry the key: TLS (optionally mutual), or loopback-only."""
    if transport == "tls":
        base = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    else:
        base = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    return grpc.composite_channel_credentials(base, bearer_credentials(key))


def connect(
    target: str,
    key: str,
    *,
    transport: Transport = "tls",
    root_certificates: bytes | None = None,
    options: Sequence[ChannelOption] | None = None,
) -> grpc.Channel:
    """A synchronous channel to the gateway; pass it to ``CompletionServiceStub``."""
    opts = list(options if options is not None else channel_options())
    if transport == "plaintext":
        return grpc.intercept_channel(
            grpc.insecure_channel(target, options=opts), BearerKeyInterceptor(key)
        )
    creds = channel_credentials(key, transport=transport, root_certificates=root_certificates)
    return grpc.secure_channel(target, creds, options=opts)


def connect_async(
    target: str,
    key: str,
    *,
    transport: Transport = "tls",
    root_certificates: bytes | None = None,
    options: Sequence[ChannelOption] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to the gateway; pass it to ``CompletionServiceStub``."""
    opts = list(options if options is not None else channel_options())
    if transport == "plaintext":
        return grpc.aio.insecure_channel(
            target, options=opts, interceptors=async_bearer_key_interceptors(key)
        )
    creds = channel_credentials(key, transport=transport, root_certificates=root_certificates)
    return grpc.aio.secure_channel(target, creds, options=opts)


def _with_key(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> list[Any]:
    kept = [(k, v) for k, v in (metadata or ()) if k.lower() != "authorization"]
    return [*kept, ("authorization", f"Bearer {key}")]


class _CallDetails(grpc.ClientCallDetails):
    """A copy of a call's details with other metadata (grpc offers no constructor for it)."""

    def __init__(self, base: grpc.ClientCallDetails, metadata: list[Any]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class BearerKeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <key>`` to every call of a plaintext sync channel."""

    def __init__(self, key: str) -> None:
        self._key = key

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, _with_key(details.metadata, self._key))

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)


class _AsyncKey:
    def __init__(self, key: str) -> None:
        self._key = key

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*_with_key(list(details.metadata or ()), self._key)),
            details.credentials,
            details.wait_for_ready,
        )


class _AsyncUnaryKey(_AsyncKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncStreamKey(_AsyncKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def async_bearer_key_interceptors(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <key>`` to every call of a plaintext asyncio
    channel: one per call shape, as grpc.aio files each interceptor under one shape only."""
    return [_AsyncUnaryKey(key), _AsyncStreamKey(key)]
