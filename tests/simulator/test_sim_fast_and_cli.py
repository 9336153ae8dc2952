"""Fast (benchmark) mode, the `/_sim` endpoints and the command line entry point."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fast_sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig(fast=True)) as running:
        yield running


async def test_fast_mode_streams_without_keepalives_and_counts_only(
    fast_sim: RunningSimulator,
) -> None:
    headers = {"Authorization": "Bearer k"}
    async with aiohttp.ClientSession(base_url=fast_sim.root_url, headers=headers) as client:
        body = chat_body("bench", model="openrouter/sim-fast", stream=True)
        for _ in range(3):
            async with client.post(CHAT, json=body) as resp:
                frames = parse_sse(await resp.read())
        assert all(f.comment is None for f in frames)
        assert frames[-1].data == "[DONE]"
        assert frames[-2].json()["usage"]["completion_tokens"] == 24

        # Directives still work when present.
        async with client.post(
            CHAT, json=chat_body("[[sim:error=429]] [[sim:retry-after=0]]")
        ) as resp:
            assert resp.status == 429

    assert fast_sim.state.request_count == 4
    assert fast_sim.state.requests == []


async def test_sim_endpoints_list_and_reset(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=chat_body("hi")) as resp:
        generation_id = resp.headers["X-Generation-Id"]
    async with session.get("/_sim/requests") as resp:
        listing = await resp.json()
    assert listing["count"] == 1
    [record] = listing["data"]
    assert record["path"] == CHAT
    assert record["method"] == "POST"
    assert record["generation_id"] == generation_id
    assert record["headers"]["content-type"] == "application/json"
    assert isinstance(record["time"], float)
    async with session.get("/_sim/generations") as resp:
        assert [g["id"] for g in (await resp.json())["data"]] == [generation_id]

    async with session.post("/_sim/reset") as resp:
        assert await resp.json() == {"ok": True}
    assert sim.state.requests == []
    assert sim.state.generations == {}
    assert sim.state.request_count == 0


async def test_command_line_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.simulator",
        "--port",
        "0",
        "--fast",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/api/v1")
        assert not base_url.endswith(":0/api/v1")
        async with aiohttp.ClientSession() as client, client.get(f"{base_url}/models") as resp:
            assert resp.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
