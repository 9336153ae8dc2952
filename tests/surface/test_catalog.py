"""The full catalog: every price kind, variable prices, reasoning support; and how the
reservation prices what the catalog says (routers, conditional prices, reasoning, caching)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import worst_case
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import (
    CacheControl,
    CacheTtl,
    CompletionRequest,
    Message,
    Role,
    SamplingParams,
    TextPart,
)
from service.domain.models import ModelInfo, dearest
from service.simulator import SimulatorConfig
from service.upstream import wire
from tests.harness import ALPHA_KEY, Harness, auth, rich_error, start_gateway, user

BUDGET_KEY = "key-budget-CALLERSECRET"


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    callers = [
        Caller("alpha", hash_key(ALPHA_KEY), ("*",)),
        Caller("budget", hash_key(BUDGET_KEY), ("*",), CallerLimits(usd_per_day=Decimal("0.005"))),
    ]
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=callers
    ) as harness:
        yield harness


async def models(gw: Harness) -> dict[str, pb.Model]:
    reply = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
    return {m.id: m for m in reply.models}


async def test_every_price_kind_is_listed_and_absent_kinds_are_empty(gw: Harness) -> None:
    listed = await models(gw)
    gemini = listed["google/gemini-3-flash-preview"].pricing
    assert gemini.web_search_usd == "0.014"
    assert gemini.internal_reasoning_usd_per_token == "0.000003"
    assert gemini.cache_read_usd_per_token == "0.00000005"
    assert gemini.cache_write_usd_per_token == "0.0000000833"
    assert gemini.audio_cache_usd_per_token == "0.0000001"
    assert gemini.audio_usd_per_token == "0.000001"
    # The base price; the conditional one (long prompts) only bounds the reservation.
    assert gemini.prompt_usd_per_token == "0.0000005"
    claude = listed["anthropic/claude-sonnet-4.5"].pricing
    assert (claude.cache_write_usd_per_token, claude.cache_write_1h_usd_per_token) == (
        "0.00000375",
        "0.000006",
    )
    mini = listed["openai/gpt-4o-mini"].pricing
    assert mini.web_search_usd == ""  # no native search: not "0"
    assert mini.cache_write_usd_per_token == ""
    assert mini.image_usd == "0.000217"
    painter = listed["google/gemini-2.5-flash-image"].pricing
    assert painter.image_output_usd == "0.039"
    assert listed["openai/gpt-5-mini"].supports_reasoning
    assert not listed["openai/gpt-4o-mini"].supports_reasoning


async def test_modalities_tell_models_apart(gw: Harness) -> None:
    listed = await models(gw)
    gemini = listed["google/gemini-2.0-flash-001"]
    assert list(gemini.input_modalities) == [
        pb.MODALITY_TEXT,
        pb.MODALITY_IMAGE,
        pb.MODALITY_FILE,
        pb.MODALITY_AUDIO,
        pb.MODALITY_VIDEO,
    ]
    assert list(gemini.output_modalities) == [pb.MODALITY_TEXT]
    painter = listed["google/gemini-2.5-flash-image"]
    assert list(painter.output_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE]
    embedders = {i for i, m in listed.items() if pb.MODALITY_EMBEDDINGS in m.output_modalities}
    assert embedders == {"openai/text-embedding-3-small", "nvidia/llama-nemotron-embed-vl-1b-v2"}
    assert list(listed["nvidia/llama-nemotron-embed-vl-1b-v2"].input_modalities) == [
        pb.MODALITY_TEXT,
        pb.MODALITY_IMAGE,
    ]
    # Embeddings are an output of embedding models only: not something to ask a chat for.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Hi")], output_modalities=[pb.MODALITY_EMBEDDINGS]),
            metadata=auth(),
        )
    assert rich_error(caught.value).code is grpc.StatusCode.INVALID_ARGUMENT


async def test_list_models_filters_by_modality(gw: Harness) -> None:
    everything = await models(gw)

    async def ids(**filters: list[pb.Modality.ValueType]) -> set[str]:
        reply = await gw.stub.ListModels(pb.ListModelsRequest(**filters), metadata=auth())
        return {m.id for m in reply.models}

    def known(inputs: set[int], outputs: set[int]) -> set[str]:
        return {
            i
            for i, m in everything.items()
            if m.input_modalities
            and inputs <= set(m.input_modalities)
            and outputs <= set(m.output_modalities)
        }

    embedders = await ids(output_modalities=[pb.MODALITY_EMBEDDINGS])
    assert embedders == {"openai/text-embedding-3-small", "nvidia/llama-nemotron-embed-vl-1b-v2"}
    assert await ids(
        input_modalities=[pb.MODALITY_IMAGE], output_modalities=[pb.MODALITY_EMBEDDINGS]
    ) == {"nvidia/llama-nemotron-embed-vl-1b-v2"}
    video = await ids(input_modalities=[pb.MODALITY_VIDEO, pb.MODALITY_AUDIO])
    assert "google/gemini-2.0-flash-001" in video
    assert video == known({pb.MODALITY_VIDEO, pb.MODALITY_AUDIO}, set())
    painters = await ids(output_modalities=[pb.MODALITY_IMAGE])
    assert "google/gemini-2.5-flash-image" in painters
    assert painters == known(set(), {pb.MODALITY_IMAGE})
    assert await ids() == set(everything)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ids(input_modalities=[pb.MODALITY_TEXT, pb.MODALITY_UNSPECIFIED])
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in error.detail(error_details_pb2.BadRequest).field_violations]
    assert fields == ["input_modalities[1]"]


async def test_a_router_is_shown_variable_never_free(gw: Harness) -> None:
    auto = (await models(gw))["openrouter/auto"]
    assert auto.pricing.variable
    assert auto.pricing.prompt_usd_per_token == ""
    assert auto.pricing.completion_usd_per_token == ""
    assert auto.pricing == pb.ModelPricing(variable=True)


async def test_a_router_is_reserved_at_the_dearest_known_price(gw: Harness) -> None:
    request = pb.CompleteRequest(
        model="openrouter/auto", messages=[user("Hi")], sampling=pb.SamplingParams(max_tokens=1000)
    )
    # Served by gpt-4o-mini, but it could have been the dearest model: 1,000 tokens at
    # claude-sonnet-4.5's $15/M are over the $0.005 budget, so the call is refused.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(request, metadata=auth(BUDGET_KEY))
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
    )
    assert "this request alone needs" in error.message
    # The same call to the model the router picked fits, and without a budget the router
    # serves as that model and is booked at its real cost.
    direct = pb.CompleteRequest(
        model="openai/gpt-4o-mini", messages=[user("Hi")], sampling=request.sampling
    )
    await gw.stub.Complete(direct, metadata=auth(BUDGET_KEY))
    routed = await gw.stub.Complete(request, metadata=auth())
    assert routed.model == "openai/gpt-4o-mini"
    assert routed.usage.cost_usd > 0


def model(**pricing: str) -> ModelInfo:
    entry = {"data": [{"id": "v/m", "pricing": pricing}]}
    return wire.parse_models(entry)[0]


def request(max_tokens: int = 100) -> CompletionRequest:
    return CompletionRequest(
        model="v/m",
        messages=(Message(Role.USER, "x" * 100),),
        sampling=SamplingParams(max_tokens=max_tokens),
    )


def test_the_worst_case_takes_the_dearest_of_each_kind() -> None:
    plain = model(prompt="0.000001", completion="0.000002")
    base = worst_case(request(), [plain]).usd
    prompt_tokens = worst_case(request(), [plain]).tokens - 100
    assert base == Decimal("0.000001") * prompt_tokens + Decimal("0.000002") * 100
    # Cache writes cost more than prompt tokens, and reasoning more than completion tokens.
    dear = model(
        prompt="0.000001",
        completion="0.000002",
        input_cache_write="0.00000125",
        input_cache_write_1h="0.000002",
        internal_reasoning="0.000003",
    )
    assert worst_case(request(), [dear]).usd == (
        Decimal("0.00000125") * prompt_tokens + Decimal("0.000003") * 100
    )
    # A 1-hour cache mark: writes at the 1-hour price.
    marked = dataclasses.replace(
        request(),
        messages=(
            Message(Role.USER, "", parts=(TextPart("x" * 100, CacheControl(CacheTtl.ONE_HOUR)),)),
        ),
    )
    assert worst_case(marked, [dear]).usd == (
        Decimal("0.000002") * prompt_tokens + Decimal("0.000003") * 100
    )
    # Conditional prices: the highest tier counts.
    tiered = model(
        prompt="0.000001",
        completion="0.000002",
        overrides=[{"min_prompt_tokens": 200000, "prompt": "0.000004"}],  # type: ignore[arg-type]
    )
    assert tiered.pricing.prompt == Decimal("0.000001")
    assert tiered.ceiling.prompt == Decimal("0.000004")
    assert tiered.ceiling.completion == Decimal("0.000002")  # inherited
    assert worst_case(request(), [tiered]).usd == (
        Decimal("0.000004") * prompt_tokens + Decimal("0.000002") * 100
    )
    # A router: the dearest known price of each kind, never 0.
    router = model(prompt="-1", completion="-1")
    assert router.pricing.variable
    assert router.pricing.prompt == 0
    unknown = dearest([plain.ceiling, dear.ceiling, tiered.ceiling])
    assert worst_case(request(), [router], unknown_price=unknown).usd == (
        Decimal("0.000004") * prompt_tokens + Decimal("0.000003") * 100
    )
