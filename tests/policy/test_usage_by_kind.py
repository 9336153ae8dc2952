"""GetUsage reports the caller's spend by cost kind, overall and per provider, exact to the
decimal and summing to the recorded cost, on either ledger.

Through a real gateway and the simulator, which bills each call at the serving endpoint's
prices: the expected split of every call is worked out here by hand from the counts in its
answer and the simulator's prices, not by the gateway's code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TypeAlias

import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway
from tests.content.support import image, pdf, text, user_parts
from tests.policy.support import as_caller, ask, callers
from tests.surface.test_file_parser import THREE_PAGES

D = Decimal
K = pb.CostKind
Kind: TypeAlias = pb.CostKind.ValueType
# The simulator's prices per token (per image where named so).
GPT4O = (D("0.00000015"), D("0.0000006"))
GPT4O_IMAGE = D("0.000217")
CHUTES = (D("0.00000001"), D("0.00000001"))  # llama's cheapest endpoint, below its listing
GPT5 = (D("0.00000025"), D("0.000002"))
IMAGER = (D("0.0000003"), D("0.0000025"))
IMAGER_OUTPUT = D("0.039")
EMBEDDER = D("0.00000002")
EXA_FEE = D("0.007")
LLAMA = (D("0.00000002"), D("0.00000003"))  # its first endpoint, at the listed price
OCR_PAGE = D("0.002")


def cost_of(usage: pb.Usage) -> Decimal:
    return D(repr(usage.cost_usd))


def by_kind(costs: list[pb.KindCost]) -> dict[Kind, Decimal]:
    kinds = [c.kind for c in costs]
    assert kinds == sorted(kinds), "in CostKind order"
    for c in costs:
        assert c.cost_usd == float(D(c.cost_usd_decimal))
    return {c.kind: D(c.cost_usd_decimal) for c in costs}


def add(total: dict[Kind, Decimal], split: Mapping[Kind, Decimal]) -> None:
    for kind, usd in split.items():
        total[kind] = total.get(kind, D(0)) + usd


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"ledger_dsn": request.getfixturevalue("postgres_dsn")}


async def test_spend_is_split_by_kind_exactly(tmp_path: Path, ledger: dict[str, str]) -> None:
    svc = as_caller("svc")
    found = callers({"svc": "", "other": ""})
    async with acct_gateway(tmp_path / "usage.db", callers=found, gateway=ledger) as gw:
        expected: list[tuple[str, dict[Kind, Decimal], Decimal]] = []

        def expect(provider: str, split: dict[Kind, Decimal], cost: Decimal) -> None:
            # The split worked out by hand adds up to what OpenRouter billed.
            assert sum(split.values()) == cost, (split, cost)
            expected.append((provider, split, cost))

        plain = await gw.stub.Complete(ask(), metadata=svc)
        u = plain.usage
        expect(
            "OpenAI",
            {K.COST_KIND_PROMPT: u.prompt_tokens * GPT4O[0]}
            | {K.COST_KIND_COMPLETION: u.completion_tokens * GPT4O[1]},
            cost_of(u),
        )

        # Served below the model's listed price: the split follows what was billed.
        cheap = await gw.stub.Complete(
            ask(
                model="meta-llama/llama-3.1-8b-instruct",
                provider=pb.ProviderPreferences(sort=pb.PROVIDER_SORT_PRICE),
            ),
            metadata=svc,
        )
        u = cheap.usage
        assert cheap.provider == "Chutes"
        expect(
            "Chutes",
            {K.COST_KIND_PROMPT: u.prompt_tokens * CHUTES[0]}
            | {K.COST_KIND_COMPLETION: u.completion_tokens * CHUTES[1]},
            cost_of(u),
        )

        reasoned = await gw.stub.Complete(
            ask(
                model="openai/gpt-5-mini",
                reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW),
            ),
            metadata=svc,
        )
        u = reasoned.usage
        assert u.reasoning_tokens > 0
        expect(
            "OpenAI",
            {K.COST_KIND_PROMPT: u.prompt_tokens * GPT5[0]}
            | {K.COST_KIND_COMPLETION: (u.completion_tokens - u.reasoning_tokens) * GPT5[1]}
            | {K.COST_KIND_REASONING: u.reasoning_tokens * GPT5[1]},
            cost_of(u),
        )

        searched = await gw.stub.Complete(
            ask("What is new?", web_search=pb.WebSearchOptions()), metadata=svc
        )
        u = searched.usage
        assert u.web_search_requests == 1
        expect(
            "OpenAI",
            {K.COST_KIND_PROMPT: u.prompt_tokens * GPT4O[0]}
            | {K.COST_KIND_COMPLETION: u.completion_tokens * GPT4O[1]}
            | {K.COST_KIND_WEB_SEARCH: EXA_FEE},
            cost_of(u),
        )

        drawn = await gw.stub.Complete(
            ask(
                model="google/gemini-2.5-flash-image",
                output_modalities=[pb.MODALITY_TEXT, pb.MODALITY_IMAGE],
            ),
            metadata=svc,
        )
        u = drawn.usage
        assert u.completion_image_tokens > 0
        # Priced per image, the image's tokens are not billed as completion tokens.
        expect(
            "Google",
            {K.COST_KIND_PROMPT: u.prompt_tokens * IMAGER[0]}
            | {
                K.COST_KIND_COMPLETION: (u.completion_tokens - u.completion_image_tokens)
                * IMAGER[1]
            }
            | {K.COST_KIND_IMAGE_OUTPUT: IMAGER_OUTPUT},
            cost_of(u),
        )

        looked = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user_parts(text("look"), image())]), metadata=svc
        )
        u = looked.usage
        assert u.prompt_image_tokens > 0
        expect(
            "OpenAI",
            {K.COST_KIND_PROMPT: (u.prompt_tokens - u.prompt_image_tokens) * GPT4O[0]}
            | {K.COST_KIND_IMAGE_INPUT: GPT4O_IMAGE + u.prompt_image_tokens * GPT4O[0]}
            | {K.COST_KIND_COMPLETION: u.completion_tokens * GPT4O[1]},
            cost_of(u),
        )

        # A document a model cannot read, parsed by OpenRouter with Mistral OCR: $0.002 a page.
        parsed = await gw.stub.Complete(
            pb.CompleteRequest(
                model="meta-llama/llama-3.1-8b-instruct",
                messages=[user_parts(text("Summarise"), pdf(THREE_PAGES, name="q3.pdf"))],
            ),
            metadata=svc,
        )
        u = parsed.usage
        expect(
            "DeepInfra",
            {K.COST_KIND_PROMPT: u.prompt_tokens * LLAMA[0]}
            | {K.COST_KIND_COMPLETION: u.completion_tokens * LLAMA[1]}
            | {K.COST_KIND_FILE_PARSER: 3 * OCR_PAGE},
            cost_of(u),
        )

        embedded = await gw.stub.Embed(
            pb.EmbedRequest(
                model="openai/text-embedding-3-small", inputs=[pb.EmbedInput(text="hello world")]
            ),
            metadata=svc,
        )
        u = embedded.usage
        expect("OpenAI", {K.COST_KIND_EMBEDDINGS: u.prompt_tokens * EMBEDDER}, cost_of(u))

        await gw.stub.Complete(ask(), metadata=as_caller("other"))  # not svc's
        await gw.wait_finished(len(expected) + 1)
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=svc)

    overall: dict[Kind, Decimal] = {}
    per_provider: dict[str, dict[Kind, Decimal]] = defaultdict(dict)
    for provider, split, _ in expected:
        add(overall, split)
        add(per_provider[provider], split)
    assert by_kind(list(usage.costs)) == overall
    assert sum(overall.values()) == sum(cost for _, _, cost in expected)
    assert usage.cost_usd == float(sum(overall.values()))
    assert {p.provider: by_kind(list(p.costs)) for p in usage.providers} == per_provider
