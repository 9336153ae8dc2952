"""Helpers for the accounting tests: a gateway with its ledger at a known path, and the
ledger's rows read back straight from SQLite or PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from service.domain.accounting import CallRecord
from service.domain.callers import Caller
from service.simulator import SimulatorConfig, run_simulator
from tests.harness import Harness, serve_gateway_with_ledger

Row = dict[str, Any]
Finished = tuple[CallRecord, grpc.StatusCode]


@asynccontextmanager
async def acct_gateway(
    ledger_path: Path,
    *,
    sim_config: SimulatorConfig | None = None,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    """``tests.harness.start_gateway`` with the ledger in ``ledger_path``, to read it back."""
    async with (
        run_simulator(sim_config or SimulatorConfig(keepalive_comments=2)) as sim,
        serve_gateway_with_ledger(
            sim, ledger_path, callers=callers, gateway=gateway, openrouter=openrouter
        ) as harness,
    ):
        yield harness


# --- reading the ledger back ---------------------------------------------------------------


def sqlite_rows(path: Path) -> list[Row]:
    """Every row of the SQLite ledger, read through a read-only connection of our own."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage_records")]


async def postgres_rows(dsn: str) -> list[Row]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(row) for row in await conn.fetch("SELECT * FROM usage_records")]
    finally:
        await conn.close()


def by_request_id(rows: Iterable[Row]) -> dict[str, Row]:
    found: dict[str, Row] = {}
    for row in rows:
        assert row["request_id"] not in found, f"two rows for {row['request_id']}"
        found[row["request_id"]] = row
    return found


def assert_no_secrets(rows: Iterable[Row], secrets: Iterable[str]) -> None:
    """No secret in any column of any row, whatever the column's type."""
    secrets = tuple(secrets)
    for row in rows:
        for column, value in row.items():
            for secret in secrets:
                assert secret not in str(value), f"{secret!r} in column {column}"


def assert_files_free_of(database: Path, secrets: Iterable[str]) -> None:
    """No secret anywhere in the SQLite files (database, WAL), whatever table it hid in."""
    for path in database.parent.glob(f"{database.name}*"):
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} in {path.name}"
