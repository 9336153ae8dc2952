"""The model catalog (cache, background refresh, stale on failure), generation stats, headers."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from service.domain.completion import (
    CallStats,
    ResponseFormat,
    ResponseFormatKind,
    SamplingParams,
)
from service.domain.models import ModelInfo
from service.errors import UpstreamAuthError
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.upstream import OpenRouterClient

from .conftest import API_KEY, MODEL, ClientFactory, deadline_in, request, settings_for

SIM_MODELS = {
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-haiku",
    "meta-llama/llama-3.1-8b-instruct",
    "mistralai/mistral-7b-instruct",
    "google/gemini-2.0-flash-001",
    "openrouter/sim-fast",
}


async def find_model(client: OpenRouterClient, model_id: str) -> ModelInfo | None:
    return next((m for m in await client.list_models() if m.id == model_id), None)


def model_fetches(sim: RunningSimulator) -> int:
    return sum(r.path.startswith("/api/v1/models") for r in sim.state.requests)


async def test_models_are_parsed(client: OpenRouterClient) -> None:
    models = await client.list_models()
    assert {m.id for m in models} >= SIM_MODELS
    mini = await find_model(client, MODEL)
    assert mini is not None
    assert mini.context_length > 0
    assert isinstance(mini.pricing.prompt, Decimal)
    assert mini.pricing.prompt > 0
    assert mini.pricing.completion > 0
    assert mini.supports_response_format
    assert await find_model(client, "no/such-model") is None


async def test_models_are_cached(client: OpenRouterClient, sim: RunningSimulator) -> None:
    first = await client.list_models()
    second = await client.list_models()
    assert second is first
    assert model_fetches(sim) == 1


async def test_concurrent_first_calls_fetch_once(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    results = await asyncio.gather(*(client.list_models() for _ in range(5)))
    assert all(r == results[0] for r in results)
    assert model_fetches(sim) == 1


async def test_background_refresh_before_expiry(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(models_ttl_s=1.0)
    await client.start()
    await client.list_models()
    fetches = [r for r in sim.state.requests if r.path.startswith("/api/v1/models")]
    refresh = await sim.state.wait_for_request(
        lambda r: r.path.startswith("/api/v1/models") and r is not fetches[0], timeout=3
    )
    # Refreshed at 80 % of the TTL, before the cache expired, without a caller asking.
    assert 0.7 <= refresh.time - fetches[0].time < 1.0
    await client.list_models()
    assert model_fetches(sim) == 2


class _Signal(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fired = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.fired.set()


async def test_failed_refresh_keeps_serving_the_stale_list() -> None:
    logger = logging.getLogger("service.upstream")
    signal = _Signal()
    logger.addHandler(signal)
    try:
        async with run_simulator(SimulatorConfig(expected_api_key=API_KEY)) as sim:
            client = OpenRouterClient(settings_for(sim.base_url, models_ttl_s=1.0, max_retries=0))
            await client.start()
            try:
                cached = await client.list_models()
            except BaseException:
                await client.close()
                raise
        # The simulator is gone: the refresh at 0.8 s fails, and the list is still served.
        try:
            await asyncio.wait_for(signal.fired.wait(), timeout=3)
            assert await client.list_models() is cached
            assert await find_model(client, MODEL) is not None
        finally:
            await client.close()
    finally:
        logger.removeHandler(signal)
    assert any("refresh failed" in m for m in signal.messages)
    assert all(API_KEY not in m for m in signal.messages)


async def test_generation_lookup(client: OpenRouterClient) -> None:
    stats = CallStats()
    completion = await client.complete(
        request("[[sim:tokens=6]]"), deadline=deadline_in(5), stats=stats
    )
    generation = await client.get_generation(completion.id, deadline=deadline_in(5))
    assert generation is not None
    assert generation.id == completion.id == stats.generation_id
    assert generation.model == MODEL
    assert generation.completion_tokens == 6
    assert generation.total_cost_usd == pytest.approx(completion.usage.cost_usd)
    assert generation.finish_reason == "stop"
    assert not generation.cancelled
    assert await client.get_generation("gen-unknown", deadline=deadline_in(5)) is None


async def test_headers_and_body_sent(client: OpenRouterClient, sim: RunningSimulator) -> None:
    req = request(
        "[[sim:tokens=3]]",
        max_tokens=50,
        trace_headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT),
    )
    await client.complete(req, deadline=deadline_in(5))
    recorded = await sim.state.wait_for_request()
    assert recorded.has_authorization
    assert "authorization" not in recorded.headers
    assert recorded.headers["http-referer"] == "https://gateway.example"
    assert recorded.headers["x-openrouter-title"] == "Gateway Tests"
    assert recorded.headers["x-title"] == "Gateway Tests"
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.headers["traceparent"].startswith("00-0af7")
    body = recorded.body
    assert body["max_tokens"] == 50
    assert body["stream"] is False
    assert body["response_format"] == {"type": "json_object"}
    for unset in ("temperature", "top_p", "top_k", "seed", "stop", "frequency_penalty"):
        assert unset not in body


async def test_trace_headers_cannot_override_ours(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    req = request(trace_headers={"Authorization": "Bearer evil", "X-Title": "evil"})
    await client.complete(req, deadline=deadline_in(5))
    recorded = await sim.state.wait_for_request()
    assert recorded.headers["x-title"] == "Gateway Tests"


async def test_sampling_params_sent_when_set(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    from dataclasses import replace

    req = replace(request(), sampling=SamplingParams(temperature=0.0, seed=3, max_tokens=8))
    await client.complete(req, deadline=deadline_in(5))
    body = (await sim.state.wait_for_request()).body
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 3, 8)
    assert "top_p" not in body


async def test_without_key_no_authorization_and_401(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(api_key=None)
    await client.start()
    with pytest.raises(UpstreamAuthError) as info:
        await client.complete(request(), deadline=deadline_in(5))
    assert info.value.status == 401
    assert not (await sim.state.wait_for_request()).has_authorization


async def test_repr_hides_the_key(client: OpenRouterClient) -> None:
    assert API_KEY not in repr(client)
    assert "SECRET" not in repr(client)


async def test_not_started_is_an_internal_error(sim: RunningSimulator) -> None:
    from service.errors import InternalError

    client = OpenRouterClient(settings_for(sim.base_url))
    with pytest.raises(InternalError):
        await client.complete(request(), deadline=deadline_in(5))
    async with client:
        assert (await client.complete(request(), deadline=deadline_in(5))).content
