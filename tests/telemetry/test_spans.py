"""``SpanRecorder`` against the SDK's own ``Tracer.start_span``: the same spans reach the
processors, field by field, whatever the sampler decides."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from service.telemetry import Telemetry
from service.telemetry.otlp_spans import encode_spans
from service.telemetry.spans import RecordedSpan, SpanRecorder, why_not_recorded

ROOT = Context()
ATTRIBUTES: dict[str, AttributeValue] = {
    "rpc.system": "grpc",
    "rpc.method": "Complete",
    "server.port": 50051,
    "llmgateway.request.id": "req-1",
}
END_ATTRIBUTES: dict[str, AttributeValue] = {
    "rpc.grpc.status_code": 0,
    "gen_ai.usage.input_tokens": 14,
    "gen_ai.response.finish_reasons": ("stop",),
    "llmgateway.fallback_used": True,
    "llmgateway.retry.delay_s": 0.25,
}


class CountingIds(IdGenerator):
    """Deterministic ids, so that two pipelines given the same calls make the same ids."""

    def __init__(self) -> None:
        self.next = 0x1000

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return self.next << 64


@dataclass
class Pipeline:
    exporter: InMemorySpanExporter
    tracer: trace_api.Tracer

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def _pipeline(sampler: Sampler) -> Pipeline:
    provider = TracerProvider(
        sampler=sampler,
        resource=Resource.create({"service.name": "test"}),
        id_generator=CountingIds(),
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Pipeline(exporter, provider.get_tracer("llmgateway", "0.1.0"))


@pytest.fixture
def ours() -> Pipeline:
    return _pipeline(ALWAYS_ON)


def _remote_parent(*, sampled: bool) -> Context:
    parent = SpanContext(
        0xABC << 64,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        trace_state=TraceState([("vendor", "value")]),
    )
    return set_span_in_context(NonRecordingSpan(parent), ROOT)


Start = Callable[[str, Context, SpanKind, Mapping[str, AttributeValue]], trace_api.Span]


def _exercise(start: Start, context: Context) -> trace_api.Span:
    """What the gateway does with a server span and its client child, through ``start``."""
    server = start("llmgateway.v1.CompletionService/Complete", context, SpanKind.SERVER, ATTRIBUTES)
    child = start(
        "chat openai/gpt-4o-mini",
        set_span_in_context(server, ROOT),
        SpanKind.CLIENT,
        {"gen_ai.request.model": "openai/gpt-4o-mini"},
    )
    child.add_event("retry", {"llmgateway.upstream.attempt": 1}, timestamp=1234)
    child.set_status(Status(StatusCode.ERROR, "UPSTREAM_UNAVAILABLE"))
    child.end()
    server.set_attributes(END_ATTRIBUTES)
    server.set_attribute("llmgateway.caller.id", "team-a")
    server.set_status(Status(StatusCode.ERROR, "INTERNAL"))
    server.end()
    return server


def _sdk_start(tracer: trace_api.Tracer) -> Start:
    def start(
        name: str, context: Context, kind: SpanKind, attributes: Mapping[str, AttributeValue]
    ) -> trace_api.Span:
        return tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    return start


def _comparable(span: ReadableSpan) -> tuple[object, ...]:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return (
        span.name,
        span.kind,
        context.trace_id,
        context.span_id,
        context.trace_flags,
        context.trace_state,
        context.is_remote,
        None if parent is None else (parent.trace_id, parent.span_id, parent.is_remote),
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        list(span.links),
        (span.status.status_code, span.status.description),
        span.resource,
        span.instrumentation_scope,
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
    )


def _without_times(request: object) -> object:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    assert isinstance(request, ExportTraceServiceRequest)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.start_time_unix_nano = 0
                span.end_time_unix_nano = 0
    return request


@pytest.mark.parametrize("remote", [None, True, False], ids=["root", "sampled", "unsampled"])
@pytest.mark.parametrize(
    "sampler",
    [ALWAYS_ON, ParentBased(ALWAYS_ON), ParentBased(ALWAYS_OFF), TraceIdRatioBased(0.0)],
    ids=["always_on", "parentbased_on", "parentbased_off", "ratio_0"],
)
def test_recorded_spans_equal_the_sdks(remote: bool | None, sampler: Sampler) -> None:
    sdk, ours = _pipeline(sampler), _pipeline(sampler)
    context = ROOT if remote is None else _remote_parent(sampled=remote)
    sdk_server = _exercise(_sdk_start(sdk.tracer), context)
    our_server = _exercise(SpanRecorder(ours.tracer).start, context)

    assert our_server.get_span_context() == sdk_server.get_span_context()
    assert our_server.is_recording() is sdk_server.is_recording() is False
    assert [_comparable(s) for s in ours.finished()] == [_comparable(s) for s in sdk.finished()]
    # And the bytes an OTLP collector receives (times aside).
    assert _without_times(encode_spans(ours.finished())) == _without_times(
        encode_spans(sdk.finished())
    )


def test_a_sampled_out_span_is_not_recorded_and_its_context_says_so() -> None:
    pipeline = _pipeline(TraceIdRatioBased(0.0))
    span = SpanRecorder(pipeline.tracer).start("x", ROOT, SpanKind.SERVER, {})
    assert not isinstance(span, RecordedSpan)
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert pipeline.finished() == []


def test_ok_is_final_and_a_status_code_takes_a_description(ours: Pipeline) -> None:
    recorder = SpanRecorder(ours.tracer)
    first = recorder.start("a", ROOT, SpanKind.INTERNAL, {})
    first.set_status(StatusCode.ERROR, "broken")
    first.end()
    second = recorder.start("b", ROOT, SpanKind.INTERNAL, {})
    second.set_status(Status(StatusCode.OK))
    second.set_status(Status(StatusCode.ERROR, "too late"))
    second.end()
    statuses = [(s.status.status_code, s.status.description) for s in ours.finished()]
    assert statuses == [(StatusCode.ERROR, "broken"), (StatusCode.OK, None)]


def test_a_span_ends_once_and_ignores_changes_after(ours: Pipeline) -> None:
    span = SpanRecorder(ours.tracer).start("a", ROOT, SpanKind.INTERNAL, {"k": "v"})
    span.end()
    span.set_attribute("late", 1)
    span.add_event("late")
    span.end()
    (finished,) = ours.finished()
    assert dict(finished.attributes or {}) == {"k": "v"}
    assert finished.events == ()


def test_an_exception_is_recorded_by_its_type_only(ours: Pipeline) -> None:
    span = SpanRecorder(ours.tracer).start("a", ROOT, SpanKind.INTERNAL, {})
    span.record_exception(ValueError("the prompt was: something private"))
    span.end()
    (finished,) = ours.finished()
    (event,) = finished.events
    assert event.name == "exception"
    assert dict(event.attributes or {}) == {"exception.type": "ValueError"}


def test_a_tracer_that_is_not_the_sdks_starts_its_own_spans() -> None:
    span = SpanRecorder(trace_api.NoOpTracer()).start("a", ROOT, SpanKind.INTERNAL, {})
    assert span is trace_api.INVALID_SPAN


def test_flags_follow_a_random_id_generator_like_the_sdks() -> None:
    provider = TracerProvider()  # the default, random ids: W3C's random-trace-id flag is set
    tracer = provider.get_tracer("llmgateway", "0.1.0")
    sdk_span = tracer.start_span("a", context=ROOT)
    our_span = SpanRecorder(tracer).start("a", ROOT, SpanKind.INTERNAL, {})
    assert our_span.get_span_context().trace_flags == sdk_span.get_span_context().trace_flags
    child_context = set_span_in_context(our_span, ROOT)
    sdk_child = tracer.start_span("b", context=child_context)
    our_child = SpanRecorder(tracer).start("b", child_context, SpanKind.INTERNAL, {})
    assert our_child.get_span_context().trace_flags == sdk_child.get_span_context().trace_flags


def test_the_pinned_sdk_keeps_the_fast_path(ours: Pipeline) -> None:
    # The SDK internals the recorder reads are where it expects them: a release that moves
    # them fails here rather than slowing every RPC down unnoticed.
    assert why_not_recorded(ours.tracer) is None
    assert SpanRecorder(ours.tracer).fast


def _many_attributes() -> dict[str, AttributeValue]:
    return {f"a{i}": "x" * 40 for i in range(12)}


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (SpanLimits(max_span_attributes=4), "max_span_attributes=4"),
        (SpanLimits(max_attribute_length=8), "max_attribute_length=8"),
        (SpanLimits(max_events=1), "max_events=1"),
    ],
    ids=["attribute-count", "attribute-length", "event-count"],
)
def test_span_limits_hand_spans_to_the_sdk(
    limits: SpanLimits, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider = TracerProvider(span_limits=limits)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("llmgateway", "0.1.0")
    with caplog.at_level(logging.INFO, logger="service.telemetry.spans"):
        recorder = SpanRecorder(tracer)
    assert not recorder.fast
    assert any(reason in r.getMessage() for r in caplog.records)
    span = recorder.start("a", ROOT, SpanKind.SERVER, _many_attributes())
    span.add_event("first")
    span.add_event("second")
    span.end()
    (finished,) = exporter.get_finished_spans()
    # The SDK applied the limits, as it would without the recorder.
    assert not isinstance(span, RecordedSpan)
    attributes = dict(finished.attributes or {})
    if limits.max_span_attributes == 4:
        assert len(attributes) == 4
        assert finished.dropped_attributes == 8
    if limits.max_attribute_length == 8:
        assert all(value == "x" * 8 for value in attributes.values())
    if limits.max_events == 1:
        assert len(finished.events) == 1
        assert finished.dropped_events == 1


def test_limits_from_the_environment_hand_spans_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "16")
    tracer = TracerProvider().get_tracer("llmgateway", "0.1.0")
    assert why_not_recorded(tracer) == "span limits are configured (max_attribute_length=16)"
    assert not SpanRecorder(tracer).fast


def test_limits_at_or_above_the_defaults_keep_the_fast_path() -> None:
    provider = TracerProvider(span_limits=SpanLimits(max_attributes=1000, max_events=128))
    assert SpanRecorder(provider.get_tracer("llmgateway")).fast


class StampingProcessor(SpanProcessor):
    """A processor the recorder does not know: its on_start matters (it adds an attribute)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span.set_attribute("stamped", True)


def test_an_unknown_span_processor_hands_spans_to_the_sdk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(StampingProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with caplog.at_level(logging.INFO, logger="service.telemetry.spans"):
        recorder = SpanRecorder(provider.get_tracer("llmgateway", "0.1.0"))
    assert not recorder.fast
    assert any("StampingProcessor" in r.getMessage() for r in caplog.records)
    recorder.start("a", ROOT, SpanKind.SERVER, {"k": "v"}).end()
    (finished,) = exporter.get_finished_spans()
    # Its on_start ran, as it does for the SDK's own spans.
    assert dict(finished.attributes or {}) == {"k": "v", "stamped": True}


def test_the_gateway_telemetry_falls_back_too() -> None:
    provider = TracerProvider(span_limits=SpanLimits(max_attributes=2))
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    telemetry = Telemetry(tracer_provider=provider)
    assert telemetry.spans is not None
    assert not telemetry.spans.fast
    known = TracerProvider()
    known.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    fast = Telemetry(tracer_provider=known)
    assert fast.spans is not None
    assert fast.spans.fast
