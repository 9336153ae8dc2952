"""Helpers for the surface tests (embeddings, server tools, caching, JSON mode, the catalog)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from service.simulator import RunningSimulator
from service.simulator.state import RecordedRequest
from tests.harness import rich_error

EMBED_PATH = "/api/v1/embeddings"
EMBED_MODEL = "openai/text-embedding-3-small"
VL_EMBED_MODEL = "nvidia/llama-nemotron-embed-vl-1b-v2"


def embed_requests(sim: RunningSimulator) -> list[RecordedRequest]:
    return [r for r in sim.state.requests if r.path == EMBED_PATH]


def norm(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage_records ORDER BY time")]


def exact(value: float) -> Decimal:
    """An amount as OpenRouter wrote it (``Decimal(float)`` would not give it back)."""
    return Decimal(repr(value))


def quota_outcome(outcome: object) -> grpc.StatusCode:
    """OK, or the code of a call the budget refused; any other failure fails the test."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        error = rich_error(outcome)
        assert error.info.reason == "QUOTA_EXCEEDED", error.message
        return error.code
    assert not isinstance(outcome, BaseException), outcome
    return grpc.StatusCode.OK
