"""Metric points of a unary call, a stream, a retried call and a failed call."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import BETA_KEY, auth, start_gateway, user
from tests.telemetry.support import Captured, histograms, key, sums

MODEL = "openai/gpt-4o-mini"
OK = grpc.StatusCode.OK.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def requests_key(method: str, status: int, caller: str = "alpha", model: str = MODEL) -> object:
    return key(
        **{
            "rpc.method": method,
            "rpc.grpc.status_code": status,
            "llmgateway.caller.id": caller,
            "gen_ai.request.model": model,
        }
    )


async def test_a_unary_call_records_every_rpc_metric_once(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Hello [[sim:tokens=6]]")]), metadata=auth()
        )
        await gw.wait_finished(1)
        [(record, _)] = gw.finished

    assert sums(otel, "llmgateway.requests") == {requests_key("Complete", OK): 1}
    rpc = {"rpc.system": "grpc", "rpc.service": "llmgateway.v1.CompletionService"}
    [duration] = histograms(otel, "rpc.server.call.duration").items()
    assert duration[0] == key(**rpc, **{"rpc.method": "Complete", "rpc.grpc.status_code": OK})
    assert duration[1].count == 1
    assert 0 < duration[1].sum < 10

    tokens = histograms(otel, "gen_ai.client.token.usage")
    common = {
        "gen_ai.request.model": MODEL,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openrouter",
    }
    assert {k: (p.count, p.sum) for k, p in tokens.items()} == {
        key(**common, **{"gen_ai.token.type": "input"}): (1, reply.usage.prompt_tokens),
        key(**common, **{"gen_ai.token.type": "output"}): (1, 6),
    }
    by_caller = {"llmgateway.caller.id": "alpha", "gen_ai.request.model": MODEL}
    assert sums(otel, "llmgateway.tokens") == {
        key(**by_caller, **{"gen_ai.token.type": "input"}): reply.usage.prompt_tokens,
        key(**by_caller, **{"gen_ai.token.type": "output"}): 6,
    }
    [cost] = sums(otel, "llmgateway.cost").items()
    assert cost[0] == key(**{"llmgateway.caller.id": "alpha", "gen_ai.request.model": MODEL})
    assert record.stats.usage is not None
    assert cost[1] == pytest.approx(record.stats.usage.cost_usd)
    assert cost[1] > 0
    assert sums(otel, "llmgateway.upstream.attempts") == {key(**{"llmgateway.outcome": "ok"}): 1}
    assert sums(otel, "llmgateway.upstream.retries") == {}

    # A unary answer arrives whole: its time to a first token is its duration.
    assert otel.points("gen_ai.server.time_to_first_token") == []
    [overhead] = histograms(otel, "llmgateway.overhead").values()
    assert overhead.count == 1
    # The gateway's own share is what the upstream call did not take.
    assert overhead.sum == pytest.approx(duration[1].sum - record.stats.upstream_seconds, abs=2e-3)


async def test_a_stream_counts_as_active_while_it_runs(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=4]] [[sim:pace=100]]")]),
            metadata=auth(),
        )
        first = await call.read()
        assert isinstance(first, pb.StreamCompleteResponse)
        assert first.WhichOneof("event") == "start"
        assert sums(otel, "llmgateway.streams.active") == {(): 1}
        while await call.read() is not grpc.aio.EOF:
            pass
        await gw.wait_finished(1)

    assert sums(otel, "llmgateway.streams.active") == {(): 0}
    assert sums(otel, "llmgateway.requests") == {requests_key("StreamComplete", OK): 1}
    [(ttft_key, ttft)] = histograms(otel, "gen_ai.server.time_to_first_token").items()
    assert ttft_key == key(**{"gen_ai.request.model": MODEL})
    [duration] = histograms(otel, "rpc.server.call.duration").values()
    assert ttft.count == 1
    assert 0 < ttft.sum <= duration.sum
    output = [
        p
        for k, p in histograms(otel, "gen_ai.client.token.usage").items()
        if ("gen_ai.token.type", "output") in k
    ]
    assert [(p.count, p.sum) for p in output] == [(1, 4)]


async def test_a_retried_call_counts_both_attempts_and_the_retry(otel: Captured) -> None:
    text = "Hi [[sim:error=429]] [[sim:retry-after=0]] [[sim:fail-times=2]]"
    async with start_gateway(telemetry=otel.telemetry) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user(text)]), metadata=auth())
        await gw.wait_finished(1)

    assert sums(otel, "llmgateway.upstream.attempts") == {
        key(**{"llmgateway.outcome": "UPSTREAM_RATE_LIMITED"}): 2,
        key(**{"llmgateway.outcome": "ok"}): 1,
    }
    assert sums(otel, "llmgateway.upstream.retries") == {
        key(**{"error.type": "UPSTREAM_RATE_LIMITED"}): 2
    }
    assert sums(otel, "llmgateway.requests") == {requests_key("Complete", OK): 1}


async def test_failed_calls_are_counted_by_status_with_bounded_labels(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry, openrouter={"max_retries": 0}) as gw:
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hi [[sim:error=503]]")]), metadata=auth()
            )
        # An unknown model is the caller's text: it must not become a label value.
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(
                pb.CompleteRequest(model="made-up/model-123", messages=[user("Hi")]),
                metadata=auth(BETA_KEY),
            )
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth("x"))
        await gw.wait_finished(3)

    assert sums(otel, "llmgateway.requests") == {
        requests_key("Complete", UNAVAILABLE): 1,
        requests_key("Complete", grpc.StatusCode.PERMISSION_DENIED.value[0], "beta", ""): 1,
        requests_key("Complete", grpc.StatusCode.UNAUTHENTICATED.value[0], "", ""): 1,
    }
    assert sums(otel, "llmgateway.upstream.attempts") == {
        key(**{"llmgateway.outcome": "UPSTREAM_UNAVAILABLE"}): 1
    }
    # Nothing was generated: no tokens, no cost, no time to a first token.
    for name in ("gen_ai.client.token.usage", "llmgateway.tokens", "llmgateway.cost"):
        assert otel.points(name) == []
    assert otel.points("gen_ai.server.time_to_first_token") == []
    assert [p.count for p in histograms(otel, "llmgateway.overhead").values()] == [1]
