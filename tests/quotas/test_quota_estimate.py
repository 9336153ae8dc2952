"""The prompt estimate is an upper bound in every script, so a budget holds under concurrency."""

from __future__ import annotations

import asyncio
import unicodedata
from decimal import Decimal
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import estimate_prompt_tokens
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import CompletionRequest, Message, Role, ToolDefinition
from service.simulator.generate import prompt_tokens
from tests.harness import ALPHA_KEY, auth, start_gateway, user

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


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    url: str = request.getfixturevalue("redis_url")
    return {"redis_url": url}


async def test_50_concurrent_dense_script_calls_stay_within_one_reservation_of_the_budget(
    store: dict[str, Any],
) -> None:
    callers = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(usd_per_day=BUDGET))]
    request = pb.CompleteRequest(
        model=MODEL, messages=[user(PROMPT)], sampling=pb.SamplingParams(max_tokens=4)
    )
    async with start_gateway(callers=callers, gateway=store) as gw:

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
