"""Traces, metrics and the per-RPC log line (OpenTelemetry), off unless configured.

``Telemetry`` holds what is reported and where; ``build_telemetry`` makes one from the
``OTEL_*`` environment; ``RpcTelemetry`` instruments the servicer and ``UpstreamTelemetry``
the OpenRouter client.
"""

from service.telemetry.core import Telemetry
from service.telemetry.rpc import RpcCall, RpcTelemetry
from service.telemetry.setup import build_telemetry
from service.telemetry.upstream import UpstreamTelemetry

__all__ = ["RpcCall", "RpcTelemetry", "Telemetry", "UpstreamTelemetry", "build_telemetry"]
