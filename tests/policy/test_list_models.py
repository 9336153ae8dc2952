"""ListModels per caller: only the models, modalities and tools its policy allows, with the
prices it would pay at most."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.completion import Modality
from service.domain.models import ModelInfo
from service.domain.policy import Policy, listed_model
from tests.harness import Harness, start_gateway
from tests.policy.support import as_caller, callers

POLICIES = {
    "open": "",
    "capped": 'max_price = { prompt = "0.1", completion = "0.3", image = "0.0001" }',
    "textout": 'allowed_output_modalities = ["text"]',
    "textin": 'allowed_input_modalities = ["text"]',
    "noreason": 'max_reasoning_effort = "none"',
    "nosearch": "allowed_plugins = []\nallowed_server_tools = []",
    "search-tool": 'allowed_plugins = []\nallowed_server_tools = ["openrouter:web_search"]',
}


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(callers=callers(POLICIES)) as harness:
        yield harness


async def listing(gw: Harness, caller: str) -> dict[str, pb.Model]:
    reply = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=as_caller(caller))
    return {m.id: m for m in reply.models}


async def test_an_open_policy_sees_the_catalog_as_it_is(gw: Harness) -> None:
    models = await listing(gw, "open")
    assert not any(m.price_capped for m in models.values())
    mini = models["openai/gpt-4o-mini"]
    assert (mini.pricing.prompt_usd_per_token, mini.pricing.completion_usd_per_token) == (
        "0.00000015",
        "0.0000006",
    )
    assert models["openai/gpt-5-mini"].pricing.web_search_usd == "0.01"


async def test_prices_are_capped_by_the_policys_max_price(gw: Harness) -> None:
    open_models, models = await listing(gw, "open"), await listing(gw, "capped")
    assert set(models) == set(open_models)
    mini = models["openai/gpt-4o-mini"]
    # 0.15 and 0.6 per million in the catalog; the policy pays at most 0.1 and 0.3.
    assert Decimal(mini.pricing.prompt_usd_per_token) == Decimal("0.0000001")
    assert Decimal(mini.pricing.completion_usd_per_token) == Decimal("0.0000003")
    assert Decimal(mini.pricing.image_usd) == Decimal("0.0001")  # 0.000217 per image
    assert mini.price_capped
    # Cheaper than the ceilings: as listed.
    llama = models["meta-llama/llama-3.1-8b-instruct"]
    assert llama.pricing == open_models["meta-llama/llama-3.1-8b-instruct"].pricing
    assert not llama.price_capped
    # A router's price is not known before the call, but the ceilings bound it.
    router = models["openrouter/auto"]
    assert router.pricing.variable
    assert router.price_capped


async def test_output_modalities_the_policy_forbids_are_not_offered(gw: Harness) -> None:
    open_models, models = await listing(gw, "open"), await listing(gw, "textout")
    imager = "google/gemini-2.5-flash-image"
    assert set(open_models[imager].output_modalities) == {pb.MODALITY_TEXT, pb.MODALITY_IMAGE}
    assert list(models[imager].output_modalities) == [pb.MODALITY_TEXT]
    # Embedding models write vectors, which no chat output rule is about.
    embedder = models["openai/text-embedding-3-small"]
    assert list(embedder.output_modalities) == [pb.MODALITY_EMBEDDINGS]


async def test_input_modalities_the_policy_forbids_are_not_offered(gw: Harness) -> None:
    models = await listing(gw, "textin")
    assert list(models["openai/gpt-4o-mini"].input_modalities) == [pb.MODALITY_TEXT]
    # The image model also reads text: it stays.
    assert list(models["google/gemini-2.5-flash-image"].input_modalities) == [pb.MODALITY_TEXT]


async def test_reasoning_is_offered_only_where_the_policy_allows_it(gw: Harness) -> None:
    assert (await listing(gw, "open"))["openai/gpt-5-mini"].supports_reasoning
    assert not (await listing(gw, "noreason"))["openai/gpt-5-mini"].supports_reasoning


async def test_a_web_search_price_only_for_callers_who_may_search(gw: Harness) -> None:
    assert (await listing(gw, "nosearch"))["openai/gpt-5-mini"].pricing.web_search_usd == ""
    tool = await listing(gw, "search-tool")
    assert tool["openai/gpt-5-mini"].pricing.web_search_usd == "0.01"


def test_a_model_the_policy_leaves_nothing_of_is_hidden() -> None:
    # The simulator has no image-only model, and a policy must allow text: the rule itself.
    policy = Policy(allowed_output_modalities=frozenset({Modality.TEXT}))
    image_only = ModelInfo(id="x/painter", output_modalities=frozenset({Modality.IMAGE}))
    assert listed_model(policy, image_only) is None
    reader = ModelInfo(id="x/reader", input_modalities=frozenset({Modality.IMAGE}))
    assert listed_model(Policy(allowed_input_modalities=frozenset({Modality.TEXT})), reader) is None
