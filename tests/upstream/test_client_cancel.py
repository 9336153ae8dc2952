"""Cancellation closes the upstream connection at once (that is what stops billing)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.domain.completion import CallStats, ContentDelta, StreamEvent
from service.simulator import RunningSimulator
from service.upstream import OpenRouterClient

from .conftest import deadline_in, request

PROMPT_DISCONNECT_S = 0.1


@pytest.mark.parametrize(
    ("directive", "phase"),
    [("[[sim:hang]]", "hang"), ("[[sim:delay=5000]]", "delay")],
    ids=["upstream-hangs", "before-response-headers"],
)
async def test_cancel_unary_closes_the_connection(
    client: OpenRouterClient, sim: RunningSimulator, directive: str, phase: str
) -> None:
    task = asyncio.create_task(client.complete(request(directive), deadline=deadline_in(10)))
    await sim.state.wait_for_request(lambda r: r.path.endswith("/chat/completions"))
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    disconnect = await sim.state.wait_for_disconnect(timeout=2)
    assert disconnect.time - cancelled_at < PROMPT_DISCONNECT_S
    assert disconnect.phase == phase


async def test_cancel_stream_consumer_after_first_delta(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    first_delta = asyncio.Event()
    stats = CallStats()

    async def consume() -> None:
        async for event in client.stream(
            request("[[sim:pace=50]] [[sim:tokens=50]]"), deadline=deadline_in(10), stats=stats
        ):
            if isinstance(event, ContentDelta):
                first_delta.set()

    task = asyncio.create_task(consume())
    await first_delta.wait()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    disconnect = await sim.state.wait_for_disconnect(timeout=2)
    assert disconnect.time - cancelled_at < PROMPT_DISCONNECT_S
    assert disconnect.streamed
    assert disconnect.tokens_sent < 5
    assert stats.relayed
    assert stats.attempts == 1
    generation = await sim.state.wait_for_generation(stats.generation_id)
    assert generation.cancelled


async def test_aclose_stream_after_first_delta(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    stream = client.stream(request("[[sim:pace=50]] [[sim:tokens=50]]"), deadline=deadline_in(10))
    assert hasattr(stream, "aclose")
    seen: list[StreamEvent] = []
    async for event in stream:
        seen.append(event)
        if isinstance(event, ContentDelta):
            break
    closed_at = time.monotonic()
    await stream.aclose()
    disconnect = await sim.state.wait_for_disconnect(timeout=2)
    assert disconnect.time - closed_at < PROMPT_DISCONNECT_S


async def test_pool_is_reused_after_clean_calls(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    # Whole answers give their connection back; a finished stream too (or closes it): either
    # way nothing is left half-read, which filterwarnings=error would surface at teardown.
    for _ in range(3):
        await client.complete(request("[[sim:tokens=2]]"), deadline=deadline_in(5))
        async for _event in client.stream(request("[[sim:tokens=2]]"), deadline=deadline_in(5)):
            pass
    assert sim.state.disconnects == []
