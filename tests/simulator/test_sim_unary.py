"""Non-streaming chat completions: shape, accounting, auth, model routing, unary faults."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from service.simulator import DEFAULT_CATALOG, RunningSimulator, SimulatorConfig, run_simulator
from service.simulator.testing import chat_body

CHAT = "/api/v1/chat/completions"


async def _post(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(CHAT, json=body) as resp:
        return resp.status, await resp.json()


async def test_unary_response_has_openrouter_shape(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=chat_body("Say hello")) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        payload = await resp.json()
        assert resp.headers["X-Generation-Id"] == payload["id"]

    assert re.fullmatch(r"gen-\d{10}-[A-Za-z0-9]{20}", payload["id"])
    assert payload["object"] == "chat.completion"
    assert payload["model"] == "openai/gpt-4o-mini"
    assert payload["provider"] == "OpenAI"
    assert isinstance(payload["created"], int)
    [choice] = payload["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["native_finish_reason"] == "stop"
    assert choice["logprobs"] is None
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["refusal"] is None
    assert message["reasoning"] is None
    assert "tool_calls" not in message
    assert len(message["content"].split()) == 24
    assert "hello" not in message["content"].lower()

    usage = payload["usage"]
    assert usage["completion_tokens"] == 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + 24
    assert usage["is_byok"] is False
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    model = DEFAULT_CATALOG.get("openai/gpt-4o-mini")
    assert model is not None
    expected = model.prompt_price * usage["prompt_tokens"] + model.completion_price * 24
    assert Decimal(str(usage["cost"])) == pytest.approx(expected)
    assert usage["cost_details"]["upstream_inference_cost"] == usage["cost"]


async def test_content_is_deterministic_and_tokens_directive_sets_length(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    _, first = await _post(session, chat_body("same prompt [[sim:tokens=5]]"))
    _, second = await _post(session, chat_body("same prompt [[sim:tokens=5]]"))
    content = first["choices"][0]["message"]["content"]
    assert content == second["choices"][0]["message"]["content"]
    assert len(content.split()) == 5
    assert first["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_cuts_reply_with_finish_reason_length(
    sim: RunningSimulator, session: aiohttp.ClientSession, field: str
) -> None:
    body = chat_body("long please")
    body[field] = 4
    _, payload = await _post(session, body)
    choice = payload["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["native_finish_reason"] == "length"
    assert payload["usage"]["completion_tokens"] == 4
    assert len(choice["message"]["content"].split()) == 4


async def test_native_finish_reason_follows_the_provider(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    _, payload = await _post(session, chat_body("hi", model="anthropic/claude-3.5-haiku"))
    assert payload["provider"] == "Anthropic"
    assert payload["choices"][0]["native_finish_reason"] == "end_turn"


async def test_missing_or_empty_bearer_is_rejected(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession(base_url=sim.root_url) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
            async with client.post(CHAT, json=chat_body("hi"), headers=headers) as resp:
                assert resp.status == 401
                assert await resp.json() == {
                    "error": {"message": "No auth credentials found", "code": 401}
                }


async def test_expected_key_is_enforced() -> None:
    async with (
        run_simulator(SimulatorConfig(expected_api_key="sk-or-v1-right")) as sim,
        aiohttp.ClientSession(base_url=sim.root_url) as client,
    ):
        wrong = {"Authorization": "Bearer sk-or-v1-wrong"}
        async with client.post(CHAT, json=chat_body("hi"), headers=wrong) as resp:
            assert resp.status == 401
            assert await resp.json() == {"error": {"message": "User not found.", "code": 401}}
        right = {"Authorization": "Bearer sk-or-v1-right"}
        async with client.post(CHAT, json=chat_body("hi"), headers=right) as resp:
            assert resp.status == 200


async def test_authorization_value_is_never_recorded(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    await _post(session, chat_body("hi", user="end-user-7"))
    record = await sim.state.wait_for_request(lambda r: r.path == CHAT)
    assert record.has_authorization is True
    assert "authorization" not in record.headers
    assert record.body["user"] == "end-user-7"
    async with session.get("/_sim/requests") as resp:
        raw = await resp.read()
    assert b"sk-or-v1-test-key" not in raw
    assert orjson.loads(raw)["data"][0]["has_authorization"] is True


async def test_unknown_model_is_a_400_with_user_id(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, payload = await _post(session, chat_body("hi", model="nope/model-x"))
    assert status == 400
    assert payload == {
        "error": {"message": "nope/model-x is not a valid model ID", "code": 400},
        "user_id": "user_sim",
    }


async def test_variant_suffix_is_accepted(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, payload = await _post(session, chat_body("hi", model="openai/gpt-4o-mini:nitro"))
    assert status == 200
    assert payload["model"] == "openai/gpt-4o-mini:nitro"


@pytest.mark.parametrize(
    ("model", "content"),
    [("nope/model-x", "hi"), ("openai/gpt-4o-mini", "hi [[sim:fail-primary]]")],
)
async def test_models_fallback_serves_and_reports_the_fallback(
    sim: RunningSimulator, session: aiohttp.ClientSession, model: str, content: str
) -> None:
    body = chat_body(content, model=model, models=["also/unknown", "mistralai/mistral-7b-instruct"])
    status, payload = await _post(session, body)
    assert status == 200
    assert payload["model"] == "mistralai/mistral-7b-instruct"
    assert payload["provider"] == "Together"


async def test_fail_primary_without_fallback_is_a_502(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, payload = await _post(session, chat_body("hi [[sim:fail-primary]]"))
    assert status == 502
    assert payload["error"]["code"] == 502


async def test_require_parameters_rejects_unsupported_model(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body(
        "hi",
        model="mistralai/mistral-7b-instruct",
        response_format={"type": "json_object"},
        provider={"require_parameters": True},
    )
    status, payload = await _post(session, body)
    assert status == 404
    assert "No endpoints found" in payload["error"]["message"]


async def test_reasoning_directive_adds_reasoning_tokens(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    _, payload = await _post(session, chat_body("think [[sim:reasoning=6]] [[sim:tokens=3]]"))
    message = payload["choices"][0]["message"]
    assert len(message["reasoning"].split()) == 6
    assert message["reasoning_details"][0]["type"] == "reasoning.text"
    usage = payload["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 6
    assert usage["completion_tokens"] == 9


async def test_choice_error_is_http_200_with_error_in_choice(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, payload = await _post(session, chat_body("hi [[sim:choice-error]]"))
    assert status == 200
    choice = payload["choices"][0]
    assert choice["finish_reason"] == "error"
    assert choice["error"]["code"] == 502
    assert choice["error"]["metadata"] == {"error_type": "provider_unavailable"}
    assert len(choice["message"]["content"].split()) == 3
    assert payload["usage"]["cost"] == 0


async def test_malformed_unary_body_is_not_json(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=chat_body("hi [[sim:malformed]]")) as resp:
        assert resp.status == 200
        raw = await resp.read()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


async def test_bad_content_type_is_an_html_200(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=chat_body("hi [[sim:bad-content-type]]")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"


async def test_unary_drop_closes_connection_without_response(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await session.post(CHAT, json=chat_body("hi [[sim:drop-after=0]]"))


@pytest.mark.parametrize(
    "directive", ["[[sim:bogus]]", "[[sim:error=abc]]", "[[sim:tokens=-1]]", "[[sim:json=maybe]]"]
)
async def test_bad_directive_is_a_loud_400(
    sim: RunningSimulator, session: aiohttp.ClientSession, directive: str
) -> None:
    status, payload = await _post(session, chat_body(f"hi {directive}"))
    assert status == 400
    assert payload["error"]["message"].startswith("Simulator directive error")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "openai/gpt-4o-mini"},
        {"messages": []},
        {"messages": [{"role": "user"}], "max_tokens": 0},
    ],
)
async def test_invalid_requests_are_400(
    sim: RunningSimulator, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    status, payload = await _post(session, body)
    assert status == 400
    assert payload["error"]["code"] == 400
