"""What every simulator handler shares, and the typed app keys that hold it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from aiohttp import web

from .catalog import Catalog
from .config import SimulatorConfig
from .state import SimulatorState


@dataclass(frozen=True, slots=True)
class SimulatorContext:
    """Config, catalog and state of one app; `rng` makes ids, not content."""

    config: SimulatorConfig
    catalog: Catalog
    state: SimulatorState
    rng: random.Random = field(default_factory=random.Random)


CONTEXT_KEY = web.AppKey("simulator_context", SimulatorContext)
STATE_KEY = web.AppKey("simulator_state", SimulatorState)
