"""Telemetry of upstream attempts: a client span per OpenRouter chat attempt, and its metrics.

``UpstreamTelemetry`` is the ``AttemptObserver`` the OpenRouter client calls. Its span is a
child of the RPC's server span, found through the ``traceparent`` the servicer put in the
request's ``trace_headers``; the attempt's own ``traceparent`` replaces it on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from service.domain.completion import CallStats
from service.errors import GatewayError, UpstreamError
from service.telemetry.core import (
    ATTEMPT,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_STREAM,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
    OPERATION_CHAT,
    PROVIDER_OPENROUTER,
    RETRY_DELAY,
    SERVER_ADDRESS,
    SERVER_PORT,
    UPSTREAM_PROVIDER,
    URL_FULL,
    Instruments,
    Telemetry,
    TraceHeaders,
    trace_headers,
)
from service.telemetry.spans import SpanRecorder
from service.upstream.observer import ObservedRequest

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_GETTER: Final = DefaultGetter()
_ROOT: Final = Context()
_NO_HEADERS: Final[Mapping[str, str]] = {}
_OK: Final = "ok"
_CANCELLED: Final = "cancelled"


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (``url.full`` must not carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class UpstreamTelemetry:
    """Client spans and attempt metrics for chat calls; ``None`` from ``create`` when off."""

    def __init__(self, spans: SpanRecorder | None, metrics: Instruments | None) -> None:
        self._spans = spans
        self.metrics = metrics
        self._by_url: dict[str, Mapping[str, AttributeValue]] = {}

    @classmethod
    def create(cls, telemetry: Telemetry) -> UpstreamTelemetry | None:
        """The observer for ``telemetry``, or None so that a disabled client does no work."""
        if not telemetry.enabled:
            return None
        return cls(telemetry.spans, telemetry.instruments)

    def attempt(
        self,
        request: ObservedRequest,
        number: int,
        *,
        url: str,
        stream: bool,
        operation: str = OPERATION_CHAT,
    ) -> Attempt:
        if self._spans is None:
            return Attempt(self, None, number, _NO_HEADERS)
        trace = request.trace_headers
        if isinstance(trace, TraceHeaders):
            if not trace.recording:
                # Sampled out: the RPC's own context (flagged unsampled) goes upstream as is.
                return Attempt(self, None, number, _NO_HEADERS)
            parent = trace.context
        elif trace:
            parent = _PROPAGATOR.extract(trace, _ROOT, _GETTER)
        else:
            parent = _ROOT
        span = self._spans.start(
            f"{operation} {request.model}",
            parent,
            SpanKind.CLIENT,
            {
                **self._static(url, operation),
                GEN_AI_REQUEST_MODEL: request.model,
                GEN_AI_REQUEST_STREAM: stream,
                ATTEMPT: number,
            },
        )
        return Attempt(self, span, number, trace_headers(span.get_span_context()))

    def _static(self, url: str, operation: str) -> Mapping[str, AttributeValue]:
        # One URL per operation (/chat/completions, /embeddings): the URL is the key.
        attributes = self._by_url.get(url)
        if attributes is None:
            parts = urlsplit(url)
            attributes = {
                GEN_AI_OPERATION_NAME: operation,
                GEN_AI_PROVIDER_NAME: PROVIDER_OPENROUTER,
                HTTP_REQUEST_METHOD: "POST",
                URL_FULL: safe_url(url),
                SERVER_ADDRESS: parts.hostname or "",
                SERVER_PORT: parts.port or (443 if parts.scheme == "https" else 80),
            }
            self._by_url[url] = attributes
        return attributes


class Attempt:
    """One attempt (an ``UpstreamAttempt``): ends its span and counts it, once."""

    __slots__ = ("_done", "_number", "_owner", "_span", "headers")

    def __init__(
        self,
        owner: UpstreamTelemetry,
        span: Span | None,
        number: int,
        headers: Mapping[str, str],
    ) -> None:
        self._owner = owner
        self._span = span
        self._number = number
        self.headers = headers
        self._done = False

    def succeeded(self, stats: CallStats, finish_reason: str) -> None:
        if self._done:
            return
        self._done = True
        span = self._span
        if span is not None and span.is_recording():
            attributes: dict[str, AttributeValue] = {HTTP_RESPONSE_STATUS_CODE: 200}
            if stats.served_model:
                attributes[GEN_AI_RESPONSE_MODEL] = stats.served_model
            if stats.generation_id:
                attributes[GEN_AI_RESPONSE_ID] = stats.generation_id
            if stats.provider:
                attributes[UPSTREAM_PROVIDER] = stats.provider
            if stats.usage is not None:
                attributes[GEN_AI_USAGE_INPUT_TOKENS] = stats.usage.prompt_tokens
                attributes[GEN_AI_USAGE_OUTPUT_TOKENS] = stats.usage.completion_tokens
            if finish_reason:
                attributes[GEN_AI_RESPONSE_FINISH_REASONS] = (finish_reason,)
            span.set_attributes(attributes)
        if span is not None:
            span.end()
        metrics = self._owner.metrics
        if metrics is not None:
            metrics.attempts.add((_OK,))
            metrics.upstream_responses.add((200,))

    def retrying(self, error: UpstreamError, delay_s: float) -> None:
        if self._done:
            return
        if self._span is not None:
            self._span.add_event(
                "retry", {ATTEMPT: self._number, RETRY_DELAY: delay_s, ERROR_TYPE: error.reason}
            )
        self._fail(error, error.reason)
        metrics = self._owner.metrics
        if metrics is not None:
            metrics.retries.add((error.reason,))

    def failed(self, error: BaseException) -> None:
        if self._done:
            return
        outcome: str
        if isinstance(error, GatewayError):
            outcome = error.reason
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            outcome = _CANCELLED
        else:
            outcome = type(error).__name__
        self._fail(error, outcome)

    def _fail(self, error: BaseException, outcome: str) -> None:
        self._done = True
        status = error.status if isinstance(error, UpstreamError) else None
        span = self._span
        if span is not None:
            attributes: dict[str, AttributeValue] = {ERROR_TYPE: outcome}
            if status is not None:
                attributes[HTTP_RESPONSE_STATUS_CODE] = status
            span.set_attributes(attributes)
            if outcome != _CANCELLED:
                # The reason only: an exception's message may quote upstream text.
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()
        metrics = self._owner.metrics
        if metrics is not None:
            metrics.attempts.add((outcome,))
            if status is not None:
                metrics.upstream_responses.add((status,))
