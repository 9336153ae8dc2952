"""`GET /models` and `GET /generation`."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from service.simulator import RunningSimulator
from service.simulator.testing import chat_body

REQUIRED_MODELS = {
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-haiku",
    "meta-llama/llama-3.1-8b-instruct",
    "mistralai/mistral-7b-instruct",
    "google/gemini-2.0-flash-001",
    "openrouter/sim-fast",
}
REASONING_MODELS = {
    "anthropic/claude-sonnet-4.5",
    "openai/gpt-5-mini",
    "google/gemini-3-flash-preview",
}
IMAGE_MODEL = "google/gemini-2.5-flash-image"
ROUTER = "openrouter/auto"
ALL_MODELS = REQUIRED_MODELS | REASONING_MODELS | {IMAGE_MODEL, ROUTER}


async def test_models_listing_shape(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    async with session.get("/api/v1/models", headers={"Authorization": ""}) as resp:
        assert resp.status == 200
        models = (await resp.json())["data"]
    assert {m["id"] for m in models} == ALL_MODELS
    for model in models:
        architecture = model["architecture"]
        inputs, outputs = architecture["input_modalities"], architecture["output_modalities"]
        assert architecture["modality"] == f"{'+'.join(inputs)}->{'+'.join(outputs)}"
        assert "text" in inputs
        assert set(inputs) <= {"text", "image", "file", "audio", "video"}
        assert set(outputs) <= {"text", "image"}
        assert isinstance(architecture["tokenizer"], str)
        pricing = model["pricing"]
        if model["id"] == ROUTER:
            # A router's price is variable: "-1", and nothing else (as recorded).
            assert pricing == {"prompt": "-1", "completion": "-1"}
            continue
        assert pricing["request"] == "0"
        # An image price only where the model takes images (gpt-5-mini prices them as tokens).
        if "image" not in inputs:
            assert Decimal(pricing["image"]) == 0
        assert ("image_output" in pricing) == ("image" in outputs)
        for price in (pricing["prompt"], pricing["completion"]):
            assert isinstance(price, str)
            assert "e" not in price.lower()
            assert Decimal(price) > 0
        top = model["top_provider"]
        assert top["context_length"] == model["context_length"]
        assert isinstance(top["max_completion_tokens"], int)
        assert isinstance(top["is_moderated"], bool)
        assert model["supported_parameters"] == sorted(model["supported_parameters"])
        assert model["canonical_slug"]
        assert isinstance(model["created"], int)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "structured_outputs",
            {"openai/gpt-4o-mini", "google/gemini-2.0-flash-001", "openrouter/sim-fast"}
            | REASONING_MODELS
            | {IMAGE_MODEL},
        ),
        (
            "response_format",
            ALL_MODELS - {"mistralai/mistral-7b-instruct"},
        ),
        (
            "tools,response_format",
            ALL_MODELS
            - {"mistralai/mistral-7b-instruct", "meta-llama/llama-3.1-8b-instruct", IMAGE_MODEL},
        ),
        ("tools,structured_outputs,reasoning", {"openrouter/sim-fast"} | REASONING_MODELS),
    ],
)
async def test_supported_parameters_filter(
    sim: RunningSimulator, session: aiohttp.ClientSession, query: str, expected: set[str]
) -> None:
    params = {"supported_parameters": query}
    async with session.get("/api/v1/models", params=params) as resp:
        models = (await resp.json())["data"]
    assert {m["id"] for m in models} == expected
    record = await sim.state.wait_for_request(lambda r: r.path == "/api/v1/models")
    assert record.query == params
    assert record.method == "GET"
    assert record.body is None


async def test_generation_lookup_matches_the_response(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("hi [[sim:reasoning=2]]", model="google/gemini-2.0-flash-001", user="u-1")
    async with session.post("/api/v1/chat/completions", json=body) as resp:
        payload = await resp.json()
    async with session.get("/api/v1/generation", params={"id": payload["id"]}) as resp:
        assert resp.status == 200
        data = (await resp.json())["data"]
    usage = payload["usage"]
    assert data["id"] == payload["id"]
    assert data["model"] == "google/gemini-2.0-flash-001"
    assert data["provider_name"] == "Google AI Studio"
    assert data["total_cost"] == data["usage"] == usage["cost"]
    assert data["tokens_prompt"] == data["native_tokens_prompt"] == usage["prompt_tokens"]
    assert data["tokens_completion"] == usage["completion_tokens"]
    assert data["native_tokens_reasoning"] == 2
    assert data["native_tokens_cached"] == 0
    assert data["streamed"] is False
    assert data["cancelled"] is False
    assert data["finish_reason"] == "stop"
    assert data["native_finish_reason"] == "STOP"
    assert data["external_user"] == "u-1"
    assert data["created_at"].endswith("+00:00")
    assert isinstance(data["latency"], int)
    assert isinstance(data["generation_time"], int)


async def test_generation_errors(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    async with session.get("/api/v1/generation", params={"id": "gen-0-nope"}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": {"code": 404, "message": "Generation not found"}}
    async with session.get("/api/v1/generation") as resp:
        assert resp.status == 400
    params = {"id": "gen-0-nope"}
    async with session.get(
        "/api/v1/generation", params=params, headers={"Authorization": ""}
    ) as resp:
        assert resp.status == 401
