"""`error=CODE` directives: statuses, OpenRouter body shapes, Retry-After, fail-times."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from service.simulator import RunningSimulator
from service.simulator.testing import chat_body

CHAT = "/api/v1/chat/completions"

CODES = [400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 524, 529]


async def _fail(
    session: aiohttp.ClientSession, directives: str, **fields: Any
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with session.post(CHAT, json=chat_body(f"hello {directives}", **fields)) as resp:
        return resp, await resp.json()


@pytest.mark.parametrize("code", CODES)
async def test_each_error_code_has_its_status_and_body(
    sim: RunningSimulator, session: aiohttp.ClientSession, code: int
) -> None:
    resp, payload = await _fail(session, f"[[sim:error={code}]]")
    assert resp.status == code
    assert resp.content_type == "application/json"
    assert payload["error"]["code"] == code
    assert isinstance(payload["error"]["message"], str)
    assert payload["error"]["message"]
    assert ("Retry-After" in resp.headers) is (code in (429, 503))


async def test_402_credits_shape(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    _, payload = await _fail(session, "[[sim:error=402]]")
    assert "requires more credits" in payload["error"]["message"]
    assert payload["error"]["metadata"] == {"provider_name": None}
    assert payload["user_id"] == "user_sim"


async def test_403_moderation_shape(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    long_text = "flag me " * 30
    _, payload = await _fail(session, f"{long_text} [[sim:error=403]]")
    metadata = payload["error"]["metadata"]
    assert metadata["reasons"] == ["harassment"]
    assert metadata["provider_name"] == "OpenAI"
    assert metadata["model_slug"] == "openai/gpt-4o-mini"
    assert len(metadata["flagged_input"]) == 100
    assert "..." in metadata["flagged_input"]
    assert "[[sim:" not in metadata["flagged_input"]


async def test_403_guardrail_and_key_shapes(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, guardrail = await _fail(session, "[[sim:error=403-guardrail]]")
    assert resp.status == 403
    assert guardrail["error"]["metadata"]["patterns"]
    resp, key = await _fail(session, "[[sim:error=403-key]]")
    assert resp.status == 403
    assert "metadata" not in key["error"]
    assert "key" in key["error"]["message"].lower()


async def test_429_provider_shape_with_retry_after(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, payload = await _fail(session, "[[sim:error=429]] [[sim:retry-after=2]]")
    assert resp.headers["Retry-After"] == "2"
    metadata = payload["error"]["metadata"]
    assert payload["error"]["message"] == "Provider returned error"
    assert metadata["provider_name"] == "OpenAI"
    assert metadata["retry_after_seconds"] == 2
    assert metadata["headers"] == {"Retry-After": "2"}
    assert "rate-limited" in metadata["raw"]


async def test_fractional_retry_after(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, payload = await _fail(session, "[[sim:error=503]] [[sim:retry-after=0.2]]")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "0.2"
    resp, payload = await _fail(session, "[[sim:error=429]] [[sim:retry-after=0.2]]")
    assert payload["error"]["metadata"]["retry_after_seconds"] == 0.2


async def test_openrouter_free_tier_429_has_rate_limit_headers(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, payload = await _fail(session, "[[sim:error=429-openrouter]]")
    assert resp.status == 429
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert "free-models-per-day" in payload["error"]["message"]


async def test_500_is_masked(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    _, payload = await _fail(session, "[[sim:error=500]]")
    assert payload["error"] == {"message": "Internal Server Error", "code": 500}


async def test_new_shape_has_no_error_code(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, payload = await _fail(session, "[[sim:error=new-shape]]")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    error = payload["error"]
    assert "code" not in error
    assert error["error_type"] == "capacity_exhausted"
    assert error["http_status"] == 429
    availability = error["availability"]
    assert availability["code"] == "capacity_exhausted"
    assert availability["retryable"] is True
    assert availability["retry_after"] == 3
    assert availability["requested_models"] == ["openai/gpt-4o-mini"]
    assert availability["docs_url"].startswith("https://")


async def test_fail_times_then_success_and_reset(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    directives = "[[sim:error=503]] [[sim:fail-times=2]] [[sim:retry-after=0]]"
    statuses = [(await _status(session, directives)) for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    # A different body is a different request with its own counter.
    assert await _status(session, directives + " other") == 503

    async with session.post("/_sim/reset") as resp:
        assert resp.status == 200
    assert await _status(session, directives) == 503


async def _status(session: aiohttp.ClientSession, directives: str) -> int:
    async with session.post(CHAT, json=chat_body(f"retry me {directives}")) as resp:
        await resp.read()
        return resp.status


async def test_fail_times_needs_an_error(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    resp, payload = await _fail(session, "[[sim:fail-times=2]]")
    assert resp.status == 400
    assert "fail-times" in payload["error"]["message"]
