"""Spans recorded straight into the SDK's span processors, without the SDK's ``Span`` objects.

Why: the gateway makes two spans per RPC (the server span and the OpenRouter attempt's client
span) and the SDK's ``Tracer.start_span`` … ``end`` costs ~80 µs per span on this machine in
a tight loop, two to three times that in the running server: a ``BoundedAttributes`` that
re-validates every attribute on every set (60 % of it), locks, ``BoundedList``s for events
and links, self-observability hooks. ``make bench`` measured tracing every RPC at ~25 % of the
gateway's CPU per call.

What stays the SDK's: the sampler (``OTEL_TRACES_SAMPLER`` and its parent-based rules), the
id generator, the resource, the instrumentation scope, and the span processors and exporters
(batching, OTLP, and in tests the in-memory exporter). A ``RecordedSpan`` makes the same
sampling decision, span context (flags included) and ``ReadableSpan`` as
``Tracer.start_span`` would; ``tests/telemetry/test_spans.py`` compares the two field by field.

What is left out, deliberately:

* attribute validation and limits: the gateway's own code sets every attribute, from a fixed
  set of names with str, int, float, bool or tuple-of-str values, far fewer than the SDK's
  default limits;
* span processors' ``on_start`` (the gateway's pipeline, ``BatchSpanProcessor`` or
  ``SimpleSpanProcessor``, does nothing there) and the SDK's self-metrics;
* ``record_exception`` records the exception's type only: messages of third-party
  exceptions can quote request data.

Guarded: the recorder reads a few of the SDK tracer's private attributes (its scope, span
limits and span processors; pinned in ``pyproject.toml`` to the versions tested). At start-up
(``SpanRecorder(tracer)``) it checks them, and uses the tracer's own ``start_span`` instead,
with one INFO line saying why, when it cannot be sure to record what the SDK would: a tracer
that is not the SDK's own ``Tracer`` (a proxy, a subclass), an SDK whose internals moved, span
limits tighter than the SDK's defaults (``OTEL_SPAN_*_LIMIT``, ``OTEL_ATTRIBUTE_*_LIMIT``),
a span processor other than ``BatchSpanProcessor``/``SimpleSpanProcessor`` (its ``on_start``
may matter), or a tracer its configurator disabled. ``fast`` says which path was chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Final

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import (
    ConcurrentMultiSpanProcessor,
    Event,
    ReadableSpan,
    SpanLimits,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

_SAMPLED: Final = TraceFlags.SAMPLED
_RANDOM_TRACE_ID: Final = TraceFlags.RANDOM_TRACE_ID
_UNSET: Final = Status(StatusCode.UNSET)
_EXCEPTION_TYPE: Final = "exception.type"

log = logging.getLogger(__name__)

# Processors whose on_start does nothing, so that skipping it changes nothing.
_KNOWN_PROCESSORS: Final = (BatchSpanProcessor, SimpleSpanProcessor)
# The SDK's default count limits. The gateway's spans (some 30 attributes, a few events, no
# links) stay far below them, so under them (or none) the SDK would drop nothing either.
_DEFAULT_COUNT_LIMIT: Final = 128
_COUNT_LIMITS: Final = (
    "max_attributes",
    "max_span_attributes",
    "max_events",
    "max_links",
    "max_event_attributes",
    "max_link_attributes",
)
_LENGTH_LIMITS: Final = ("max_attribute_length", "max_span_attribute_length")


def why_not_recorded(tracer: trace_api.Tracer) -> str | None:
    """Why the recorder must leave ``tracer`` to its own ``start_span``; None when it need not."""
    if type(tracer) is not sdk_trace.Tracer:
        return f"the tracer is a {type(tracer).__name__}, not the SDK's own Tracer"
    if not isinstance(getattr(tracer, "_instrumentation_scope", None), InstrumentationScope):
        return "the SDK's Tracer has no _instrumentation_scope (its internals changed)"
    enabled = getattr(tracer, "_is_enabled", None)
    if callable(enabled) and not enabled():
        return "the tracer's configurator disabled it"
    limits = getattr(tracer, "_span_limits", None)
    if not isinstance(limits, SpanLimits):
        return "the SDK's Tracer has no _span_limits (its internals changed)"
    for name in _COUNT_LIMITS:
        value = getattr(limits, name, None)
        if value is not None and value < _DEFAULT_COUNT_LIMIT:
            return f"span limits are configured ({name}={value})"
    for name in _LENGTH_LIMITS:
        value = getattr(limits, name, None)
        if value is not None:
            return f"span limits are configured ({name}={value})"
    multi = tracer.span_processor
    processors = getattr(multi, "_span_processors", None)
    if type(multi) not in (SynchronousMultiSpanProcessor, ConcurrentMultiSpanProcessor) or (
        not isinstance(processors, tuple)
    ):
        return f"the span processor {type(multi).__name__} is not one the recorder knows"
    for processor in processors:
        if type(processor) not in _KNOWN_PROCESSORS:
            return f"the span processor {type(processor).__name__} is not one the recorder knows"
    return None


class SpanRecorder:
    """Starts spans for one tracer: recorded cheaply when it is the SDK's, else by the tracer."""

    __slots__ = ("_ids", "_processor", "_sampler", "_scope", "_sdk_tracer", "_tracer")

    def __init__(self, tracer: trace_api.Tracer) -> None:
        self._tracer = tracer
        self._scope: InstrumentationScope | None = None
        reason = why_not_recorded(tracer)
        if reason is not None:
            # Only worth a line when an SDK tracer takes the slow path (a no-op tracer is cheap).
            if isinstance(tracer, sdk_trace.Tracer):
                log.info("spans are started by the SDK's own tracer (slower): %s", reason)
            return
        assert isinstance(tracer, sdk_trace.Tracer)
        self._sdk_tracer = tracer
        self._sampler = tracer.sampler
        self._ids = tracer.id_generator
        self._processor = tracer.span_processor
        # The scope the SDK gives its spans, attributes included (the public
        # instrumentation_info is deprecated and has none).
        self._scope = tracer._instrumentation_scope

    @property
    def fast(self) -> bool:
        """Whether spans are recorded here rather than by the tracer's ``start_span``."""
        return self._scope is not None

    def start(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue],
    ) -> trace_api.Span:
        """A started span, child of the span in ``context`` (if any); ``Tracer.start_span``'s
        contract, for what the gateway uses of it."""
        scope = self._scope
        if scope is None:
            return self._tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
        else:
            trace_id = parent.trace_id
        sampling = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
        decision = sampling.decision
        flags = _SAMPLED if decision is Decision.RECORD_AND_SAMPLE else 0
        random_id = (
            self._ids.is_trace_id_random() if parent is None else parent.trace_flags.random_trace_id
        )
        if random_id:
            flags |= _RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampling.trace_state,
        )
        if decision is Decision.DROP:
            return NonRecordingSpan(span_context)
        return RecordedSpan(
            self._processor,
            name,
            span_context,
            parent,
            kind,
            dict(sampling.attributes or {}),
            scope,
            self._sdk_tracer,
        )


class RecordedSpan(trace_api.Span):
    """A recording span whose ``end`` hands one ``ReadableSpan`` to the span processors."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_processor",
        "_scope",
        "_start_time",
        "_status",
        "_tracer",
    )

    def __init__(
        self,
        processor: sdk_trace.SpanProcessor,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        scope: InstrumentationScope,
        tracer: sdk_trace.Tracer,
    ) -> None:
        self._processor = processor
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._scope = scope
        self._tracer = tracer
        self._events: list[Event] = []
        self._status = _UNSET
        self._start_time = time_ns()
        self._end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is None:
            self._events.append(
                Event(name, dict(attributes or {}), timestamp if timestamp else time_ns())
            )

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        # The gateway links nothing; a link after start is not worth the bookkeeping.
        return

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final; a StatusCode with a description becomes a Status.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.add_event(
            "exception",
            {**(attributes or {}), _EXCEPTION_TYPE: type(exception).__name__},
            timestamp,
        )

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._tracer.resource,
                attributes=self._attributes,
                events=self._events,
                links=_NO_LINKS,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=self._end_time,
                instrumentation_scope=self._scope,
            )
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.end()


_NO_LINKS: Final[Sequence[Link]] = ()
