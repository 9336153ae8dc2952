"""The write path when the database refuses writes for a while: retry, then give up at close.

SQLite's own lock stands in for an unreachable database: another connection holding an
exclusive transaction makes every write fail with "database is locked".
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from service.ledger import SqliteLedger
from tests.ledger.records import T0, make_record


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "usage.db"


@pytest.fixture
def lock_holder(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


async def test_writes_are_retried_until_the_database_frees(
    db_path: Path, lock_holder: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteLedger(db_path, busy_timeout_s=0.01, retry_max_s=0.05)
    await store.start()
    lock_holder.execute("BEGIN EXCLUSIVE")
    for n in range(3):
        store.record(make_record(n))

    flushed = asyncio.create_task(store.flush())
    with caplog.at_level(logging.WARNING, logger="service.ledger"):
        done, _ = await asyncio.wait({flushed}, timeout=0.3)
    assert not done  # still retrying, nothing lost
    assert "retrying 3 record(s)" in caplog.text

    lock_holder.execute("ROLLBACK")
    await flushed
    counters = store.counters()
    assert (counters.written, counters.dropped) == (3, 0)
    assert (await store.totals("billing", T0, T0 + timedelta(hours=1))).requests == 3
    await store.close()


async def test_close_gives_up_after_its_timeout_and_counts_the_loss(
    db_path: Path, lock_holder: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteLedger(db_path, busy_timeout_s=0.01, retry_max_s=0.05, close_timeout_s=0.2)
    await store.start()
    lock_holder.execute("BEGIN EXCLUSIVE")
    for n in range(5):
        store.record(make_record(n))

    with caplog.at_level(logging.ERROR, logger="service.ledger"):
        async with asyncio.timeout(3):
            await store.close()

    counters = store.counters()
    assert (counters.written, counters.dropped, counters.pending) == (0, 5, 0)
    assert "5 usage record(s) were dropped" in caplog.text
