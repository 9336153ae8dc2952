"""What differs between the SQL backends: schema versions, and PostgreSQL connections dying."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from service.ledger import PostgresLedger, SqliteLedger, postgres, sqlite
from tests.ledger.records import HOUR, T0, make_record
from tests.servers import PostgresServer


async def test_sqlite_schema_version_is_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    for _ in range(2):
        store = SqliteLedger(path)
        await store.start()
        await store.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(sqlite._MIGRATIONS),)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()

    store = SqliteLedger(path)
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await store.start()
    await store.close()


@pytest.fixture
def database(postgres_server: PostgresServer, postgres_dsn: str) -> str:
    return postgres_dsn.rsplit("/", 1)[1]


async def test_postgres_schema_version_is_recorded_once(
    postgres_server: PostgresServer, postgres_dsn: str, database: str
) -> None:
    for _ in range(2):
        store = PostgresLedger(postgres_dsn)
        await store.start()
        await store.close()

    versions = postgres_server.psql("SELECT version FROM ledger_schema_version", database)
    assert versions.split() == [str(v) for v in range(1, len(postgres._MIGRATIONS) + 1)]


async def test_postgres_refuses_a_newer_schema(
    postgres_server: PostgresServer, postgres_dsn: str, database: str
) -> None:
    store = PostgresLedger(postgres_dsn)
    await store.start()
    await store.close()
    postgres_server.psql("INSERT INTO ledger_schema_version (version) VALUES (99)", database)

    store = PostgresLedger(postgres_dsn)
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await store.start()
    await store.close()


async def test_postgres_writes_survive_killed_connections(
    postgres_server: PostgresServer,
    postgres_dsn: str,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = PostgresLedger(postgres_dsn)
    await store.start()
    store.record(make_record(0))
    await store.flush()  # the pool now holds a connection

    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        database,
    )
    for n in range(1, 4):
        store.record(make_record(n))
    with caplog.at_level(logging.WARNING, logger="service.ledger"):
        await store.flush()

    assert "retrying 3 record(s)" in caplog.text  # the pooled connection was dead

    counters = store.counters()
    assert (counters.written, counters.rejected, counters.dropped) == (4, 0, 0)
    assert (await store.totals("billing", T0 - HOUR, T0 + HOUR)).requests == 4
    await store.close()
