"""Client disconnects are noticed at once and recorded with a timestamp and token count."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from service.simulator import RunningSimulator, create_app, simulator_state
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"

# The gateway's tests assert it closes upstream within 100 ms; the simulator must notice
# well inside that budget for those assertions to mean anything.
NOTICE_BUDGET_S = 0.1


async def test_close_during_stream_hang_is_recorded(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("wait [[sim:hang]]", stream=True)
    resp = await session.post(CHAT, json=body)
    assert resp.status == 200
    generation_id = resp.headers["X-Generation-Id"]
    received = b""
    while received.count(b"\n\n") < 3:  # the keep-alive burst, then silence
        received += await resp.content.readany()
    assert [f.comment for f in parse_sse(received)] == ["OPENROUTER PROCESSING"] * 3

    closed_at = time.monotonic()
    resp.close()
    disconnect = await sim.state.wait_for_disconnect(timeout=2)

    assert disconnect.time - closed_at < NOTICE_BUDGET_S
    assert disconnect.time >= closed_at
    assert disconnect.phase == "hang"
    assert disconnect.streamed is True
    assert disconnect.tokens_sent == 0
    assert disconnect.generation_id == generation_id
    record = await sim.state.wait_for_request(lambda r: r.generation_id == generation_id)
    assert disconnect.request_id == record.id
    generation = sim.state.generations[generation_id]
    assert generation.cancelled is True
    assert generation.total_cost == 0


async def test_cancelled_unary_hang_is_recorded(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    task = asyncio.create_task(session.post(CHAT, json=chat_body("wait [[sim:hang]]")))
    # The handler records the request and reaches its wait without yielding in between.
    record = await sim.state.wait_for_request(lambda r: r.path == CHAT)
    cancelled_at = time.monotonic()
    task.cancel()
    disconnect = await sim.state.wait_for_disconnect(timeout=2)

    assert disconnect.time - cancelled_at < NOTICE_BUDGET_S
    assert disconnect.request_id == record.id
    assert disconnect.phase == "hang"
    assert disconnect.streamed is False
    assert task.cancelled()


async def test_close_mid_stream_records_tokens_sent_and_cancelled_generation(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("go [[sim:tokens=200]] [[sim:pace=5]]", stream=True)
    resp = await session.post(CHAT, json=body)
    generation_id = resp.headers["X-Generation-Id"]
    received = b""
    while received.count(b'"content":" ') < 3:
        received += await resp.content.readany()
    closed_at = time.monotonic()
    resp.close()
    disconnect = await sim.state.wait_for_disconnect(timeout=2)

    assert disconnect.time - closed_at < NOTICE_BUDGET_S
    assert disconnect.phase == "stream"
    assert 3 <= disconnect.tokens_sent < 200

    async with session.get("/api/v1/generation", params={"id": generation_id}) as lookup:
        assert lookup.status == 200
        data = (await lookup.json())["data"]
    assert data["id"] == generation_id
    assert data["cancelled"] is True
    assert data["streamed"] is True
    assert data["finish_reason"] is None
    assert data["tokens_completion"] == disconnect.tokens_sent
    model = sim.state.generations[generation_id]
    assert data["total_cost"] == model.total_cost > 0

    async with session.get("/_sim/disconnects") as listing:
        [recorded] = (await listing.json())["data"]
    assert recorded["generation_id"] == generation_id
    assert recorded["tokens_sent"] == disconnect.tokens_sent


async def test_close_during_delay_is_recorded(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    task = asyncio.create_task(session.post(CHAT, json=chat_body("slow [[sim:delay=5000]]")))
    await sim.state.wait_for_request(lambda r: r.path == CHAT)
    task.cancel()
    disconnect = await sim.state.wait_for_disconnect(timeout=2)
    assert disconnect.phase == "delay"


async def test_hang_disconnect_is_noticed_without_handler_cancellation() -> None:
    """Served by a plain AppRunner (aiohttp's default: no handler cancellation), the hang
    loop's transport check still notices the client leaving."""
    app = create_app()
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as client:
            url = f"http://127.0.0.1:{port}{CHAT}"
            resp = await client.post(url, json=chat_body("[[sim:hang]]", stream=True))
            await resp.content.readany()
            closed_at = time.monotonic()
            resp.close()
            disconnect = await simulator_state(app).wait_for_disconnect(timeout=2)
        assert disconnect.time - closed_at < NOTICE_BUDGET_S
        assert disconnect.phase == "hang"
    finally:
        await runner.cleanup()
