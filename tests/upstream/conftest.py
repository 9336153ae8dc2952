"""Fixtures: a simulator on loopback and an OpenRouterClient pointed at it.

Backoff, read timeout and budget are small so failure paths stay fast; the API key is
recognisable so tests can assert it never leaks into an error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from pydantic import SecretStr

from service.config import OpenRouterSettings
from service.domain.completion import (
    CompletionRequest,
    ContentDelta,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
)
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.upstream import OpenRouterClient

API_KEY = "sk-or-v1-SECRET-4f1c2d3e5a6b7c8d9e0f"
PROMPT = "Tell me about the zebra in Kilimanjaro"
MODEL = "openai/gpt-4o-mini"


def settings_for(base_url: str, **overrides: Any) -> OpenRouterSettings:
    values: dict[str, Any] = {
        "api_key": SecretStr(API_KEY),
        "base_url": base_url,
        "http_referer": "https://gateway.example",
        "x_title": "Gateway Tests",
        "timeout_ms": 5_000,
        "read_timeout_ms": 2_000,
        "connect_timeout_ms": 1_000,
        "max_retries": 2,
        "backoff_base_ms": 5,
        "backoff_max_ms": 20,
        "retry_after_cap_ms": 2_000,
    }
    values.update(overrides)
    return OpenRouterSettings(**values)


def request(
    directives: str = "",
    *,
    model: str = MODEL,
    max_tokens: int | None = None,
    **fields: Any,
) -> CompletionRequest:
    text = f"{PROMPT} {directives}".strip()
    return CompletionRequest(
        model=model,
        messages=(Message(Role.USER, text),),
        sampling=SamplingParams(max_tokens=max_tokens),
        **fields,
    )


async def drain(
    stream: AsyncIterator[StreamEvent], seen: list[StreamEvent] | None = None
) -> list[StreamEvent]:
    """Every event of a stream, appended to ``seen`` as it comes (kept if the stream fails)."""
    out = seen if seen is not None else []
    async for event in stream:
        out.append(event)
    return out


def content_words(events: Sequence[StreamEvent]) -> int:
    """Words of the streamed answer: the simulator sends one word a token, and the client
    may merge tokens that arrived together into one delta."""
    return len("".join(e.text for e in events if isinstance(e, ContentDelta)).split())


def deadline_in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig(expected_api_key=API_KEY)) as running:
        yield running


ClientFactory = Callable[..., OpenRouterClient]


@pytest.fixture
async def make_client(sim: RunningSimulator) -> AsyncIterator[ClientFactory]:
    """Started clients with per-test settings; all are closed at teardown."""
    clients: list[OpenRouterClient] = []

    def make(seed: int = 1, base_url: str | None = None, **overrides: Any) -> OpenRouterClient:
        client = OpenRouterClient(
            settings_for(base_url or sim.base_url, **overrides), rng=random.Random(seed)
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> OpenRouterClient:
    started = make_client()
    await started.start()
    return started
