"""Provider routing: the simulator picks a model's endpoint per the ``provider`` object, names
it in the answer and bills its prices; ``serve-provider`` makes it ignore the preferences."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from service.simulator import DEFAULT_CATALOG, RunningSimulator
from service.simulator.providers import ENDPOINTS
from service.simulator.testing import chat_body

CHAT = "/api/v1/chat/completions"
LLAMA = "meta-llama/llama-3.1-8b-instruct"
# llama's endpoints, in listing order: DeepInfra (bf16, 0.02/0.03 per million), DeepInfra
# turbo (fp8, 0.015/0.02), Groq (fp16, zdr, fastest, lacks top_k), Together (fp8,
# 0.018/0.018), Chutes (fp8, collects data, cheapest, lacks response_format).


async def _post(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(CHAT, json=body) as resp:
        return resp.status, await resp.json()


def _llama(provider: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    body = chat_body("Hello", model=fields.pop("model", LLAMA), **fields)
    if provider is not None:
        body["provider"] = provider
    return body


ROUTES: list[Any] = [
    pytest.param(None, "DeepInfra", "0.02", id="default-listed-first"),
    pytest.param({"sort": "price"}, "Chutes", "0.01", id="sort-price"),
    pytest.param({"sort": {"by": "price"}}, "Chutes", "0.01", id="sort-object"),
    pytest.param({"sort": "throughput"}, "Groq", "0.02", id="sort-throughput"),
    pytest.param({"sort": "latency"}, "Groq", "0.02", id="sort-latency"),
    pytest.param({"data_collection": "deny", "sort": "price"}, "DeepInfra", "0.015", id="deny"),
    pytest.param({"zdr": True}, "Groq", "0.02", id="zdr"),
    pytest.param({"quantizations": ["fp16"]}, "Groq", "0.02", id="quantizations"),
    pytest.param({"only": ["together"]}, "Together", "0.018", id="only"),
    pytest.param({"only": ["deepinfra/turbo"]}, "DeepInfra", "0.015", id="only-full-slug"),
    pytest.param({"ignore": ["deepinfra"]}, "Groq", "0.02", id="ignore-base-slug-covers-turbo"),
    pytest.param({"order": ["together", "groq"]}, "Together", "0.018", id="order"),
    pytest.param({"max_price": {"prompt": 0.012}}, "Chutes", "0.01", id="max-price"),
    pytest.param({"max_price": {"completion": "0.02"}}, "DeepInfra", "0.015", id="price-str"),
]


@pytest.mark.parametrize(("provider", "served", "prompt_per_million"), ROUTES)
async def test_the_preferences_choose_the_endpoint_and_its_price(
    session: aiohttp.ClientSession,
    provider: dict[str, Any] | None,
    served: str,
    prompt_per_million: str,
) -> None:
    status, payload = await _post(session, _llama(provider))
    assert status == 200, payload
    assert payload["provider"] == served
    usage = payload["usage"]
    prompt_cost = Decimal(repr(usage["cost_details"]["upstream_inference_prompt_cost"]))
    expected = Decimal(prompt_per_million) / 1_000_000 * usage["prompt_tokens"]
    assert prompt_cost == pytest.approx(expected)


async def test_suffixes_sort_when_the_request_does_not(session: aiohttp.ClientSession) -> None:
    _, nitro = await _post(session, _llama(model=f"{LLAMA}:nitro"))
    _, floor = await _post(session, _llama(model=f"{LLAMA}:floor"))
    _, explicit = await _post(session, _llama({"sort": "price"}, model=f"{LLAMA}:nitro"))
    assert (nitro["provider"], floor["provider"], explicit["provider"]) == (
        "Groq",
        "Chutes",
        "Chutes",
    )


async def test_require_parameters_skips_endpoints_lacking_one(
    session: aiohttp.ClientSession,
) -> None:
    strict = {"require_parameters": True, "sort": "throughput"}
    _, with_top_k = await _post(session, _llama(strict, top_k=5))
    assert with_top_k["provider"] == "DeepInfra"  # Groq, the fastest, has no top_k
    cheapest = {"require_parameters": True, "sort": "price"}
    _, json_mode = await _post(session, _llama(cheapest, response_format={"type": "json_object"}))
    assert json_mode["provider"] == "DeepInfra"  # Chutes has no JSON mode; turbo is next
    # Without require_parameters the endpoint just ignores what it lacks.
    _, lax = await _post(session, _llama({"sort": "throughput"}, top_k=5))
    assert lax["provider"] == "Groq"


NO_ENDPOINT: list[Any] = [
    pytest.param({"only": ["anthropic"]}, "No allowed providers", id="only-none"),
    pytest.param({"order": ["nobody"], "allow_fallbacks": False}, "No allowed", id="order-only"),
    pytest.param({"zdr": True, "quantizations": ["fp8"]}, "within the price", id="zdr-fp8"),
    pytest.param({"max_price": {"completion": 0.001}}, "within the price", id="too-cheap"),
    pytest.param({"zdr": True, "ignore": ["groq"]}, "data policy", id="zdr-none-left"),
]


@pytest.mark.parametrize(("provider", "message"), NO_ENDPOINT)
async def test_preferences_that_leave_no_endpoint_are_404(
    session: aiohttp.ClientSession, provider: dict[str, Any], message: str
) -> None:
    status, payload = await _post(session, _llama(provider))
    assert status == 404
    assert message in payload["error"]["message"]


MALFORMED: list[Any] = [
    pytest.param("price", id="not-an-object"),
    pytest.param({"only": "openai"}, id="only-not-a-list"),
    pytest.param({"sort": "cheapest"}, id="unknown-sort"),
    pytest.param({"zdr": "yes"}, id="zdr-not-a-boolean"),
    pytest.param({"max_price": {"prompt": "a lot"}}, id="price-not-a-number"),
    pytest.param({"max_price": {"tokens": 1}}, id="unknown-price-kind"),
    pytest.param({"quantizations": ["fp7"]}, id="unknown-quantization"),
    pytest.param({"data_collection": "maybe"}, id="bad-data-collection"),
    pytest.param({"options": {}}, id="unknown-field"),
]


@pytest.mark.parametrize("provider", MALFORMED)
async def test_malformed_preferences_are_400(session: aiohttp.ClientSession, provider: Any) -> None:
    status, payload = await _post(session, _llama(provider))
    assert status == 400, payload


async def test_serve_provider_ignores_the_preferences(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("Hi [[sim:serve-provider=chutes]]", model="openai/gpt-4o-mini")
    body["provider"] = {"only": ["openai"], "data_collection": "deny"}
    status, payload = await _post(session, body)
    assert (status, payload["provider"]) == (200, "Chutes")
    generation = await sim.state.wait_for_generation(payload["id"])
    assert generation.provider_name == "Chutes"
    # What the simulator received is recorded as sent.
    [chat] = [r for r in sim.state.requests if r.path == CHAT]
    assert chat.body["provider"] == {"only": ["openai"], "data_collection": "deny"}

    status, bad = await _post(session, chat_body("Hi [[sim:serve-provider=nobody]]"))
    assert status == 400
    assert "Simulator directive error" in bad["error"]["message"]


async def test_the_listing_price_bounds_every_endpoint() -> None:
    for model_id, endpoints in ENDPOINTS.items():
        model = DEFAULT_CATALOG.get(model_id)
        assert model is not None
        assert endpoints[0].name == model.provider_name
        for endpoint in endpoints:
            assert (endpoint.prompt_price or model.prompt_price) <= model.prompt_price
            assert (endpoint.completion_price or model.completion_price) <= model.completion_price
