"""Garbage-collector settings for a long-running server process.

CPython starts a young-generation collection every 700 net allocations of container objects,
and every tenth of those also scans the middle generation. A gateway call allocates a few
thousand such objects (protobuf wrappers, aiohttp's request and response, span attributes),
so the collector ran several times per call and, through the middle generation, kept walking
the long-lived objects of gRPC, OpenTelemetry and pydantic: ~1 ms of CPU per call in
``make bench``. Almost nothing a call allocates is cyclic garbage (it is freed by reference
counting as the call ends), so collecting far less often costs little memory.

``gc.freeze()`` after start-up moves everything imported and built so far (modules, the
catalog, compiled schemas, the telemetry pipeline) into a permanent generation that full
collections no longer scan.
"""

from __future__ import annotations

import gc

# The older generations keep CPython's own ratios (10, 10): a full collection stays rare.
_OLDER_GENERATIONS = (10, 10)


def tune(young_threshold: int) -> None:
    """Collect the young generation every ``young_threshold`` allocations (0: leave as is)."""
    if young_threshold > 0:
        gc.set_threshold(young_threshold, *_OLDER_GENERATIONS)


def freeze_startup_objects() -> None:
    """Called once the server is serving: start-up's objects are never scanned again."""
    gc.collect()
    gc.freeze()
