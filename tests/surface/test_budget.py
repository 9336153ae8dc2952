"""A USD budget under concurrent calls that search the web, embed and chat: the reservation
prices searches, their results, rounds of server-tool inference and embeddings, so what the
ledger books never exceeds the budget (every answer costs less than its reservation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from decimal import Decimal

import grpc
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from service.simulator import SimulatorConfig
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import EMBED_MODEL, ledger_rows

KEY = "key-budget-CALLERSECRET"
BUDGET = Decimal("0.15")


async def run_mix(gw: Harness, wave: int) -> list[grpc.StatusCode]:
    stub = gw.stub
    metadata = auth(KEY)
    sampling = pb.SamplingParams(max_tokens=200)
    jobs: list[Awaitable[object]] = []
    for i in range(12):
        jobs.append(
            stub.Complete(
                pb.CompleteRequest(
                    messages=[user(f"news {wave}-{i}")],
                    web_search=pb.WebSearchOptions(),
                    sampling=sampling,
                ),
                metadata=metadata,
            )
        )
    for i in range(6):
        jobs.append(
            stub.Complete(
                pb.CompleteRequest(
                    model="openai/gpt-5-mini",
                    messages=[user(f"papers {wave}-{i} [[sim:searches=2]]")],
                    # A tighter bound: 3 results of the low context size a search.
                    web_search=pb.WebSearchOptions(
                        mode=pb.WEB_SEARCH_MODE_TOOL,
                        max_uses=2,
                        max_results=3,
                        search_context_size=pb.SEARCH_CONTEXT_SIZE_LOW,
                    ),
                    sampling=sampling,
                ),
                metadata=metadata,
            )
        )
    for i in range(12):
        inputs = [pb.EmbedInput(text=f"document {wave}-{i}-{j} " * 40) for j in range(20)]
        jobs.append(
            stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=inputs), metadata=metadata)
        )
    codes = []
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(outcome, grpc.aio.AioRpcError):
            error = rich_error(outcome)
            assert error.info.reason == "QUOTA_EXCEEDED", error.message
            codes.append(error.code)
        else:
            assert not isinstance(outcome, BaseException), outcome
            codes.append(grpc.StatusCode.OK)
    return codes


async def test_searches_and_embeddings_never_overshoot_the_budget() -> None:
    caller = Caller("budget", hash_key(KEY), ("*",), CallerLimits(usd_per_day=BUDGET))
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=[caller]
    ) as gw:
        codes = await run_mix(gw, 1)
        codes += await run_mix(gw, 2)  # what the first wave's settled calls left
        await gw.rows_written(len(codes))
        rows = ledger_rows(gw.server.settings.ledger_path)
        spent = sum((Decimal(r["cost_usd"]) for r in rows if r["cost_usd"]), Decimal(0))
        served = [r for r in rows if r["status"] == "OK"]
        assert spent <= BUDGET
        # The budget decided: some calls of each kind were served, some refused.
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert {r["rpc"] for r in served} == {"Complete", "Embed"}
        assert any(r["web_search_requests"] == 2 for r in served)
        assert any(r["web_search_requests"] == 1 for r in served)
        # Spent is what OpenRouter billed, searches included.
        fees = sum((Decimal(r["tool_cost_usd"]) for r in served if r["tool_cost_usd"]), Decimal(0))
        assert fees > 0
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth(KEY))
        assert Decimal(repr(usage.cost_usd)) == spent
        assert Decimal(repr(usage.tool_cost_usd)) == fees
