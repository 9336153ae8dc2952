"""Run the simulator on loopback for the length of an `async with` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from .app import API_PREFIX, create_app, simulator_state
from .catalog import Catalog
from .config import SimulatorConfig
from .state import SimulatorState


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator listening on `host:port`; point an OpenRouter client at `base_url`."""

    app: web.Application
    host: str
    port: int

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenRouter-style base URL, ending in /api/v1."""
        return f"{self.root_url}{API_PREFIX}"

    @property
    def state(self) -> SimulatorState:
        return simulator_state(self.app)


@asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    catalog: Catalog | None = None,
    shutdown_timeout: float = 1.0,
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator app until the block exits (port 0 picks a free port).

    Handlers still running at exit (a hang nobody closed) are cancelled after
    `shutdown_timeout` seconds.
    """
    app = create_app(config, catalog=catalog)
    # aiohttp >= 3.9 no longer cancels handlers when the client goes away; the simulator
    # relies on that cancellation to notice and timestamp disconnects precisely.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningSimulator(app=app, host=host, port=bound_port)
    finally:
        await runner.cleanup()
