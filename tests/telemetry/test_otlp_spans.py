"""The fast OTLP span encoder against the SDK's: equal messages and identical bytes."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from bench.otlp_sink import OtlpSink
from service.telemetry import otlp_spans
from service.telemetry.otlp_spans import (
    ATTRIBUTE_CACHE_MAX,
    ATTRIBUTE_CACHES,
    SPAN_ATTRIBUTES,
    FastOTLPSpanExporter,
    clear_caches,
    encode_spans,
    encode_spans_bytes,
)

KINDS = list(SpanKind)
STATUSES = [
    Status(StatusCode.UNSET),
    Status(StatusCode.OK),
    Status(StatusCode.ERROR),
    Status(StatusCode.ERROR, "upstream said no: ünïcødé"),
    Status(StatusCode.ERROR, ""),
]


def _assert_equivalent(spans: Sequence[ReadableSpan]) -> None:
    expected = sdk_encode_spans(spans)
    data = encode_spans_bytes(spans)
    assert ExportTraceServiceRequest.FromString(data) == expected
    assert encode_spans(spans) == expected
    assert data == expected.SerializeToString()


# --- random attribute values --------------------------------------------------------------------


def _text(rng: random.Random) -> str:
    pool = "abcXYZ09 _-./:é中文🙂\n\t\x00"
    return "".join(rng.choice(pool) for _ in range(rng.choice((0, 1, 3, 12, 40, 200))))


def _int(rng: random.Random) -> int:
    return rng.choice(
        (0, 1, -1, 127, 128, 300, -300, 2**31, -(2**31), 2**63 - 1, -(2**63), rng.getrandbits(40))
    )


def _float(rng: random.Random) -> float:
    return rng.choice((0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, math.inf, -math.inf, rng.random()))


def _scalar(rng: random.Random, kind: str) -> Any:
    if kind == "str":
        return _text(rng)
    if kind == "int":
        return _int(rng)
    if kind == "float":
        return _float(rng)
    if kind == "bool":
        return rng.random() < 0.5
    return rng.randbytes(rng.choice((0, 1, 8, 16, 200)))


def _value(rng: random.Random) -> Any:
    kind = rng.choice(("str", "int", "float", "bool", "bytes", "list", "list", "dict"))
    if kind == "list":
        item = rng.choice(("str", "int", "float", "bool"))
        return [_scalar(rng, item) for _ in range(rng.choice((0, 1, 2, 5)))]
    if kind == "dict":
        return {f"k{i}": _scalar(rng, "str") for i in range(rng.choice((0, 1, 3)))}
    return _scalar(rng, kind)


def _attributes(rng: random.Random, count: int) -> dict[str, Any]:
    return {f"attr.{i}.{rng.choice(('a', 'ü', ''))}": _value(rng) for i in range(count)}


def _context(rng: random.Random, *, remote: bool, sampled: bool | None = None) -> SpanContext:
    if sampled is None:
        sampled = rng.random() < 0.5
    return SpanContext(
        rng.getrandbits(128) or 1,
        rng.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(int(sampled)),
        trace_state=rng.choice((TraceState(), TraceState([("vendor", "v1"), ("other", "x-y")]))),
    )


# --- spans from the SDK -------------------------------------------------------------------------


class _Spans:
    """Several providers (resources) and tracers (scopes) writing into one in-memory exporter."""

    def __init__(self, limits: SpanLimits | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        processor = SimpleSpanProcessor(self.exporter)
        resources = [
            Resource.create({"service.name": "gateway", "service.version": "0.1.0"}),
            Resource({"service.name": "gateway", "service.version": "0.1.0"}),
            # Equal to the first, a different object: the SDK groups them together.
            Resource.create({"service.name": "gateway", "service.version": "0.1.0"}),
            Resource({"service.name": "other", "n": 3, "f": 0.5, "l": ["a"]}, "https://s/1"),
            Resource({}),
        ]
        self.providers = [
            TracerProvider(resource=resource, shutdown_on_exit=False, span_limits=limits)
            for resource in resources
        ]
        for provider in self.providers:
            provider.add_span_processor(processor)
        self.tracers = [
            tracer
            for provider in self.providers
            for tracer in (
                provider.get_tracer("llmgateway", "0.1.0"),
                provider.get_tracer("llmgateway", "0.1.0"),
                provider.get_tracer("plain"),
                provider.get_tracer("schema", "2", "https://opentelemetry.io/schemas/1.30"),
                provider.get_tracer("scoped", "1", attributes={"scope.attr": "x", "n": 1}),
            )
        ]

    def shutdown(self) -> None:
        for provider in self.providers:
            provider.shutdown()

    def random_spans(self, rng: random.Random, count: int) -> tuple[ReadableSpan, ...]:
        self.exporter.clear()
        for _ in range(count):
            tracer = rng.choice(self.tracers)
            parent = rng.choice(("none", "local", "remote"))
            context = None
            if parent != "none":
                context = set_span_in_context(
                    NonRecordingSpan(_context(rng, remote=parent == "remote", sampled=True))
                )
            links = [
                Link(_context(rng, remote=rng.random() < 0.5), _attributes(rng, rng.randint(0, 3)))
                for _ in range(rng.choice((0, 0, 1, 3)))
            ]
            start = rng.choice((1, 10**18 + rng.getrandbits(30)))
            span = tracer.start_span(
                rng.choice(("llmgateway.v1.CompletionService/Complete", "chat m", "", "ü 🙂")),
                context=context,
                kind=rng.choice(KINDS),
                attributes=_attributes(rng, rng.choice((0, 1, 5, 14, 40))),
                links=links,
                start_time=start,
            )
            for _ in range(rng.choice((0, 0, 1, 3))):
                span.add_event(
                    rng.choice(("exception", "", "é")),
                    _attributes(rng, rng.randint(0, 4)),
                    timestamp=rng.choice((None, start + 5)),
                )
            span.set_status(rng.choice(STATUSES))
            span.end(end_time=rng.choice((start, start + rng.getrandbits(32))))
        return self.exporter.get_finished_spans()


@pytest.fixture
def sdk_spans() -> Iterator[_Spans]:
    spans = _Spans()
    yield spans
    spans.shutdown()


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_the_sdk(sdk_spans: _Spans, seed: int) -> None:
    rng = random.Random(seed)
    spans = sdk_spans.random_spans(rng, 40)
    _assert_equivalent(spans)
    _assert_equivalent(spans[:1])
    _assert_equivalent(list(reversed(spans)))


def test_empty_batch() -> None:
    _assert_equivalent([])
    assert encode_spans_bytes([]) == b""


def test_every_attribute_type(sdk_spans: _Spans) -> None:
    tracer = sdk_spans.tracers[0]
    attributes: dict[str, Any] = {
        "empty": "",
        "unicode": "ünïcødé 中文 🙂",
        "neg": -42,
        "zero": 0,
        "big": 2**63 - 1,
        "small": -(2**63),
        "f0": 0.0,
        "fneg0": -0.0,
        "fneg": -3.5,
        "inf": math.inf,
        "t": True,
        "f": False,
        "bytes": b"\x00\xff",
        "empty.bytes": b"",
        "strs": ["a", "", "ü"],
        "ints": [1, -1, 2**40],
        "floats": [0.0, -1.25],
        "bools": [True, False],
        "empty.list": [],
        "with.none": ["a", None],
        "tuple": ("stop",),
        "map": {"a": 1, "b": ["x"], "c": {"d": True}},
        "": "empty key",
    }
    with tracer.start_as_current_span("all", attributes=attributes) as span:
        span.add_event("ev", attributes)
    span_a = sdk_spans.exporter.get_finished_spans()
    _assert_equivalent(span_a)
    # Once more, now from the caches.
    _assert_equivalent(span_a)


def test_values_the_sdk_cannot_encode_are_left_out(
    sdk_spans: _Spans, caplog: pytest.LogCaptureFixture
) -> None:
    tracer = sdk_spans.tracers[0]
    attributes: dict[str, Any] = {
        "ok": 1,
        "too.big": 2**63,
        "too.small": -(2**63) - 1,
        "in.list": [1, 2**64],
        "surrogate": "a\ud800",
        "after": "x",
    }
    tracer.start_span("bad", attributes=attributes).end()
    spans = sdk_spans.exporter.get_finished_spans()
    _assert_equivalent(spans)
    encoded = encode_spans(spans).resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in encoded.attributes] == ["ok", "after"]
    assert "Failed to encode key too.big" in caplog.text


def test_nan_encodes_to_the_same_bytes(sdk_spans: _Spans) -> None:
    sdk_spans.tracers[0].start_span("nan", attributes={"nan": math.nan, "l": [math.nan]}).end()
    spans = sdk_spans.exporter.get_finished_spans()
    assert encode_spans_bytes(spans) == sdk_encode_spans(spans).SerializeToString()


def test_parents_links_and_flags(sdk_spans: _Spans) -> None:
    tracer = sdk_spans.tracers[4]
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("congo", "t61rcWkgMzE")]),
    )
    local = SpanContext(5, 6, is_remote=False, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span(
        "server",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        links=[Link(remote, {"r": 1}), Link(local)],
    ):
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
        tracer.start_span("sibling", context=set_span_in_context(NonRecordingSpan(local))).end()
    tracer.start_span("root").end()
    spans = sdk_spans.exporter.get_finished_spans()
    _assert_equivalent(spans)
    encoded = encode_spans(spans).resource_spans[0].scope_spans[0].spans
    assert [span.flags for span in encoded] == [0x100, 0x100, 0x300, 0x100]
    assert encoded[2].trace_state == "congo=t61rcWkgMzE"
    assert [link.flags for link in encoded[2].links] == [0x300, 0x100]


def test_dropped_counts() -> None:
    limits = SpanLimits(
        max_span_attributes=2,
        max_events=1,
        max_links=1,
        max_event_attributes=1,
        max_link_attributes=1,
    )
    spans_source = _Spans(limits)
    try:
        rng = random.Random(99)
        link = Link(_context(rng, remote=False), {"a": 1, "b": 2, "c": 3})
        span = spans_source.tracers[0].start_span(
            "limited", attributes={"a": 1, "b": 2, "c": 3, "d": 4}, links=[link, link, link]
        )
        span.add_event("e1", {"a": 1, "b": 2})
        span.add_event("e2", {"a": 1, "b": 2})
        span.end()
        spans = spans_source.exporter.get_finished_spans()
        _assert_equivalent(spans)
        encoded = encode_spans(spans).resource_spans[0].scope_spans[0].spans[0]
        assert encoded.dropped_attributes_count == 2
        assert encoded.dropped_events_count == 1
        assert encoded.dropped_links_count == 2
        assert encoded.events[0].dropped_attributes_count == 1
        _assert_equivalent(spans_source.random_spans(random.Random(7), 30))
    finally:
        spans_source.shutdown()


def test_hand_built_readable_spans() -> None:
    """Spans without a scope, interleaved resources and scopes, event without attributes."""
    rng = random.Random(3)
    resource_a = Resource({"a": 1})
    resource_b = Resource({"b": "2"}, "https://schema")
    scope = InstrumentationScope("s", "1", "https://scope", {"x": [1, 2]})
    same_scope = InstrumentationScope("s", "1", "https://scope", {"x": [1, 2]})
    spans = [
        ReadableSpan(
            name=f"span{i}",
            context=_context(rng, remote=False),
            parent=_context(rng, remote=True) if i % 3 == 0 else None,
            resource=(resource_a, resource_b)[i % 2],
            attributes={"i": i},
            events=[Event("ev", timestamp=i + 1)] if i % 2 else [],
            kind=KINDS[i % len(KINDS)],
            status=STATUSES[i % len(STATUSES)],
            start_time=i,
            end_time=i + 7 if i % 4 else None,
            instrumentation_scope=(None, scope, same_scope)[i % 3],
        )
        for i in range(12)
    ]
    _assert_equivalent(spans)


def test_attribute_cache_is_bounded_and_transparent() -> None:
    clear_caches()
    resource = Resource({"service.name": "gateway"})
    rng = random.Random(5)
    # Unique values (and keys) three times the bound, plus values that repeat.
    spans = [
        ReadableSpan(
            name="many",
            context=_context(rng, remote=False),
            resource=resource,
            attributes={f"id.{i}.{j}": f"{i}-{j}" for j in range(60)} | {"n": 1, "s": "same"},
            start_time=1,
            end_time=2,
        )
        for i in range(ATTRIBUTE_CACHE_MAX * 3 // 60)
    ]
    uncached = encode_spans_bytes(spans)
    span_cache = ATTRIBUTE_CACHES[SPAN_ATTRIBUTES]
    assert 0 < len(span_cache) <= ATTRIBUTE_CACHE_MAX
    assert 0 < len(otlp_spans._KEY_CACHE) <= ATTRIBUTE_CACHE_MAX
    assert encode_spans_bytes(spans) == uncached == sdk_encode_spans(spans).SerializeToString()
    assert len(span_cache) <= ATTRIBUTE_CACHE_MAX

    # The same small batch: cold, then warm caches give the same bytes.
    small = spans[:3]
    clear_caches()
    assert not span_cache
    cold = encode_spans_bytes(small)
    warm = encode_spans_bytes(small)
    assert cold == warm == sdk_encode_spans(small).SerializeToString()


def test_cache_keeps_equal_but_different_values_apart(sdk_spans: _Spans) -> None:
    tracer = sdk_spans.tracers[0]
    for value in (1, True, 1.0, 0.0, -0.0, 0, False, ("1",), "1", b"1"):
        tracer.start_span("v", attributes={"v": value}).end()
    spans = sdk_spans.exporter.get_finished_spans()
    _assert_equivalent(spans)
    _assert_equivalent(spans)


def test_fast_exporter_translates_like_the_sdk(sdk_spans: _Spans) -> None:
    spans = sdk_spans.random_spans(random.Random(11), 20)
    exporter = FastOTLPSpanExporter(endpoint="localhost:4317", insecure=True)
    try:
        assert exporter._translate_data(spans) == sdk_encode_spans(spans)
    finally:
        exporter.shutdown()


def test_export_runs_the_fast_encoder(sdk_spans: _Spans) -> None:
    # Through the public export() path to a real OTLP/gRPC collector on loopback: were the SDK
    # to stop calling _translate_data, its own encoder would run and fast_batches stay 0.
    spans = sdk_spans.random_spans(random.Random(12), 25)
    with OtlpSink() as sink:
        exporter = FastOTLPSpanExporter(endpoint=sink.endpoint, insecure=True)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        assert (sink.exports, sink.spans) == (1, len(spans))
    assert exporter.fast_batches == 1
