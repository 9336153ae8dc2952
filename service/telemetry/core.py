"""The ``Telemetry`` object (a tracer and metric instruments, or neither) and the names they use.

A ``Telemetry`` is built once (``service.telemetry.setup`` from the environment, or a test with
in-memory providers) and passed down; nothing here touches OpenTelemetry's global providers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import SpanContext, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from service.domain.usage import LedgerCounters
from service.telemetry.spans import SpanRecorder

SCOPE: Final = "llmgateway"
SCOPE_VERSION: Final = "0.1.0"

# --- attribute names (OpenTelemetry semantic conventions, then the gateway's own) ----------

RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_FULL: Final = "url.full"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # noqa: S105 - an attribute name
CALLER_ID: Final = "llmgateway.caller.id"
REQUEST_ID: Final = "llmgateway.request.id"
ATTEMPT: Final = "llmgateway.upstream.attempt"
ATTEMPTS: Final = "llmgateway.upstream.attempts"
RETRIES: Final = "llmgateway.upstream.retries"
OUTCOME: Final = "llmgateway.outcome"
CONFIG_SOURCE: Final = "llmgateway.config.source"
LEDGER_OUTCOME: Final = "llmgateway.ledger.outcome"
UPSTREAM_PROVIDER: Final = "llmgateway.upstream.provider"
RETRY_DELAY: Final = "llmgateway.retry.delay_s"
FALLBACK_USED: Final = "llmgateway.fallback_used"
REPAIR_USED: Final = "llmgateway.repair_used"
POLICY_RULE: Final = "llmgateway.policy.rule"
POLICY_BREACHES: Final = "llmgateway.policy.breaches"

OPERATION_CHAT: Final = "chat"
OPERATION_EMBEDDINGS: Final = "embeddings"
PROVIDER_OPENROUTER: Final = "openrouter"

# Bucket boundaries in seconds (the SDK's defaults are made for milliseconds).
_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
# From the GenAI semantic conventions.
_TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
_TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
_OVERHEAD_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


Key = tuple[AttributeValue, ...]


class Tally:
    """A counter's totals per attribute set, kept in a plain dict and reported when a reader
    collects (an observable counter).

    An SDK ``Counter.add`` validates, copies and hashes its attributes on every call (~20 µs);
    this is one dict update. Only the event loop adds; a reader's thread takes a copy, which
    CPython makes atomically.
    """

    def __init__(self, *names: str) -> None:
        self._names = names
        self._totals: dict[Key, float] = {}
        self._attributes: dict[Key, Mapping[str, AttributeValue]] = {}

    def add(self, key: Key, amount: float = 1) -> None:
        totals = self._totals
        totals[key] = totals.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        for key, total in self._totals.copy().items():
            attributes = self._attributes.get(key)
            if attributes is None:
                attributes = self._attributes[key] = dict(zip(self._names, key, strict=True))
            yield Observation(total, attributes)


class Gauge:
    """A value the event loop moves up and down, reported when a reader collects."""

    def __init__(self) -> None:
        self.value = 0

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(self.value)


class Instruments:
    """Every metric the gateway records. Label values are bounded: RPC names, status codes,
    caller ids from the callers file, catalog model ids and error reasons; never request ids.

    Counters are ``Tally``s (cheap on the hot path); histograms are the SDK's, recorded once
    per RPC.
    """

    def __init__(self, meter: Meter) -> None:
        self.requests = Tally(RPC_METHOD, RPC_GRPC_STATUS_CODE, CALLER_ID, GEN_AI_REQUEST_MODEL)
        meter.create_observable_counter(
            "llmgateway.requests",
            [self.requests.observe],
            unit="{request}",
            description="RPCs served, by outcome.",
        )
        self.duration: Histogram = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of an RPC, as seen by the server.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.time_to_first_token: Histogram = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            unit="s",
            description="From the start of the RPC to the first generated token.",
            explicit_bucket_boundaries_advisory=_TTFT_BUCKETS,
        )
        self.token_usage: Histogram = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per RPC, by type (input, output).",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.tokens = Tally(CALLER_ID, GEN_AI_REQUEST_MODEL, GEN_AI_TOKEN_TYPE)
        meter.create_observable_counter(
            "llmgateway.tokens",
            [self.tokens.observe],
            unit="{token}",
            description="Tokens used, by caller, model and type (input, output).",
        )
        self.cost = Tally(CALLER_ID, GEN_AI_REQUEST_MODEL)
        meter.create_observable_counter(
            "llmgateway.cost", [self.cost.observe], unit="USD", description="Cost reported."
        )
        self.active_streams = Gauge()
        meter.create_observable_up_down_counter(
            "llmgateway.streams.active",
            [self.active_streams.observe],
            unit="{stream}",
            description="Streams in flight.",
        )
        self.attempts = Tally(OUTCOME)
        meter.create_observable_counter(
            ATTEMPTS,
            [self.attempts.observe],
            unit="{attempt}",
            description="Upstream chat attempts, by outcome.",
        )
        self.retries = Tally(ERROR_TYPE)
        meter.create_observable_counter(
            RETRIES,
            [self.retries.observe],
            unit="{retry}",
            description="Upstream retries, by the error retried.",
        )
        self.errors = Tally(RPC_METHOD, CALLER_ID, ERROR_TYPE)
        meter.create_observable_counter(
            "llmgateway.errors",
            [self.errors.observe],
            unit="{request}",
            description="Failed RPCs, by ErrorInfo reason (QUOTA_EXCEEDED: quota refusals).",
        )
        self.upstream_responses = Tally(HTTP_RESPONSE_STATUS_CODE)
        meter.create_observable_counter(
            "llmgateway.upstream.responses",
            [self.upstream_responses.observe],
            unit="{response}",
            description="Upstream chat attempts that got an HTTP answer, by status code.",
        )
        self.reloads = Tally(CONFIG_SOURCE, OUTCOME)
        meter.create_observable_counter(
            "llmgateway.config.reloads",
            [self.reloads.observe],
            unit="{reload}",
            description="Reloads of the callers file, schemas and key file (ok or failed).",
        )
        self._meter = meter
        self.policy_breaches = Tally(CALLER_ID, UPSTREAM_PROVIDER, POLICY_RULE)
        meter.create_observable_counter(
            POLICY_BREACHES,
            [self.policy_breaches.observe],
            unit="{answer}",
            description="Answers served by a provider the caller's policy forbids, by caller, "
            "provider and rule (returned flagged, or withheld).",
        )
        self.overhead: Histogram = meter.create_histogram(
            "llmgateway.overhead",
            unit="s",
            description="Time an RPC spent outside the upstream call (the gateway's own cost).",
            explicit_bucket_boundaries_advisory=_OVERHEAD_BUCKETS,
        )

    def observe_ledger(self, counters: Callable[[], LedgerCounters]) -> None:
        """Report the usage ledger's queue and what it wrote, rejected and dropped, read from
        ``counters`` whenever a reader collects."""

        def pending(options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(counters().pending)

        def records(options: CallbackOptions) -> Iterator[Observation]:
            now = counters()
            for outcome, count in (
                ("written", now.written),
                ("rejected", now.rejected),
                ("dropped", now.dropped),
            ):
                yield Observation(count, {LEDGER_OUTCOME: outcome})

        self._meter.create_observable_gauge(
            "llmgateway.ledger.pending",
            [pending],
            unit="{record}",
            description="Usage records queued, not yet written.",
        )
        self._meter.create_observable_counter(
            "llmgateway.ledger.records",
            [records],
            unit="{record}",
            description="Usage records written, rejected by the database, or dropped.",
        )

    def observe_quota_store(
        self, failures: Callable[[], int], unchecked: Callable[[], int]
    ) -> None:
        """Report calls that found the shared quota store unreachable, and requests admitted
        unchecked meanwhile (``fail_open``)."""

        def observe(read: Callable[[], int]) -> Callable[[CallbackOptions], Iterator[Observation]]:
            def callback(options: CallbackOptions) -> Iterator[Observation]:
                yield Observation(read())

            return callback

        self._meter.create_observable_counter(
            "llmgateway.quota.store.failures",
            [observe(failures)],
            unit="{call}",
            description="Quota checks that found the shared quota store unreachable.",
        )
        self._meter.create_observable_counter(
            "llmgateway.quota.unchecked",
            [observe(unchecked)],
            unit="{request}",
            description="Requests admitted without a quota check (fail_open, store down).",
        )


class Telemetry:
    """Where spans and metrics go. ``Telemetry()`` is the disabled form: no tracer, no
    instruments, and the instrumented code skips its work rather than calling no-op objects.

    Providers are injected (tests pass in-memory ones); ``on_shutdown`` are the closers of what
    the builder made, run by ``shutdown()``, which leaves injected providers to their owner.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        on_shutdown: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.tracer: Tracer | None = (
            tracer_provider.get_tracer(SCOPE, SCOPE_VERSION) if tracer_provider else None
        )
        self.spans: SpanRecorder | None = (
            SpanRecorder(self.tracer) if self.tracer is not None else None
        )
        """How the gateway starts its spans (``service.telemetry.spans``)."""
        self.instruments: Instruments | None = (
            Instruments(meter_provider.get_meter(SCOPE, SCOPE_VERSION)) if meter_provider else None
        )
        self._on_shutdown = list(on_shutdown)
        self.prometheus_port: int | None = None
        """The scrape endpoint's port, when one is served."""

    @property
    def enabled(self) -> bool:
        return self.tracer is not None or self.instruments is not None

    def shutdown(self) -> None:
        """Flush and stop what this object built (exports pending spans and metrics; blocks)."""
        closers, self._on_shutdown = self._on_shutdown, []
        for close in closers:
            close()

    def __repr__(self) -> str:
        parts = [
            name for name, on in (("traces", self.tracer), ("metrics", self.instruments)) if on
        ]
        return f"Telemetry({', '.join(parts) or 'disabled'})"


# --- W3C trace context ------------------------------------------------------------------------

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# The W3C propagator's own pattern for a version-00 compatible header.
# Matched whole (fullmatch), so nothing a caller appends (CR/LF, a second header) survives:
# a header that does not fit is ignored and the call starts a new trace, never fails.
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?"
)
# W3C tracestate: printable ASCII list members; anything else (control characters) is dropped.
_TRACESTATE_RE: Final = re.compile(r"[\x20-\x7e]*")
_MAX_TRACEPARENT: Final = 256
_MAX_TRACESTATE: Final = 512
_OWS: Final = " \t"


def incoming_trace(traceparent: str | None, tracestate: str | None) -> dict[str, str] | None:
    """A caller's trace context, checked, as headers to pass on; None when absent or invalid."""
    if traceparent is None or len(traceparent) > _MAX_TRACEPARENT:
        return None
    traceparent = traceparent.strip(_OWS)
    match = _TRACEPARENT_RE.fullmatch(traceparent)
    if (
        match is None
        or match.group(1) == "ff"
        or match.group(2) == "0" * 32
        or match.group(3) == "0" * 16
        or (match.group(1) == "00" and match.group(5) is not None)
    ):
        return None
    headers = {TRACEPARENT: traceparent}
    if tracestate and len(tracestate) <= _MAX_TRACESTATE:
        tracestate = tracestate.strip(_OWS)
        if tracestate and _TRACESTATE_RE.fullmatch(tracestate):
            headers[TRACESTATE] = tracestate
    return headers


def trace_headers(span: SpanContext) -> dict[str, str]:
    """``traceparent``/``tracestate`` naming ``span`` as the parent: what the W3C propagator's
    ``inject`` writes, without building a ``Context`` for it."""
    if not span.is_valid:
        return {}
    headers = {TRACEPARENT: f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"}
    if span.trace_state:
        headers[TRACESTATE] = span.trace_state.to_header()
    return headers


class TraceHeaders(dict[str, str]):
    """Trace headers for OpenRouter that also hold the ``Context`` of the span they name, so
    the upstream observer parents its spans on it instead of parsing the headers back. To the
    domain it is just the request's ``Mapping[str, str]`` of trace headers."""

    __slots__ = ("context", "recording")

    def __init__(self, headers: Mapping[str, str], context: Context, *, recording: bool) -> None:
        super().__init__(headers)
        self.context = context
        self.recording = recording
        """False when the span was sampled out: its attempts need no spans of their own."""
