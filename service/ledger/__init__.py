"""Usage ledger stores: a SQLite file (the default) or PostgreSQL (for a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from service.config import needs_extra
from service.domain.usage import LedgerStore
from service.ledger.sqlite import SqliteLedger

if TYPE_CHECKING:
    from service.ledger.postgres import PostgresLedger

__all__ = ["PostgresLedger", "SqliteLedger", "open_ledger"]


def __getattr__(name: str) -> object:
    # PostgresLedger needs asyncpg (the 'postgres' extra): imported only when asked for.
    if name == "PostgresLedger":
        from service.ledger.postgres import PostgresLedger

        return PostgresLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_ledger(
    target: str | Path,
    *,
    max_pending: int = 100_000,
    batch_size: int = 500,
    linger_s: float = 0.05,
    close_timeout_s: float = 10.0,
) -> LedgerStore:
    """A ledger store, not yet started (``await store.start()``).

    ``target`` is a PostgreSQL DSN (``postgresql://…`` or ``postgres://…``) or else the path
    of a SQLite file, created with its directory if missing. ``linger_s`` is how long the
    writer waits for a batch to fill before writing what it has (``flush`` never waits).
    """
    if isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES):
        with needs_extra("postgres", "the PostgreSQL ledger (GATEWAY_LEDGER_DSN)"):
            from service.ledger.postgres import PostgresLedger
        return PostgresLedger(
            target,
            max_pending=max_pending,
            batch_size=batch_size,
            linger_s=linger_s,
            close_timeout_s=close_timeout_s,
        )
    return SqliteLedger(
        target,
        max_pending=max_pending,
        batch_size=batch_size,
        linger_s=linger_s,
        close_timeout_s=close_timeout_s,
    )
