"""A loopback OTLP/gRPC trace collector that accepts every export and counts the spans.

It lets the gateway run with tracing on (``OTEL_TRACES_EXPORTER=otlp``), as in production,
without a real collector. It runs in threads of the orchestrating process, which is idle
while the load runs.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


@dataclass
class OtlpSink:
    """``with OtlpSink() as sink``: ``sink.endpoint`` to export to, ``sink.spans`` received."""

    endpoint: str = ""
    spans: int = 0
    exports: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
        count = sum(
            len(scope.spans) for resource in parsed.resource_spans for scope in resource.scope_spans
        )
        with self._lock:
            self.spans += count
            self.exports += 1
        # An empty ExportTraceServiceResponse: everything accepted.
        return b""

    def __enter__(self) -> Self:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            _SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
