"""Builds the gateway's ``Telemetry`` from the environment: OTLP, console, Prometheus, or nothing.

Nothing is exported unless configured, and then the disabled ``Telemetry()`` is returned: no
SDK provider exists, so the instrumented code does no work at all. Exporter packages are
imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from service.config import ConfigError, TelemetrySettings, needs_extra
from service.telemetry.core import SCOPE_VERSION, Telemetry

_TRACE_EXPORTERS = frozenset({"otlp", "console", "none"})
_METRIC_EXPORTERS = frozenset({"otlp", "prometheus", "console", "none"})
_DEFAULT_PROMETHEUS_PORT = 9464
# What asked for an exporter, as the operator set it.
_OTLP_TRACES = "trace export (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp)"
_OTLP_METRICS = "metric export (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_METRICS_EXPORTER=otlp)"
_PROMETHEUS = "the metrics endpoint (GATEWAY_PROMETHEUS_PORT or OTEL_METRICS_EXPORTER=prometheus)"


def _chosen(variable: str, value: str, endpoint: str, allowed: frozenset[str]) -> set[str]:
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    if not names:
        # The SDK's default would be otlp to localhost; the gateway exports nothing unasked.
        return {"otlp"} if endpoint else set()
    unknown = names - allowed
    if unknown:
        raise ConfigError(
            f"{variable}: unsupported exporter {', '.join(sorted(unknown))} "
            f"(choose from {', '.join(sorted(allowed))})"
        )
    return names - {"none"}


def build_telemetry(
    settings: TelemetrySettings,
    *,
    prometheus_host: str = "127.0.0.1",
    prometheus_port: int | None = None,
) -> Telemetry:
    """The ``Telemetry`` the settings ask for; ``shutdown()`` it after the server drained.

    ``prometheus_port`` (``GATEWAY_PROMETHEUS_PORT``; 0 picks a free one) serves a scrape
    endpoint on ``prometheus_host``.
    """
    if settings.sdk_disabled:
        return Telemetry()
    traces = _chosen(
        "OTEL_TRACES_EXPORTER",
        settings.traces_exporter,
        settings.exporter_otlp_traces_endpoint or settings.exporter_otlp_endpoint,
        _TRACE_EXPORTERS,
    )
    metrics = _chosen(
        "OTEL_METRICS_EXPORTER",
        settings.metrics_exporter,
        settings.exporter_otlp_metrics_endpoint or settings.exporter_otlp_endpoint,
        _METRIC_EXPORTERS,
    )
    if prometheus_port is not None:
        metrics.add("prometheus")
    if not traces and not metrics:
        return Telemetry()
    if "otlp" in traces | metrics and settings.exporter_otlp_protocol != "grpc":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: '{settings.exporter_otlp_protocol}' is not "
            "supported; only grpc is installed"
        )
    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": SCOPE_VERSION}
    )
    closers: list[Callable[[], object]] = []
    try:
        tracer_provider = None
        if traces:
            tracer_provider = TracerProvider(resource=resource)
            closers.append(tracer_provider.shutdown)
            for name in sorted(traces):
                with needs_extra("otlp", _OTLP_TRACES):
                    exporter = _span_exporter(name, settings)
                tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        meter_provider = None
        port = None
        if metrics:
            readers: list[MetricReader] = []
            for name in sorted(metrics):
                if name == "prometheus":
                    with needs_extra("prometheus", _PROMETHEUS):
                        reader, port, stop = _prometheus(
                            prometheus_host,
                            _DEFAULT_PROMETHEUS_PORT
                            if prometheus_port is None
                            else prometheus_port,
                        )
                    closers.append(stop)
                else:
                    with needs_extra("otlp", _OTLP_METRICS):
                        reader = _periodic_reader(name, settings)
                readers.append(reader)
            meter_provider = MeterProvider(resource=resource, metric_readers=readers)
            # First: the final collection is exported before the scrape endpoint stops.
            closers.insert(0, meter_provider.shutdown)
    except BaseException:
        for close in closers:
            close()
        raise
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, on_shutdown=closers
    )
    telemetry.prometheus_port = port
    return telemetry


def _span_exporter(name: str, settings: TelemetrySettings) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # The SDK's OTLP/gRPC exporter with a faster, equivalent span encoder.
    from service.telemetry.otlp_spans import FastOTLPSpanExporter

    # Headers, certificates, compression and timeouts come from OTEL_EXPORTER_OTLP_* directly.
    endpoint = settings.exporter_otlp_traces_endpoint or settings.exporter_otlp_endpoint
    return FastOTLPSpanExporter(endpoint=endpoint or None)


def _periodic_reader(name: str, settings: TelemetrySettings) -> MetricReader:
    # The interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    endpoint = settings.exporter_otlp_metrics_endpoint or settings.exporter_otlp_endpoint
    return PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint or None))


def _prometheus(host: str, port: int) -> tuple[MetricReader, int, Callable[[], None]]:
    """A reader on a registry of its own (not prometheus_client's global one), served over
    HTTP from a thread; returns it, the bound port and a stopper."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"GATEWAY_PROMETHEUS_PORT: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return reader, server.server_port, stop
