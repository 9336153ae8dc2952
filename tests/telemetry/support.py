"""In-memory OpenTelemetry for the telemetry tests: spans and metric points a test can read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    DataPointT,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.simulator import RunningSimulator
from service.telemetry import Telemetry

CHAT_PATH = "/api/v1/chat/completions"
SERVICE = "llmgateway.v1.CompletionService"


@dataclass
class Captured:
    """A ``Telemetry`` whose spans and metrics stay in memory."""

    telemetry: Telemetry
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    @classmethod
    def create(cls) -> Captured:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider(shutdown_on_exit=False)
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        return cls(telemetry, tracer_provider, meter_provider, exporter, reader)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    # --- spans ---------------------------------------------------------------------------

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def server_spans(self, method: str | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.kind is SpanKind.SERVER and (method is None or s.name == f"{SERVICE}/{method}")
        ]

    def client_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.CLIENT]

    def server_span(self, method: str) -> ReadableSpan:
        spans = self.server_spans(method)
        assert len(spans) == 1, [s.name for s in self.spans()]
        return spans[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.client_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    # --- metrics -------------------------------------------------------------------------

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> Sequence[DataPointT]:
        metric = self.metrics().get(name)
        return [] if metric is None else list(metric.data.data_points)


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def point_attrs(point: DataPointT) -> dict[str, object]:
    return dict(point.attributes or {})


Key = tuple[tuple[str, object], ...]
"""A point's attributes, sorted: comparable and hashable."""


def key(**attributes: object) -> Key:
    return tuple(sorted(attributes.items()))


def sums(otel: Captured, name: str) -> dict[Key, float]:
    """A counter's (or up-down counter's) value per attribute set."""
    found = {}
    for point in otel.points(name):
        assert isinstance(point, NumberDataPoint)
        found[key(**point_attrs(point))] = point.value
    return found


def histograms(otel: Captured, name: str) -> dict[Key, HistogramDataPoint]:
    """A histogram's point per attribute set."""
    found = {}
    for point in otel.points(name):
        assert isinstance(point, HistogramDataPoint)
        found[key(**point_attrs(point))] = point
    return found


def traceparents(sim: RunningSimulator) -> list[str | None]:
    """The ``traceparent`` each chat request upstream carried."""
    found = []
    for request in sim.state.requests:
        if request.path == CHAT_PATH:
            found.append(request.headers.get("traceparent"))
    return found


def traceparent_of(span: ReadableSpan) -> str:
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
