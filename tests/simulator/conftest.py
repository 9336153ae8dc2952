"""Fixtures: a real simulator on a loopback port and a real aiohttp client session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from service.simulator import RunningSimulator, SimulatorConfig, run_simulator


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig()) as running:
        yield running


@pytest.fixture
async def session(sim: RunningSimulator) -> AsyncIterator[aiohttp.ClientSession]:
    # Depends on `sim` so the client closes its connections before the server stops.
    headers = {"Authorization": "Bearer sk-or-v1-test-key"}
    async with aiohttp.ClientSession(base_url=sim.root_url, headers=headers) as client:
        yield client
