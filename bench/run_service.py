"""Runs ``python -m service`` unchanged, after applying the benchmark's prototype switches.

``BENCH_GRPC_SERVER_OPTIONS`` (a JSON list of ``[name, value]`` pairs) is
appended to the gateway's gRPC server options, and ``BENCH_ABLATE=ledger`` turns the usage
ledger's ``record`` into a no-op, to measure what the ledger costs (``otlp_encoder``: the
OpenTelemetry SDK's span encoder instead of ours, ``span_recorder``: the SDK's
``Tracer.start_span`` instead of ``service.telemetry.spans``, ``coalescing``: every stream
event its own message, as before deltas were merged; ``bound_histograms``: every histogram
record through the SDK's ``Histogram.record``; ``evolve``: ``dataclasses.replace`` for the
request's copy); ``BENCH_GC_STATS=1``
prints the time spent in each garbage-collector generation every two seconds,
``BENCH_SWITCH_INTERVAL_S`` sets ``sys.setswitchinterval`` (how long another thread may hold
the GIL while the event loop waits; CPython's default is 5 ms), ``BENCH_SERVICE_PATH`` puts a
folder first on ``sys.path`` (e.g. one holding a mypyc-compiled copy of ``service``). Used only for
experiments: the default benchmark runs ``python -m service`` itself.
"""

from __future__ import annotations

import os
import runpy
from typing import Any

import orjson


def _extend_server_options(extra: list[tuple[str, Any]]) -> None:
    import service.server as server_module
    from service.config import GatewaySettings

    original = server_module.server_options

    def server_options(settings: GatewaySettings, **kwargs: Any) -> list[tuple[str, Any]]:
        return [*original(settings, **kwargs), *extra]

    server_module.server_options = server_options


def _ablate(parts: set[str]) -> None:
    if "ledger" in parts:
        from service.ledger.batching import BatchingLedger

        def record(self: BatchingLedger, record: object) -> None:
            return None

        BatchingLedger.record = record  # type: ignore[method-assign]
        parts.discard("ledger")
    if "otlp_encoder" in parts:
        # The SDK's own span encoder instead of service.telemetry.otlp_spans'.
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        from service.telemetry.otlp_spans import FastOTLPSpanExporter

        FastOTLPSpanExporter._translate_data = (  # type: ignore[method-assign]
            lambda self, data: encode_spans(data)
        )
        parts.discard("otlp_encoder")
    if "span_recorder" in parts:
        # Spans through the SDK's Tracer.start_span instead of service.telemetry.spans'.
        from opentelemetry import trace as trace_api

        from service.telemetry.spans import SpanRecorder

        def sdk_only(self: SpanRecorder, tracer: trace_api.Tracer) -> None:
            self._tracer = tracer
            self._scope = None

        SpanRecorder.__init__ = sdk_only  # type: ignore[method-assign]
        parts.discard("span_recorder")
    if "coalescing" in parts:
        # Each upstream event its own message, even when several were buffered.
        import service.upstream.openrouter as openrouter

        openrouter.coalesce = lambda events: events  # type: ignore[attr-defined]
        parts.discard("coalescing")
    if "bound_histograms" in parts:
        # Every histogram record through the SDK's Histogram.record, attributes and all.
        from service.telemetry.bound import BoundHistogram

        def sdk_record(self: BoundHistogram, amount: float) -> None:
            self._histogram.record(amount, self._attributes)

        BoundHistogram.record = sdk_record  # type: ignore[method-assign]
        parts.discard("bound_histograms")
    if "evolve" in parts:
        # dataclasses.replace for the request's copy, as before service.domain.evolve.
        import dataclasses

        import service.domain.limits as limits

        limits.evolve = dataclasses.replace  # type: ignore[attr-defined,assignment]
        parts.discard("evolve")
    if parts:
        raise SystemExit(f"BENCH_ABLATE: unknown part(s) {sorted(parts)}")


def _report_gc() -> None:
    """Time spent in each generation's collections, printed to stderr every two seconds."""
    import gc
    import sys
    import threading
    import time

    spent = [0.0, 0.0, 0.0]
    runs = [0, 0, 0]
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            runs[info["generation"]] += 1

    gc.callbacks.append(callback)

    def report() -> None:
        print(
            f"gc: threshold {gc.get_threshold()} runs {runs} "
            f"seconds {[round(s, 3) for s in spent]} frozen {gc.get_freeze_count()}",
            file=sys.stderr,
        )

    def every_two_seconds() -> None:
        while True:
            time.sleep(2)
            report()

    threading.Thread(target=every_two_seconds, daemon=True).start()


def main() -> None:
    path = os.environ.get("BENCH_SERVICE_PATH")
    if path:
        import sys

        sys.path.insert(0, path)
    extra = os.environ.get("BENCH_GRPC_SERVER_OPTIONS")
    if extra:
        _extend_server_options([(str(name), value) for name, value in orjson.loads(extra)])
    ablate = os.environ.get("BENCH_ABLATE", "")
    if ablate:
        _ablate({part.strip() for part in ablate.split(",") if part.strip()})
    switch = os.environ.get("BENCH_SWITCH_INTERVAL_S")
    if switch:
        import sys

        sys.setswitchinterval(float(switch))
    if os.environ.get("BENCH_GC_STATS"):
        _report_gc()
    runpy.run_module("service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
