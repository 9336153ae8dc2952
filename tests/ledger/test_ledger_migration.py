"""A ledger written before rows had the gateway's own key opens, migrated in place, with its rows.

Schema version 1 keyed rows by the caller's request id. Each test builds a version-1 ledger
with version 1's own statements (a released migration never changes) and rows as that
gateway wrote them, then opens it with today's store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from service.domain.cost_kinds import CostKind, CostSplit
from service.ledger import PostgresLedger, SqliteLedger, postgres, sqlite
from service.ledger.batching import RECORD_COLUMNS
from tests.ledger.records import HOUR, T0, make_record

# Version 1's columns: the record's up to `reconciled` (later versions added the rest).
V1_COLUMNS = tuple(
    c for c in RECORD_COLUMNS[: RECORD_COLUMNS.index("reconciled") + 1] if c != "call_id"
)
OLD_ROWS = 3
NEW_SPLIT = CostSplit.of(
    {
        CostKind.PROMPT: Decimal("0.0000010"),
        CostKind.COMPLETION: Decimal("0.0000003"),
        CostKind.OTHER: Decimal("0.0000002"),
    }
)
"""The split of make_record's default cost (0.0000015) on the row written after migrating."""
"""Rows the version-1 gateway wrote: req-000000 … req-000002, 10 prompt tokens each."""


def v1_rows() -> Iterator[dict[str, object]]:
    for n in range(OLD_ROWS):
        record = make_record(n, cancelled=n == 2, cost_usd=None if n == 2 else Decimal("0.5"))
        yield {column: getattr(record, column) for column in V1_COLUMNS}


def make_v1_sqlite(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in sqlite._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        for row in v1_rows():
            row = dict(row)
            row["time"] = sqlite._to_micros(row["time"])  # type: ignore[arg-type]
            row["cost_usd"] = None if row["cost_usd"] is None else str(row["cost_usd"])
            for flag in ("fallback_used", "repair_used", "cancelled", "reconciled"):
                row[flag] = int(bool(row[flag]))
            conn.execute(
                f"INSERT INTO usage_records ({', '.join(row)}) "
                f"VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )


async def test_a_version_1_sqlite_ledger_keeps_its_rows_and_takes_new_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    make_v1_sqlite(path)

    store = SqliteLedger(path)
    await store.start()
    try:
        totals = await store.totals("billing", T0 - HOUR, T0 + HOUR)
        assert (totals.requests, totals.prompt_tokens) == (OLD_ROWS, 10 * OLD_ROWS)
        assert (totals.cost_usd, totals.unknown_cost_requests) == (Decimal("1.0"), 1)
        # Version 6's cost split: what old rows were spent on was not recorded.
        assert totals.costs == CostSplit.of({CostKind.OTHER: Decimal("1.0")})
        # The old cancelled row is still waiting for reconciliation, found by its new key.
        [pending] = await store.unreconciled(10)
        assert pending.request_id == "req-000002"
        assert len(pending.call_id) == 32

        # A new call reusing an old request id is a row of its own.
        store.record(make_record(100, request_id="req-000000", costs=NEW_SPLIT))
        await store.flush()
        totals = await store.totals("billing", T0 - HOUR, T0 + HOUR)
        assert totals.requests == OLD_ROWS + 1
        assert totals.costs == NEW_SPLIT + CostSplit.of({CostKind.OTHER: Decimal("1.0")})
    finally:
        await store.close()

    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(sqlite._MIGRATIONS),)
        call_ids = [row[0] for row in conn.execute("SELECT call_id FROM usage_records")]
        assert len(set(call_ids)) == OLD_ROWS + 1
        request_ids = sorted(r[0] for r in conn.execute("SELECT request_id FROM usage_records"))
        assert request_ids == ["req-000000", "req-000000", "req-000001", "req-000002"]
        # Version 3's media columns: zeros on the rows written before.
        media = conn.execute(
            "SELECT image_inputs, images_out, unsupported_kinds FROM usage_records"
        )
        assert set(media) == {(0, 0, "")}


@pytest.fixture
async def v1_postgres(postgres_dsn: str) -> str:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE ledger_schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for statement in postgres._MIGRATIONS[0]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO ledger_schema_version (version) VALUES (1)")
            for row in v1_rows():
                placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
                await conn.execute(
                    f"INSERT INTO usage_records ({', '.join(row)}) VALUES ({placeholders})",
                    *row.values(),
                )
    finally:
        await conn.close()
    return postgres_dsn


async def test_a_version_1_postgres_ledger_keeps_its_rows_and_takes_new_ones(
    v1_postgres: str,
) -> None:
    store = PostgresLedger(v1_postgres)
    await store.start()
    try:
        totals = await store.totals("billing", T0 - HOUR, T0 + HOUR)
        assert (totals.requests, totals.prompt_tokens) == (OLD_ROWS, 10 * OLD_ROWS)
        assert (totals.cost_usd, totals.unknown_cost_requests) == (Decimal("1.0"), 1)
        # Version 6's cost split: what old rows were spent on was not recorded.
        assert totals.costs == CostSplit.of({CostKind.OTHER: Decimal("1.0")})
        [pending] = await store.unreconciled(10)
        assert pending.request_id == "req-000002"
        assert len(pending.call_id) == 32

        store.record(make_record(100, request_id="req-000000", costs=NEW_SPLIT))
        await store.flush()
        totals = await store.totals("billing", T0 - HOUR, T0 + HOUR)
        assert totals.requests == OLD_ROWS + 1
        assert totals.costs == NEW_SPLIT + CostSplit.of({CostKind.OTHER: Decimal("1.0")})
    finally:
        await store.close()

    conn = await asyncpg.connect(v1_postgres)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM ledger_schema_version")]
        assert sorted(versions) == list(range(1, len(postgres._MIGRATIONS) + 1))
        call_ids = [r[0] for r in await conn.fetch("SELECT call_id FROM usage_records")]
        assert len(set(call_ids)) == OLD_ROWS + 1
        request_ids = sorted(r[0] for r in await conn.fetch("SELECT request_id FROM usage_records"))
        assert request_ids == ["req-000000", "req-000000", "req-000001", "req-000002"]
    finally:
        await conn.close()
