"""``python -m bench.otlp_encoding``: µs per span of the SDK's OTLP span encoder and ours.

Builds ~2,000 spans shaped like the gateway's (a SERVER span per RPC and its CLIENT child for
the upstream call, with the gateway's attributes), then encodes them in batches of 512 (the
``BatchSpanProcessor``'s default export size) with the SDK's encoder, the SDK's encoder plus
``SerializeToString()`` (what its exporter sends), and ``service.telemetry.otlp_spans``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from service.telemetry.otlp_spans import clear_caches, encode_spans, encode_spans_bytes

BATCH = 512
MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "meta-llama/llama-3.1-8b")


def build_spans(rpcs: int) -> tuple[ReadableSpan, ...]:
    """``rpcs`` server spans, each with one client child: ``2 * rpcs`` finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "llm-gateway", "service.version": "0.1.0"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("llmgateway", "0.1.0")
    for i in range(rpcs):
        model = MODELS[i % len(MODELS)]
        input_tokens = 50 + i % 400
        output_tokens = 100 + i % 37
        server = tracer.start_span(
            "llmgateway.v1.CompletionService/Complete",
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "llmgateway.v1.CompletionService",
                "rpc.method": "Complete",
                "server.address": "gateway.internal",
                "server.port": 50051,
                "gen_ai.operation.name": "chat",
                "llmgateway.request.id": secrets.token_hex(16),
            },
        )
        response_id = f"gen-{secrets.token_hex(12)}"
        client = tracer.start_span(
            f"chat {model}",
            context=set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openrouter",
                "gen_ai.request.model": model,
                "gen_ai.request.stream": False,
                "server.address": "openrouter.ai",
                "server.port": 443,
                "http.request.method": "POST",
                "url.full": "https://openrouter.ai/api/v1/chat/completions",
                "llmgateway.upstream.attempt": 1,
            },
        )
        client.set_attributes(
            {
                "http.response.status_code": 200,
                "gen_ai.response.model": model,
                "gen_ai.response.id": response_id,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
            }
        )
        client.end()
        server.set_attributes(
            {
                "rpc.grpc.status_code": 0,
                "llmgateway.caller.id": f"caller-{i % 8}",
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "gen_ai.response.id": response_id,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.response.finish_reasons": ("stop",),
            }
        )
        server.set_status(Status(StatusCode.OK))
        server.end()
    spans = exporter.get_finished_spans()
    provider.shutdown()
    return spans


def measure(
    encoders: Mapping[str, Callable[[Sequence[ReadableSpan]], object]],
    batches: Sequence[Sequence[ReadableSpan]],
    rounds: int,
) -> dict[str, float]:
    """µs per span of each encoder over every batch: the best of ``rounds`` rounds, the
    encoders interleaved within each round (so that a noisy machine hits all of them)."""
    total = sum(len(batch) for batch in batches)
    best = dict.fromkeys(encoders, float("inf"))
    for _ in range(rounds):
        for name, encode in encoders.items():
            start = time.perf_counter()
            for batch in batches:
                encode(batch)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / total * 1e6 for name, seconds in best.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rpcs", type=int, default=1000, help="server spans (each + 1 client)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    spans = build_spans(args.rpcs)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    for batch in batches:
        if encode_spans(batch) != sdk_encode_spans(batch):
            raise SystemExit("the fast encoder disagrees with the SDK's")

    def sdk_serialized(batch: Sequence[ReadableSpan]) -> bytes:
        return sdk_encode_spans(batch).SerializeToString()

    def ours_cold(batch: Sequence[ReadableSpan]) -> bytes:
        clear_caches()
        return encode_spans_bytes(batch)

    results = measure(
        {
            "sdk encode_spans": sdk_encode_spans,
            "sdk encode_spans + SerializeToString": sdk_serialized,
            "ours encode_spans_bytes": encode_spans_bytes,
            "ours encode_spans_bytes, caches cleared per batch": ours_cold,
            "ours encode_spans (+ upb parse)": encode_spans,
        },
        batches,
        args.rounds,
    )
    attributes = statistics.mean(len(span.attributes or {}) for span in spans)
    print(
        f"{len(spans)} spans ({attributes:.1f} attributes on average), batches of {BATCH}, "
        f"best of {args.rounds} rounds"
    )
    width = max(len(name) for name in results)
    baseline = results["sdk encode_spans + SerializeToString"]
    for name, us in results.items():
        print(f"  {name:<{width}}  {us:8.2f} µs/span  ({baseline / us:5.1f}x vs SDK + serialize)")


if __name__ == "__main__":
    main()
