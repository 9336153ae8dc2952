"""A USD budget under concurrent calls that search the web, embed, parse files and write the
prompt cache: the reservation prices searches, their results, rounds of server-tool
inference, embeddings, OCR pages and cache writes, so what the ledger books never exceeds
the budget (every answer costs less than its reservation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from decimal import Decimal

import grpc
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from service.simulator import SimulatorConfig
from tests.content.support import pdf, text, user_parts
from tests.harness import Harness, auth, start_gateway, user
from tests.surface.support import EMBED_MODEL, ledger_rows, quota_outcome

KEY = "key-budget-CALLERSECRET"
BUDGET = Decimal("0.15")
OCR_PAGES = b"%PDF-1.7 << /Type /Page >> << /Type /Page >>"


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
    return [quota_outcome(o) for o in await asyncio.gather(*jobs, return_exceptions=True)]


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


OCR_KEY = "key-budget-ocr-CALLERSECRET"
OCR_BUDGET = Decimal("2.3")
"""One file that may be OCR'd reserves $2 (1,000 pages): one such call fits at a time, with
every cache-writing call beside it."""
MANUAL = "Chapter {n}: how the billing service settles refunds, in full. " * 90


async def run_parse_and_cache(gw: Harness, wave: int) -> list[tuple[str, grpc.StatusCode]]:
    metadata = auth(OCR_KEY)
    sampling = pb.SamplingParams(max_tokens=100)
    jobs: list[tuple[str, Awaitable[object]]] = []
    for i in range(3):
        # The answer waits, so the reservation is held while the others arrive.
        parts = [text(f"Summarise {wave}-{i} [[sim:delay=300]]"), pdf(OCR_PAGES, name="q.pdf")]
        request = pb.CompleteRequest(
            model="meta-llama/llama-3.1-8b-instruct",  # cannot read files: mistral-ocr
            messages=[user_parts(*parts)],
            sampling=sampling,
        )
        jobs.append(("ocr", gw.stub.Complete(request, metadata=metadata)))
    for i in range(6):
        system = pb.Message(
            role=pb.ROLE_SYSTEM,
            parts=[pb.Part(text=MANUAL.format(n=wave), cache_control=pb.CacheControl())],
        )
        request = pb.CompleteRequest(
            model="anthropic/claude-sonnet-4.5",
            messages=[system, user(f"question {wave}-{i}")],
            sampling=sampling,
        )
        jobs.append(("cache", gw.stub.Complete(request, metadata=metadata)))
    outcomes = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
    return [(kind, quota_outcome(o)) for (kind, _), o in zip(jobs, outcomes, strict=True)]


async def test_parsed_files_and_cache_writes_never_overshoot_the_budget() -> None:
    caller = Caller("ocr", hash_key(OCR_KEY), ("*",), CallerLimits(usd_per_day=OCR_BUDGET))
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=[caller]
    ) as gw:
        for wave in (1, 2):
            codes = await run_parse_and_cache(gw, wave)
            ocr = [code for kind, code in codes if kind == "ocr"]
            # One file to OCR at a time: its $2 reservation leaves no room for a second.
            assert ocr.count(grpc.StatusCode.OK) == 1, codes
            assert [code for kind, code in codes if kind == "cache"] == [grpc.StatusCode.OK] * 6
        await gw.rows_written(18)
        rows = ledger_rows(gw.server.settings.ledger_path)
        served = [r for r in rows if r["status"] == "OK"]
        spent = sum((Decimal(r["cost_usd"]) for r in served), Decimal(0))
        assert spent <= OCR_BUDGET
        assert any(r["cache_write_tokens"] > 0 for r in served)
        fees = [Decimal(r["tool_cost_usd"]) for r in served if r["file_inputs"]]
        assert fees == [Decimal("0.004")] * 2  # two pages at $2 per 1,000
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth(OCR_KEY))
        assert Decimal(repr(usage.cost_usd)) == spent
        assert Decimal(repr(usage.tool_cost_usd)) == sum(fees, Decimal(0))
