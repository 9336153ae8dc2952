"""Helpers for the accounting tests: a gateway whose finished RPCs can be awaited, and the
ledger's rows read back straight from SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc
from pydantic import AnyHttpUrl, SecretStr

from service.config import GatewaySettings, OpenRouterSettings
from service.domain.accounting import CallRecord
from service.domain.callers import Caller
from service.server import GatewayServer
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.harness import UPSTREAM_KEY, Harness, default_callers

Row = dict[str, Any]
Finished = tuple[CallRecord, grpc.StatusCode]


class FinishLog:
    """The server's ``on_finish`` hook: every RPC it finished, awaitable without sleeping.

    A client that cancels or whose deadline passes gives up before the server has finished
    the RPC; waiting for the hook is how a test knows the row has been handed to the ledger.
    """

    def __init__(self) -> None:
        self.calls: list[Finished] = []
        self._changed = asyncio.Event()

    def __call__(self, record: CallRecord, code: grpc.StatusCode) -> None:
        self.calls.append((record, code))
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, count: int, *, timeout: float = 5.0) -> list[Finished]:  # noqa: ASYNC109
        """The first ``count`` finished RPCs, waiting until the server has finished that many."""
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                await self._changed.wait()
        return self.calls[:count]


@dataclass
class AcctHarness(Harness):
    log: FinishLog = field(default_factory=FinishLog)

    async def rows_written(self, rpcs: int) -> None:
        """Return once the server has finished ``rpcs`` RPCs and their rows are written.

        A failed RPC's status reaches the client before its row is queued (``context.abort``
        sends it; the servicer's ``_close`` runs after), so a client that has seen the error
        cannot just flush the ledger: it waits for the finish hook first.
        """
        await self.log.wait_for(rpcs)
        await self.server.ledger.flush()


@asynccontextmanager
async def acct_gateway(
    ledger_path: Path,
    *,
    sim_config: SimulatorConfig | None = None,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
) -> AsyncIterator[AcctHarness]:
    """``tests.harness.start_gateway`` with the ledger in ``ledger_path`` (never the shared
    default file) and the finish hook a test can await."""
    async with (
        run_simulator(sim_config or SimulatorConfig(keepalive_comments=2)) as sim,
        serve_acct_gateway(
            sim, ledger_path, callers=callers, gateway=gateway, openrouter=openrouter
        ) as harness,
    ):
        yield harness


@asynccontextmanager
async def serve_acct_gateway(
    sim: RunningSimulator,
    ledger_path: Path,
    *,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
) -> AsyncIterator[AcctHarness]:
    """A gateway in front of a simulator the test runs (so two gateways can share one)."""
    or_settings = OpenRouterSettings(
        **{
            "api_key": SecretStr(UPSTREAM_KEY),
            "base_url": AnyHttpUrl(sim.base_url),
            "default_model": "openai/gpt-4o-mini",
            "timeout_ms": 10_000,
            "max_retries": 2,
            "backoff_base_ms": 10,
            "backoff_max_ms": 50,
            "retry_after_cap_ms": 2_000,
            **(openrouter or {}),
        }
    )
    gw_settings = GatewaySettings(
        **{"listen": "127.0.0.1:0", "ledger_path": ledger_path, **(gateway or {})}
    )
    log = FinishLog()
    server = GatewayServer(
        gw_settings,
        or_settings,
        list(callers if callers is not None else default_callers()),
        on_finish=log,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield AcctHarness(
                sim=sim,
                server=server,
                channel=channel,
                stub=pb_grpc.CompletionServiceStub(channel),
                finished=log.calls,
                log=log,
            )
    finally:
        await server.stop(0)


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
