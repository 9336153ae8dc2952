"""Telemetry from the environment: nothing by default, OTLP when configured, Prometheus on ask."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from service.config import ConfigError, TelemetrySettings
from service.telemetry import Telemetry, build_telemetry
from service.telemetry.upstream import safe_url
from tests.harness import auth, start_gateway, user

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test are the gateway's, whatever the machine's environment holds."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@dataclass
class Collector:
    """An OTLP/gRPC collector on loopback that keeps what it is sent."""

    endpoint: str
    spans: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    service_names: set[str] = field(default_factory=set)


@asynccontextmanager
async def otlp_collector() -> AsyncIterator[Collector]:
    collector = Collector(endpoint="")

    async def export_traces(
        request: trace_pb.ExportTraceServiceRequest, context: object
    ) -> trace_pb.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for kv in resource.resource.attributes:
                if kv.key == "service.name":
                    collector.service_names.add(kv.value.string_value)
            for scope in resource.scope_spans:
                collector.spans += [span.name for span in scope.spans]
        return trace_pb.ExportTraceServiceResponse()

    async def export_metrics(
        request: metrics_pb.ExportMetricsServiceRequest, context: object
    ) -> metrics_pb.ExportMetricsServiceResponse:
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                collector.metrics += [metric.name for metric in scope.metrics]
        return metrics_pb.ExportMetricsServiceResponse()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        export_traces,
                        request_deserializer=trace_pb.ExportTraceServiceRequest.FromString,
                        response_serializer=trace_pb.ExportTraceServiceResponse.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.metrics.v1.MetricsService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        export_metrics,
                        request_deserializer=metrics_pb.ExportMetricsServiceRequest.FromString,
                        response_serializer=metrics_pb.ExportMetricsServiceResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    collector.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield collector
    finally:
        await server.stop(0)


async def one_call(telemetry: Telemetry) -> None:
    async with start_gateway(telemetry=telemetry) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        await gw.wait_finished(1)


def test_nothing_is_exported_by_default() -> None:
    telemetry = build_telemetry(TelemetrySettings())
    assert not telemetry.enabled
    assert telemetry.tracer is None
    assert telemetry.instruments is None
    assert repr(telemetry) == "Telemetry(disabled)"


def test_sdk_disabled_wins_over_an_endpoint() -> None:
    settings = TelemetrySettings(sdk_disabled=True, exporter_otlp_endpoint="http://x:4317")
    assert not build_telemetry(settings).enabled


async def test_a_disabled_gateway_gives_its_client_no_observer() -> None:
    async with start_gateway() as gw:
        assert gw.server.client._observer is None


async def test_an_otlp_endpoint_exports_traces_and_metrics_flushed_at_shutdown() -> None:
    async with otlp_collector() as collector:
        telemetry = build_telemetry(
            TelemetrySettings(exporter_otlp_endpoint=collector.endpoint, service_name="gw-test")
        )
        assert repr(telemetry) == "Telemetry(traces, metrics)"
        await one_call(telemetry)
        # Nothing has been exported yet (batching, a 60 s interval): shutdown flushes it all.
        await asyncio.to_thread(telemetry.shutdown)

    assert sorted(collector.spans) == [
        "chat openai/gpt-4o-mini",
        "llmgateway.v1.CompletionService/Complete",
    ]
    assert collector.service_names == {"gw-test"}
    assert {"llmgateway.requests", "rpc.server.call.duration"} <= set(collector.metrics)


async def test_an_exporter_can_be_turned_off_by_name() -> None:
    async with otlp_collector() as collector:
        telemetry = build_telemetry(
            TelemetrySettings(exporter_otlp_endpoint=collector.endpoint, traces_exporter="none")
        )
        assert repr(telemetry) == "Telemetry(metrics)"
        await one_call(telemetry)
        await asyncio.to_thread(telemetry.shutdown)

    assert collector.spans == []
    assert "llmgateway.requests" in collector.metrics


async def test_prometheus_serves_the_metrics_for_scraping() -> None:
    telemetry = build_telemetry(TelemetrySettings(), prometheus_port=0)
    try:
        assert telemetry.tracer is None
        assert telemetry.prometheus_port
        await one_call(telemetry)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{telemetry.prometheus_port}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
    finally:
        await asyncio.to_thread(telemetry.shutdown)

    [requests] = [line for line in text.splitlines() if line.startswith("llmgateway_requests")]
    assert 'rpc_method="Complete"' in requests
    assert 'llmgateway_caller_id="alpha"' in requests
    assert requests.endswith(" 1.0")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (TelemetrySettings(traces_exporter="zipkin"), "OTEL_TRACES_EXPORTER"),
        (TelemetrySettings(metrics_exporter="otlp,statsd"), "OTEL_METRICS_EXPORTER"),
        (
            TelemetrySettings(
                exporter_otlp_endpoint="http://x:4318", exporter_otlp_protocol="http/protobuf"
            ),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_unsupported_choices_are_configuration_errors(
    settings: TelemetrySettings, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        build_telemetry(settings)


async def test_the_service_reads_otel_variables_at_start() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "GATEWAY_SIMULATOR": "true",
            "OTEL_TRACES_EXPORTER": "zipkin",
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"configuration error: OTEL_TRACES_EXPORTER: unsupported exporter zipkin" in stderr


def test_url_full_carries_no_credentials_or_query() -> None:
    assert (
        safe_url("https://user:secret@openrouter.ai:8443/api/v1/chat/completions?key=k#f")
        == "https://openrouter.ai:8443/api/v1/chat/completions"
    )
    assert safe_url("http://[::1]/api/v1/x") == "http://[::1]/api/v1/x"
