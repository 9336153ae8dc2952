"""The prompt estimate is an upper bound in every script, so a budget holds under concurrency."""

from __future__ import annotations

import asyncio
import unicodedata
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import CostEstimate, estimate_prompt_tokens, worst_case
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import (
    CompletionRequest,
    Message,
    Part,
    Role,
    SamplingParams,
    TextPart,
    ToolDefinition,
)
from service.domain.models import ModelInfo, ModelPricing
from service.simulator.generate import prompt_tokens
from tests.harness import ALPHA_KEY, auth, rich_error, start_gateway, user

# Dense scripts and emoji: ~1 token per CJK character and 2 per emoji upstream (the
# simulator counts so), where a characters-per-token guess under-reserves 3-6 times.
DENSE = "予算を守るための見積もりです。데이터베이스 연결이 끊어졌습니다。请不要超出预算。😀👍🏽🚀"


def one_message(text: str) -> CompletionRequest:
    return CompletionRequest(model="m", messages=(Message(Role.USER, text),))


def simulator_count(text: str) -> int:
    return prompt_tokens([{"role": "user", "content": text}])


@settings(max_examples=300, database=None, derandomize=True)
@given(st.text(st.characters(codec="utf-8"), max_size=400))
def test_the_estimate_covers_the_utf8_size_and_the_simulators_count_of_any_text(
    text: str,
) -> None:
    estimate = estimate_prompt_tokens(one_message(text))
    nfc = unicodedata.normalize("NFC", text)
    assert estimate >= len(text.encode()) + 16  # 8 per request, 8 per message
    assert estimate >= len(nfc.encode()) + 16
    assert estimate >= simulator_count(text)


@pytest.mark.parametrize(
    ("text", "bytes_"),
    [
        ("four", 4),
        ("予算", 6),  # 3 bytes a CJK character: real tokenizers need 1-2 tokens for it
        ("😀", 4),
        ("👍🏽", 8),  # emoji with a skin-tone modifier: two code points
        ("\u0958", 6),  # DEVANAGARI QA becomes two characters in NFC (Qwen normalises to NFC)
    ],
)
def test_each_script_counts_its_bytes(text: str, bytes_: int) -> None:
    assert estimate_prompt_tokens(one_message(text)) == 16 + bytes_


def test_tools_count_their_json_and_the_providers_tool_instructions() -> None:
    plain = estimate_prompt_tokens(one_message("hi"))
    tool = ToolDefinition("lookup", "見つける", {"type": "object", "properties": {"q": {}}})
    with_tool = estimate_prompt_tokens(
        CompletionRequest(model="m", messages=(Message(Role.USER, "hi"),), tools=(tool,))
    )
    schema_json = '{"type": "object", "properties": {"q": {}}}'
    assert with_tool == plain + 512 + len("lookup") + len("見つける".encode()) + len(schema_json)


MODEL = "anthropic/claude-3.5-haiku"  # $0.8 / $4 per million prompt / completion tokens
# The delay keeps all 50 calls in flight at once: none settles before the last reserves.
PROMPT = DENSE * 40 + " [[sim:tokens=4]] [[sim:delay=200]]"
BUDGET = Decimal("0.01")


def cost(prompt: int, completion: int) -> Decimal:
    return (Decimal("0.8") * prompt + Decimal(4) * completion) / 1_000_000


async def test_50_concurrent_dense_script_calls_stay_within_one_reservation_of_the_budget(
    gateway_store: dict[str, Any],
) -> None:
    callers = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(usd_per_day=BUDGET))]
    request = pb.CompleteRequest(
        model=MODEL, messages=[user(PROMPT)], sampling=pb.SamplingParams(max_tokens=4)
    )
    async with start_gateway(callers=callers, gateway=gateway_store) as gw:

        async def call() -> pb.CompleteResponse | grpc.StatusCode:
            try:
                return await gw.stub.Complete(request, metadata=auth())
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        results = await asyncio.gather(*(call() for _ in range(50)))
        generations = dict(gw.sim.state.generations)

    served = [r for r in results if isinstance(r, pb.CompleteResponse)]
    refused = [r for r in results if not isinstance(r, pb.CompleteResponse)]
    assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert served, "the budget fits some calls"
    spent = sum((Decimal(repr(generations[r.id].total_cost)) for r in served), Decimal(0))
    prompt = served[0].usage.prompt_tokens
    # The simulator counts the dense text as a real tokenizer would (about a token a
    # character): the reservation covers it, where 3 characters a token would not.
    assert prompt > len(PROMPT) * 0.9
    reservation = cost(estimate_prompt_tokens(one_message(PROMPT)), 4)
    assert spent <= BUDGET + reservation
    assert cost(prompt, 4) <= reservation
    assert spent <= BUDGET  # each call costs at most what it reserved


# --- content parts: text parts count their bytes; media only the context window bounds -------

GPT = ModelInfo(
    "openai/gpt-4o-mini",
    context_length=128_000,
    pricing=ModelPricing(
        prompt=Decimal("0.00000015"), completion=Decimal("0.0000006"), image=Decimal("0.000217")
    ),
)


def with_parts(*parts: Part, max_tokens: int = 100) -> CompletionRequest:
    return CompletionRequest(
        model=GPT.id,
        messages=(Message(Role.USER, "", parts=parts),),
        sampling=SamplingParams(max_tokens=max_tokens),
    )


def test_text_parts_count_their_bytes_like_content() -> None:
    parts = with_parts(TextPart("予算"), TextPart("four"))
    assert estimate_prompt_tokens(parts) == 16 + 6 + 4
    assert worst_case(parts, [GPT]) == CostEstimate(
        tokens=26 + 100, usd=GPT.pricing.cost(26, 100), completion=100
    )


def test_no_text_prompt_is_reserved_beyond_the_context_window() -> None:
    small = ModelInfo("small", context_length=1000, pricing=GPT.pricing)
    request = one_message("x" * 5000)
    assert worst_case(request, [small]).tokens == 1000  # longer is refused, billed nothing
    assert worst_case(request, [small, GPT]).tokens == 5016  # any candidate may serve


async def test_a_prompt_whose_bound_exceeds_tokens_per_minute_runs_alone_in_its_minute() -> None:
    # 3,000 bytes of English is ~750 tokens, but its bound (a token a byte) is above the
    # limit: the call takes the whole minute window instead of being refused for good.
    limits = CallerLimits(tokens_per_minute=2000)
    callers = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), limits)]
    prose = "the quick brown fox jumps over the lazy dog " * 70 + "[[sim:tokens=5]]"
    request = pb.CompleteRequest(messages=[user(prose)], sampling=pb.SamplingParams(max_tokens=50))
    asks_too_much = pb.CompleteRequest(
        messages=[user("hi")], sampling=pb.SamplingParams(max_tokens=2001)
    )
    async with start_gateway(callers=callers) as gw:
        served = await gw.stub.Complete(request, metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as second:
            await gw.stub.Complete(request, metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as alone:
            await gw.stub.Complete(asks_too_much, metadata=auth())

    assert served.usage.prompt_tokens < 1000
    assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = rich_error(second.value).detail(error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds > 50  # once the first call leaves the window
    # What the caller itself asked for (max_tokens) above the limit is still refused for good.
    assert "this request alone needs 2" in rich_error(alone.value).message
