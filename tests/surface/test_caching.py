"""Prompt caching through a real gateway and the simulator: marks on parts and on the request,
cache reads and writes in Usage, their prices, the ledger and GetUsage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, drain
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import exact, ledger_rows

CLAUDE = "anthropic/claude-sonnet-4.5"
# Long enough to be cached (the simulator's minimum is 1,024 tokens, four characters each).
MANUAL = "Section {n}: the operating manual of the billing service, in full detail. " * 80
CACHE = pb.CacheControl()
CACHE_1H = pb.CacheControl(ttl=pb.CACHE_TTL_1H)


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


def conversation(question: str, mark: pb.CacheControl = CACHE) -> list[pb.Message]:
    system = pb.Message(
        role=pb.ROLE_SYSTEM, parts=[pb.Part(text=MANUAL.format(n=1), cache_control=mark)]
    )
    return [system, user(question)]


async def test_a_marked_prefix_is_written_once_then_read(gw: Harness) -> None:
    first = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=conversation("How do refunds work?")),
        metadata=auth(),
    )
    sent = chat_requests(gw.sim)[-1].body["messages"][0]["content"][0]
    assert sent["cache_control"] == {"type": "ephemeral"}
    written = first.usage.cache_write_tokens
    assert written > 1024
    assert first.usage.cached_tokens == 0
    second = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=conversation("And chargebacks?")),
        metadata=auth(),
    )
    assert second.usage.cached_tokens == written
    assert second.usage.cache_write_tokens == 0
    # Priced from the catalog's cache prices: writes at $3.75/M, reads at $0.30/M, against
    # $3/M for plain prompt tokens.
    extra = Decimal("0.00000375") - Decimal("0.000003")
    saved = Decimal("0.000003") - Decimal("0.0000003")
    plain = exact(first.usage.cost_usd) - extra * written
    rest = exact(second.usage.cost_usd) + saved * written
    prompt_delta = (second.usage.prompt_tokens - first.usage.prompt_tokens) * Decimal("0.000003")
    completion_delta = (second.usage.completion_tokens - first.usage.completion_tokens) * Decimal(
        "0.000015"
    )
    assert rest - plain == prompt_delta + completion_delta
    await gw.rows_written(2)
    rows = ledger_rows(gw.server.settings.ledger_path)
    assert [(r["cache_write_tokens"], r["cached_tokens"]) for r in rows] == [
        (written, 0),
        (0, written),
    ]
    assert [Decimal(r["cost_usd"]) for r in rows] == [
        exact(first.usage.cost_usd),
        exact(second.usage.cost_usd),
    ]
    totals = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    assert (totals.cache_write_tokens, totals.cache_read_tokens) == (written, written)
    assert exact(totals.cost_usd) == exact(first.usage.cost_usd) + exact(second.usage.cost_usd)


async def test_a_one_hour_mark_writes_at_the_one_hour_price(gw: Harness) -> None:
    short = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=conversation("Q", CACHE)), metadata=auth()
    )
    gw.sim.state.reset()  # a cold cache again
    long = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=conversation("Q", CACHE_1H)), metadata=auth()
    )
    sent = chat_requests(gw.sim)[-1].body["messages"][0]["content"][0]
    assert sent["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    written = long.usage.cache_write_tokens
    assert written == short.usage.cache_write_tokens > 0
    difference = Decimal("0.000006") - Decimal("0.00000375")
    assert exact(long.usage.cost_usd) - exact(short.usage.cost_usd) == difference * written


async def test_automatic_caching_reads_without_marks(gw: Harness) -> None:
    history = [pb.Message(role=pb.ROLE_SYSTEM, content=MANUAL.format(n=2))]
    first = await gw.stub.Complete(
        pb.CompleteRequest(messages=[*history, user("one")]), metadata=auth()
    )
    second = await gw.stub.Complete(
        pb.CompleteRequest(messages=[*history, user("two")]), metadata=auth()
    )
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens > 1024
    # OpenAI-style caching bills no writes and reports none.
    assert first.usage.cache_write_tokens == second.usage.cache_write_tokens == 0


async def test_a_streamed_call_reports_the_cache_in_its_end(gw: Harness) -> None:
    await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=conversation("warm")), metadata=auth()
    )
    outcome = await drain(
        gw.stub.StreamComplete(
            pb.StreamCompleteRequest(model=CLAUDE, messages=conversation("streamed")),
            metadata=auth(),
        )
    )
    assert outcome.error is None
    assert outcome.messages[-1].end.usage.cached_tokens > 1024


async def test_the_request_level_mark_asks_for_automatic_caching(gw: Harness) -> None:
    long_question = user(MANUAL.format(n=3))
    first = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=[long_question], cache_control=CACHE),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_write_tokens > 1024


async def test_more_than_four_marks_are_refused(gw: Harness) -> None:
    parts = [pb.Part(text=f"block {i}", cache_control=CACHE) for i in range(5)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=parts)]),
            metadata=auth(),
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in error.detail(error_details_pb2.BadRequest).field_violations]
    assert fields == ["messages"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(
                messages=[
                    pb.Message(
                        role=pb.ROLE_USER,
                        parts=[
                            pb.Part(
                                text="x",
                                cache_control=pb.CacheControl(ttl=pb.CacheTtl.ValueType(7)),
                            )
                        ],
                    )
                ]
            ),
            metadata=auth(),
        )
    fields = [
        v.field
        for v in rich_error(caught.value).detail(error_details_pb2.BadRequest).field_violations
    ]
    assert fields == ["messages[0].parts[0].cache_control.ttl"]


async def test_a_marked_tool_caches_the_tool_definitions(gw: Harness) -> None:
    lookup = pb.Tool(
        name="lookup_policy",
        description=MANUAL.format(n=4),  # a long manual of when to call it
        cache_control=CACHE_1H,
    )
    plain = pb.Tool(name="escalate", description="Hand the case to a person")

    def ask(question: str) -> pb.CompleteRequest:
        return pb.CompleteRequest(model=CLAUDE, messages=[user(question)], tools=[lookup, plain])

    first = await gw.stub.Complete(ask("Refunds?"), metadata=auth())
    sent = chat_requests(gw.sim)[-1].body["tools"]
    assert sent[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in sent[1]
    written = first.usage.cache_write_tokens
    assert written > 1024
    second = await gw.stub.Complete(ask("Chargebacks?"), metadata=auth())
    assert second.usage.cached_tokens == written
    # A tool's mark counts toward the four a request may carry.
    parts = [pb.Part(text=f"block {i}", cache_control=CACHE) for i in range(4)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(
                model=CLAUDE, messages=[pb.Message(role=pb.ROLE_USER, parts=parts)], tools=[lookup]
            ),
            metadata=auth(),
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.Tool(name="t", cache_control=pb.CacheControl(ttl=pb.CacheTtl.ValueType(7)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("x")], tools=[bad]), metadata=auth()
        )
    fields = [
        v.field
        for v in rich_error(caught.value).detail(error_details_pb2.BadRequest).field_violations
    ]
    assert fields == ["tools[0].cache_control.ttl"]
