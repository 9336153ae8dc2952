"""Usage ledger stores: a SQLite file (the default) or PostgreSQL (for a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from service.config import needs_extra
from service.domain.usage import LedgerStore
from service.ledger.batching import QueuePolicy
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
    target: str | Path, *, fsync_commits: bool = False, **policy: Unpack[QueuePolicy]
) -> LedgerStore:
    """A ledger store, not yet started (``await store.start()``).

    ``target`` is a PostgreSQL DSN (``postgresql://…`` or ``postgres://…``) or else the path
    of a SQLite file, created with its directory if missing. ``policy`` sets the write path's
    knobs (``BatchingLedger``), e.g. ``linger_s``: how long the writer waits for a batch to
    fill before writing what it has (``flush`` never waits). ``fsync_commits``: a SQLite
    commit returns once it is on the disk (PostgreSQL's commits are, by its own default).
    """
    if isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES):
        with needs_extra("postgres", "the PostgreSQL ledger (GATEWAY_LEDGER_DSN)"):
            from service.ledger.postgres import PostgresLedger
        return PostgresLedger(target, **policy)
    return SqliteLedger(target, fsync_commits=fsync_commits, **policy)
