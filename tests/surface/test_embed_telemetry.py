"""Embed's telemetry: a server span and a client span per attempt with the GenAI operation
``embeddings``, the trace context sent upstream, and the token metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import auth, start_gateway
from tests.surface.support import EMBED_MODEL
from tests.telemetry.support import Captured, attrs, key, sums, traceparent_of


@pytest.fixture
def otel() -> Iterator[Captured]:
    captured = Captured.create()
    yield captured
    captured.shutdown()


async def test_embed_is_traced_and_counted_as_embeddings(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry) as gw:
        request = pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbedInput(text="hello")])
        reply = await gw.stub.Embed(request, metadata=auth())
        await gw.wait_finished(1)
        sent = [
            r.headers.get("traceparent")
            for r in gw.sim.state.requests
            if r.path.endswith("/embeddings")
        ]
    server = otel.server_span("Embed")
    server_attrs = attrs(server)
    assert server_attrs["gen_ai.operation.name"] == "embeddings"
    assert server_attrs["gen_ai.request.model"] == EMBED_MODEL
    assert server_attrs["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    (client,) = otel.children(server)
    assert client.name == f"embeddings {EMBED_MODEL}"
    assert attrs(client)["gen_ai.operation.name"] == "embeddings"
    assert str(attrs(client)["url.full"]).endswith("/api/v1/embeddings")
    assert sent == [traceparent_of(client)]
    by_caller = {"llmgateway.caller.id": "alpha", "gen_ai.request.model": EMBED_MODEL}
    tokens = sums(otel, "llmgateway.tokens")
    assert tokens[key(**by_caller, **{"gen_ai.token.type": "input"})] == reply.usage.prompt_tokens
    (usage_point,) = [
        p
        for p in otel.points("gen_ai.client.token.usage")
        if dict(p.attributes or {}).get("gen_ai.token.type") == "input"
    ]
    assert dict(usage_point.attributes or {})["gen_ai.operation.name"] == "embeddings"
