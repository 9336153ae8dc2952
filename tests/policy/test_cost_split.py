"""How one call's cost is split by kind when OpenRouter's report leaves a part to judge: the
parts always sum to the cost exactly, and what no price explains is ``OTHER``.

(The split of real calls through the gateway is in test_usage_by_kind.py.)
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from service.domain.completion import Usage
from service.domain.cost_kinds import CostKind, CostSplit, CostUnits, split_cost
from service.domain.models import ModelPricing

D = Decimal
K = CostKind
PRICES = ModelPricing(
    prompt=D("0.000001"),
    completion=D("0.000002"),
    cache_read=D("0.0000001"),
    cache_write=D("0.00000125"),
    internal_reasoning=D("0.000004"),
)


def split(cost: str, usage: Usage, pricing: ModelPricing | None = PRICES) -> dict[K, Decimal]:
    result = split_cost(D(cost), usage, pricing)
    assert result is not None
    assert result.total == D(cost), "the parts sum to the cost exactly"
    return dict(result.parts)


def test_an_unknown_cost_has_no_split() -> None:
    assert split_cost(None, Usage(prompt_tokens=5), PRICES) is None


def test_a_cost_nothing_prices_is_other() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=10)
    assert split("0.5", usage, None) == {K.OTHER: D("0.5")}
    assert split("0.5", usage, ModelPricing(variable=True)) == {K.OTHER: D("0.5")}
    assert split("0.5", Usage(), PRICES) == {K.OTHER: D("0.5")}
    assert split("0", usage) == {}


def test_without_cost_details_the_catalog_prices_weigh_every_kind() -> None:
    # 600 fresh prompt, 300 read from the cache, 100 written; 50 reasoning of 80 generated.
    usage = Usage(
        prompt_tokens=1000,
        cached_tokens=300,
        cache_write_tokens=100,
        completion_tokens=80,
        reasoning_tokens=50,
    )
    listed = {
        K.PROMPT: D("0.0006"),
        K.CACHE_READ: D("0.00003"),
        K.CACHE_WRITE: D("0.000125"),
        K.COMPLETION: D("0.00006"),
        K.REASONING: D("0.0002"),
    }
    assert split(str(sum(listed.values())), usage) == listed  # billed as listed
    # Billed at (just under) a third of the listing, a cheaper endpoint: each kind a third,
    # cut at 1e-15, and the remainder on the heaviest kind, so the sum is still exact.
    third = split("0.000338333333333333333", usage)
    assert third[K.CACHE_READ] == D("0.000009999999999")
    assert third[K.PROMPT] == D("0.000338333333333333333") - sum(
        v for k, v in third.items() if k is not K.PROMPT
    )


def test_the_reported_sides_and_fee_are_kept_exactly() -> None:
    usage = Usage(
        prompt_tokens=100,
        completion_tokens=10,
        reasoning_tokens=4,
        web_search_requests=1,
        upstream_cost_usd=0.0003,
        upstream_prompt_cost_usd=0.0001,
        upstream_completion_cost_usd=0.0002,
    )
    # Completion side 0.0002 over 6 text tokens at 2e-6 and 4 reasoning at 4e-6: 12 : 16.
    assert split("0.0073", usage) == {
        K.PROMPT: D("0.0001"),
        K.COMPLETION: D("0.000085714285714"),
        K.REASONING: D("0.000114285714286"),
        K.WEB_SEARCH: D("0.007"),
    }


def test_a_fee_with_no_search_to_explain_it_is_other() -> None:
    usage = Usage(
        prompt_tokens=100,
        upstream_cost_usd=0.0001,
        upstream_prompt_cost_usd=0.0001,
        upstream_completion_cost_usd=0.0,
    )
    # E.g. PDF pages OpenRouter parsed with its OCR engine.
    assert split("0.0021", usage) == {K.PROMPT: D("0.0001"), K.OTHER: D("0.002")}


def test_the_providers_part_beyond_its_sides_is_the_request_price() -> None:
    usage = Usage(
        prompt_tokens=100,
        upstream_cost_usd=0.0011,
        upstream_prompt_cost_usd=0.0001,
        upstream_completion_cost_usd=0.0,
    )
    with_fee = ModelPricing(prompt=D("0.000001"), request=D("0.001"))
    assert split("0.0011", usage, with_fee) == {K.PROMPT: D("0.0001"), K.REQUEST: D("0.001")}
    assert split("0.0011", usage) == {K.PROMPT: D("0.0001"), K.OTHER: D("0.001")}


def test_with_byok_the_fee_follows_what_the_call_used() -> None:
    # OpenRouter's fee alone; the provider's cost (reported) was billed to the team's key.
    usage = Usage(prompt_tokens=100, completion_tokens=50, byok=True, upstream_cost_usd=0.0002)
    assert split("0.00001", usage) == {K.PROMPT: D("0.000005"), K.COMPLETION: D("0.000005")}


def test_embeddings_media_and_audio() -> None:
    pricing = ModelPricing(
        prompt=D("0.000001"),
        completion=D("0.000002"),
        image=D("0.001"),
        audio=D("0.000003"),
        image_output=D("0.04"),
    )
    usage = Usage(
        prompt_tokens=1100,
        prompt_image_tokens=500,
        prompt_audio_tokens=100,
        completion_tokens=1300,
        completion_image_tokens=1290,
    )
    units = CostUnits(images_in=1, images_out=1)
    result = split_cost(D("0.04232"), usage, pricing, units)
    assert result == CostSplit.of(
        {
            K.PROMPT: D("0.0005"),
            K.IMAGE_INPUT: D("0.0015"),
            K.AUDIO: D("0.0003"),
            K.COMPLETION: D("0.00002"),
            K.IMAGE_OUTPUT: D("0.04"),
        }
    )
    embedded = split_cost(
        D("0.0001"), Usage(prompt_tokens=100), pricing, CostUnits(embeddings=True)
    )
    assert embedded == CostSplit.of({K.EMBEDDINGS: D("0.0001")})


def test_fees_with_a_file_sent_are_the_file_parsers() -> None:
    usage = Usage(
        prompt_tokens=100,
        upstream_cost_usd=0.0001,
        upstream_prompt_cost_usd=0.0001,
        upstream_completion_cost_usd=0.0,
    )
    parsed = split_cost(D("0.0061"), usage, PRICES, CostUnits(files_in=1))
    assert parsed == CostSplit.of({K.PROMPT: D("0.0001"), K.FILE_PARSER: D("0.006")})
    # Searched too: the searches get their price at most (the chat usage counts searches,
    # not pages; here Exa's $0.015, OpenRouter's engine for a model without native search),
    # the rest is the parsing's.
    searched = dataclasses.replace(usage, web_search_requests=1)
    both = split_cost(D("0.0251"), searched, PRICES, CostUnits(files_in=1))
    assert both == CostSplit.of(
        {K.PROMPT: D("0.0001"), K.WEB_SEARCH: D("0.015"), K.FILE_PARSER: D("0.010")}
    )
    cheap = split_cost(D("0.0131"), searched, PRICES, CostUnits(files_in=1))
    assert cheap == CostSplit.of({K.PROMPT: D("0.0001"), K.WEB_SEARCH: D("0.013")})
