"""Structured output end to end: the real OpenRouter client against the loopback simulator.

Each model of the simulated catalog stands for one capability level, and ``[[sim:json=…]]``
directives in the user message make the "model" misbehave in a chosen way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import AnyHttpUrl, SecretStr

from service.config import OpenRouterSettings
from service.domain.completion import (
    CallStats,
    CompletionRequest,
    Message,
    Role,
    SamplingParams,
)
from service.domain.models import ModelInfo
from service.domain.schemas import SchemaRegistry
from service.domain.structured import (
    RepairKind,
    StructuredCompleter,
    StructuredMode,
    StructuredResult,
)
from service.errors import SchemaValidationError
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.upstream.openrouter import OpenRouterClient

SCHEMAS = SchemaRegistry.load(Path(__file__).resolve().parents[2] / "schemas")
NATIVE_MODEL = "openai/gpt-4o-mini"
JSON_OBJECT_MODEL = "anthropic/claude-3.5-haiku"
PLAIN_MODEL = "mistralai/mistral-7b-instruct"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig(keepalive_comments=0)) as running:
        yield running


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[OpenRouterClient]:
    settings = OpenRouterSettings(
        api_key=SecretStr("sk-or-v1-test-key"),
        base_url=AnyHttpUrl(sim.base_url),
        max_retries=0,
    )
    async with OpenRouterClient(settings) as running:
        yield running


class Harness:
    def __init__(self, sim: RunningSimulator, client: OpenRouterClient) -> None:
        self.sim = sim
        self.client = client

    async def run(
        self,
        text: str,
        *,
        model: str = NATIVE_MODEL,
        schema: str = "chat_reply_v1",
        stats: list[CallStats] | None = None,
    ) -> StructuredResult:
        info = next((m for m in await self.client.list_models() if m.id == model), None)
        base = CompletionRequest(
            model=model,
            messages=(
                Message(Role.SYSTEM, "You are a helpful assistant."),
                Message(Role.USER, text),
            ),
            sampling=SamplingParams(max_tokens=800),
        )
        deadline = asyncio.get_running_loop().time() + 10
        return await StructuredCompleter().complete(
            base,
            SCHEMAS.get(schema),
            info,
            deadline=deadline,
            backend=self.client,
            attempt_stats=stats,
        )

    def bodies(self) -> list[dict[str, Any]]:
        """The chat request bodies the simulator received, in order."""
        return [
            request.body
            for request in self.sim.state.requests
            if request.path.endswith("/chat/completions")
        ]


@pytest.fixture
def harness(sim: RunningSimulator, client: OpenRouterClient) -> Harness:
    return Harness(sim, client)


async def test_native_conforming_reply_and_request_shape(harness: Harness) -> None:
    result = await harness.run("Say hello")
    assert SCHEMAS.get("chat_reply_v1").validate(result.json_text).ok
    assert (result.mode, result.attempts, result.repairs) == (StructuredMode.NATIVE, 1, ())
    assert not result.fallback_used
    assert result.completion.model == NATIVE_MODEL
    assert result.completion.id
    (body,) = harness.bodies()
    assert body["stream"] is False
    assert body["temperature"] == 0.0
    assert body["provider"] == {"require_parameters": True}
    assert body["plugins"] == [{"id": "response-healing"}]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "chat_reply_v1"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == dict(SCHEMAS.get("chat_reply_v1").wire_schema)


async def test_min_items_schema_on_the_native_path(harness: Harness) -> None:
    result = await harness.run("Summarise", schema="chat_ui_payload_v1")
    assert len(result.value["bullets"]) >= 1
    assert result.schema_name == "chat_ui_payload_v1"


async def test_not_json_fails_after_the_reask(harness: Harness) -> None:
    stats: list[CallStats] = []
    with pytest.raises(SchemaValidationError) as caught:
        await harness.run("Say hello [[sim:json=invalid]]", stats=stats)
    error = caught.value
    assert error.reason == "SCHEMA_VALIDATION_FAILED"
    assert error.metadata["attempts"] == "2"
    assert error.metadata["findings"].startswith("(root): not valid JSON")
    assert "Sure!" not in error.message + error.metadata["findings"]
    assert len(harness.bodies()) == 2
    assert [s.generation_id for s in stats] == list(harness.sim.state.generations)


async def test_fenced_reply_is_healed_upstream_on_the_native_path(harness: Harness) -> None:
    result = await harness.run("Say hello [[sim:json=fenced]]")
    assert result.attempts == 1
    assert not result.repaired
    assert result.completion.content.startswith("{")


async def test_fenced_reply_is_extracted_locally_in_instructions_mode(harness: Harness) -> None:
    result = await harness.run("Say hello [[sim:json=fenced]]", model=PLAIN_MODEL)
    assert result.mode is StructuredMode.INSTRUCTIONS
    assert result.fallback_used
    assert result.repairs == (RepairKind.EXTRACTED,)
    assert result.completion.content.startswith("Here is the JSON")
    assert SCHEMAS.get("chat_reply_v1").validate(result.json_text).ok
    (body,) = harness.bodies()
    assert "response_format" not in body
    assert "plugins" not in body
    assert "provider" not in body
    system = body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a helpful assistant.\n\n")
    assert SCHEMAS.get("chat_reply_v1").schema_json in system["content"]
    assert len(body["messages"]) == 2


async def test_json_object_mode_for_a_model_without_structured_outputs(harness: Harness) -> None:
    result = await harness.run("Say hello", model=JSON_OBJECT_MODEL)
    assert result.mode is StructuredMode.JSON_OBJECT
    assert result.fallback_used
    assert result.attempts == 1
    assert SCHEMAS.get("chat_reply_v1").validate(result.json_text).ok
    (body,) = harness.bodies()
    assert body["response_format"] == {"type": "json_object"}
    assert body["plugins"] == [{"id": "response-healing"}]
    assert body["provider"] == {"require_parameters": True}
    fenced_schema = f"```json\n{SCHEMAS.get('chat_reply_v1').schema_json}\n```"
    assert fenced_schema in body["messages"][0]["content"]


async def test_wrong_shape_fails_after_the_repair(harness: Harness) -> None:
    with pytest.raises(SchemaValidationError) as caught:
        await harness.run("Say hello [[sim:json=wrong-shape]]")
    error = caught.value
    assert "after a repair attempt" in error.message
    assert error.metadata["schema"] == "chat_reply_v1"
    assert error.metadata["attempts"] == "2"
    assert error.metadata["findings"]
    second = harness.bodies()[1]
    assert second["messages"][-2]["role"] == "assistant"
    assert second["messages"][-1]["content"].startswith("Your previous reply did not match")


async def test_wrong_once_is_repaired_and_usage_is_summed(harness: Harness) -> None:
    result = await harness.run("Say hello [[sim:json=wrong-once]]")
    assert result.attempts == 2
    assert result.repairs == (RepairKind.REASKED,)
    generations = list(harness.sim.state.generations.values())
    assert len(generations) == 2
    assert result.usage.prompt_tokens == sum(g.tokens_prompt for g in generations)
    assert result.usage.completion_tokens == sum(g.tokens_completion for g in generations)
    assert result.usage.cost_usd == pytest.approx(sum(g.total_cost for g in generations))
    assert [s.generation_id for s in result.call_stats] == [g.id for g in generations]
    assert result.completion.id == generations[-1].id


async def test_truncated_reply_is_not_reasked(harness: Harness) -> None:
    with pytest.raises(SchemaValidationError) as caught:
        await harness.run("Say hello [[sim:json=truncated]]")
    assert caught.value.metadata["attempts"] == "1"
    assert "raise max_tokens" in caught.value.metadata["findings"]
    assert len(harness.bodies()) == 1


async def test_unknown_model_is_treated_as_native(
    harness: Harness, client: OpenRouterClient
) -> None:
    base = CompletionRequest(model=NATIVE_MODEL, messages=(Message(Role.USER, "hi"),))
    unknown: ModelInfo | None = None
    result = await StructuredCompleter().complete(
        base,
        SCHEMAS.get("chat_reply_v1"),
        unknown,
        deadline=asyncio.get_running_loop().time() + 10,
        backend=client,
    )
    assert result.mode is StructuredMode.NATIVE
    assert harness.bodies()[0]["response_format"]["type"] == "json_schema"
