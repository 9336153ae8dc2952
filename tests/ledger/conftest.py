"""Ledger fixtures: every store test body runs against SQLite and against PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.domain.usage import LedgerStore
from service.ledger import open_ledger


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a ledger lives; PostgreSQL is started only for the tests that use it."""
    if request.param == "sqlite":
        return tmp_path / "ledger" / "usage.db"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def open_store(ledger_target: str | Path) -> Callable[..., LedgerStore]:
    def opener(**options: Any) -> LedgerStore:
        return open_ledger(ledger_target, **options)

    return opener


@pytest.fixture
async def ledger(open_store: Callable[..., LedgerStore]) -> AsyncIterator[LedgerStore]:
    store = open_store()
    await store.start()
    try:
        yield store
    finally:
        await store.close()
