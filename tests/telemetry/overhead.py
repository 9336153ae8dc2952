"""Measures what telemetry adds to one RPC, off and on: ``python -m tests.telemetry.overhead``.

Two measurements of CPU time (not a test; ``make bench`` measures the whole gateway):

* micro: the telemetry calls of one RPC alone — ``RpcTelemetry.start``, one upstream attempt
  (client span, ``succeeded``), ``RpcCall.end`` (server span, every metric, the log line) —
  in the forms production can run: disabled; metrics, traces or both, to a batching span
  processor whose exporter drops everything; traces sampled out; each with the "rpc finished"
  line written (JSON to /dev/null) or filtered by the log level. Forms are interleaved and the
  best run kept, garbage collection paused as ``timeit`` does;
* end to end: sequential ``Complete`` calls through the real gRPC server and the simulator (all
  in this process), telemetry off vs on in alternating rounds, median CPU time per call. The
  same code costs more here than in the micro loop: its caches are cold between calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from llmgateway.v1 import completion_service_pb2 as pb
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from service.domain.accounting import CallRecord
from service.domain.completion import CompletionRequest, Message, Role, Usage
from service.logs import JsonFormatter
from service.telemetry import RpcTelemetry, Telemetry, UpstreamTelemetry
from tests.harness import auth, start_gateway, user

URL = "https://openrouter.ai/api/v1/chat/completions"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass
class Setup:
    """Telemetry as production runs it, exporting to nowhere: batched spans, aggregated
    metrics (or the disabled form)."""

    telemetry: Telemetry
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    @classmethod
    def enabled(cls, *, traces: bool = True, metrics: bool = True, sampled: bool = True) -> Setup:
        tracer_provider = None
        if traces:
            tracer_provider = TracerProvider(
                sampler=ALWAYS_ON if sampled else ALWAYS_OFF, shutdown_on_exit=False
            )
            tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
        meter_provider = None
        if metrics:
            meter_provider = MeterProvider(
                metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False
            )
        telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        return cls(telemetry, tracer_provider, meter_provider)

    def flush(self) -> None:
        """Export the queued spans now (between timed runs: a full queue would drop spans)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


@contextmanager
def rpc_log(on: bool) -> Iterator[None]:
    """The "rpc finished" line written as in production (JSON, to /dev/null), or filtered."""
    logger = logging.getLogger("service.rpc")
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO if on else logging.WARNING)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)


def finished_record(request: CompletionRequest) -> CallRecord:
    """What a successful Complete with one attempt leaves in its record."""
    call_id = uuid.uuid4().hex
    record = CallRecord(call_id=call_id, request_id=call_id, rpc="Complete", started_at=0.0)
    record.caller_id = "alpha"
    record.requested_model = request.model
    stats = record.stats
    stats.attempts = 1
    stats.served_model = request.model
    stats.provider = "OpenAI"
    stats.generation_id = "gen-1795314513-PfJQNn7aGYyGSfImGGRa"
    stats.usage = Usage(prompt_tokens=18, completion_tokens=24, total_tokens=42, cost_usd=1.7e-05)
    stats.first_token_at = 0.01
    stats.upstream_seconds = 0.009
    return record


def micro(setup: Setup, iterations: int, runs: int = 10) -> float:
    """CPU microseconds of telemetry calls per RPC, best of ``runs``: ``RpcTelemetry.start``,
    one observed attempt (when the client would have an observer), ``RpcCall.end``."""
    telemetry = setup.telemetry
    rpc = RpcTelemetry(telemetry, "llmgateway.v1.CompletionService", host="10.0.0.1", port=50051)
    upstream = UpstreamTelemetry.create(telemetry)
    request = CompletionRequest(model="openai/gpt-4o-mini", messages=(Message(Role.USER, "Hi"),))
    best = float("inf")
    for _ in range(runs):
        records = [finished_record(request) for _ in range(iterations)]
        gc.collect()
        gc.disable()  # as timeit does: collections depend on the harness's garbage, not ours
        start = time.process_time_ns()
        for record in records:
            call = rpc.start("Complete", record.request_id, None, None)
            call.model = request.model
            if upstream is not None:
                # As the servicer does: the attempt's parent travels in the request.
                traced = dataclasses.replace(request, trace_headers=call.trace)
                attempt = upstream.attempt(traced, 1, url=URL, stream=False)
                attempt.succeeded(record.stats, "stop")
            call.finish_reason = "stop"
            call.end(record, grpc.StatusCode.OK, 0.0105)
        best = min(best, (time.process_time_ns() - start) / iterations / 1000)
        gc.enable()
        setup.flush()
    return best


async def end_to_end(rounds: int, calls: int) -> tuple[float, float]:
    """Median CPU microseconds (the whole process: client, gateway, simulator) per sequential
    Complete, telemetry off and on."""
    on = Setup.enabled()
    timings: dict[bool, list[float]] = {False: [], True: []}
    try:
        for enabled in [False, True] * rounds:
            async with start_gateway(telemetry=on.telemetry if enabled else Telemetry()) as gw:
                request = pb.CompleteRequest(
                    model="openrouter/sim-fast", messages=[user("Hi [[sim:tokens=8]]")]
                )
                for _ in range(20):  # warm up: connections, caches
                    await gw.stub.Complete(request, metadata=auth())
                start = time.process_time()
                for _ in range(calls):
                    await gw.stub.Complete(request, metadata=auth())
                timings[enabled].append((time.process_time() - start) / calls * 1e6)
            on.flush()
    finally:
        on.shutdown()
    return statistics.median(timings[False]), statistics.median(timings[True])


def main() -> int:
    iterations, rounds = 1000, 12
    forms: dict[str, Callable[[], Setup]] = {
        "off": lambda: Setup(Telemetry()),
        "metrics": lambda: Setup.enabled(traces=False),
        "traces": lambda: Setup.enabled(metrics=False),
        "both": Setup.enabled,
        "both, unsampled": lambda: Setup.enabled(sampled=False),
    }
    setups = {name: build() for name, build in forms.items()}
    best: dict[tuple[str, bool], float] = {}
    try:
        # Interleaved, so that a noisy neighbour's burst does not land on one form only.
        for _ in range(rounds):
            for log_on in (False, True):
                with rpc_log(log_on):
                    for name, setup in setups.items():
                        took = micro(setup, iterations, runs=1)
                        best[name, log_on] = min(best.get((name, log_on), took), took)
    finally:
        for setup in setups.values():
            setup.shutdown()
    print(f"micro: telemetry calls per RPC, CPU µs (best of {rounds} x {iterations})")
    print(f"  {'form':18} {'log filtered':>13} {'log written':>12}")
    for name in forms:
        print(f"  {name:18} {best[name, False]:13.1f} {best[name, True]:12.1f}")
    with rpc_log(True):
        off_e2e, on_e2e = asyncio.run(end_to_end(rounds=7, calls=200))
    print("end to end: sequential Complete via gRPC + simulator, CPU µs per call (median of 7)")
    print(f"  telemetry off {off_e2e:7.0f}   on {on_e2e:7.0f}   (+{on_e2e - off_e2e:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
