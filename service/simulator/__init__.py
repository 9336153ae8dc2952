"""A loopback imitation of OpenRouter's HTTP API, for tests, offline demos and benchmarks.

Start it with ``async with run_simulator(SimulatorConfig()) as sim:`` and point a client
at ``sim.base_url``; choose faults per request with ``[[sim:...]]`` directives (see
``service.simulator.scenarios``) and assert on ``sim.state``.
"""

from __future__ import annotations

from .app import create_app, simulator_state
from .catalog import DEFAULT_CATALOG, Catalog, ModelInfo
from .config import SimulatorConfig
from .runner import RunningSimulator, run_simulator
from .state import DisconnectRecord, GenerationRecord, RecordedRequest, SimulatorState

__all__ = [
    "DEFAULT_CATALOG",
    "Catalog",
    "DisconnectRecord",
    "GenerationRecord",
    "ModelInfo",
    "RecordedRequest",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "create_app",
    "run_simulator",
    "simulator_state",
]
