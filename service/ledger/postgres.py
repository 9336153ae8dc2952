"""The ledger in PostgreSQL, for fleets: several replicas write to one database.

An asyncpg pool from a DSN. At start-up the schema is brought up to date by ordered migrations
recorded in ``ledger_schema_version``, under a transaction-scoped advisory lock so replicas
starting together migrate once. Batches go in with ``executemany`` inside one transaction.
Costs are ``numeric`` (exact), times ``timestamptz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Unpack

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.domain.cost_kinds import CostSplit
from service.domain.ports import GenerationStats
from service.domain.usage import (
    MEDIA_COUNT_FIELDS,
    TOOL_COUNT_FIELDS,
    ProviderTotals,
    RejectedCalls,
    UsageRecord,
    UsageTotals,
    cost_from_stats,
)
from service.ledger.batching import (
    COST_COLUMNS,
    COST_COLUMNS_V6,
    COST_SUMS,
    MEDIA_SUMS,
    RECORD_COLUMNS,
    STORED_COLUMNS,
    TOOL_SUMS,
    BatchingLedger,
    QueuePolicy,
    cost_values,
    read_costs,
    reconciled_costs,
    split_sums,
)

_MIGRATION_LOCK = 0x4C4C4D47_4C454447  # "LLMGLEDG": any constant unique to this schema
"""Advisory lock key that serialises schema migrations between replicas."""

# Version i + 1 is _MIGRATIONS[i]. Append only: a released migration never changes.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE usage_records (
            request_id         text PRIMARY KEY,
            time               timestamptz NOT NULL,
            caller_id          text NOT NULL,
            rpc                text NOT NULL,
            requested_model    text NOT NULL,
            status             text NOT NULL,
            end_user_id        text NOT NULL,
            served_model       text NOT NULL,
            provider           text NOT NULL,
            generation_id      text NOT NULL,
            prompt_tokens      bigint NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens  bigint NOT NULL CHECK (completion_tokens >= 0),
            reasoning_tokens   bigint NOT NULL CHECK (reasoning_tokens >= 0),
            cached_tokens      bigint NOT NULL CHECK (cached_tokens >= 0),
            cost_usd           numeric,
            latency_ms         bigint NOT NULL,
            ttft_ms            bigint,
            retries            integer NOT NULL,
            fallback_used      boolean NOT NULL,
            repair_used        boolean NOT NULL,
            cancelled          boolean NOT NULL,
            reconciled         boolean NOT NULL,
            reconcile_attempts integer NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX usage_records_caller_time ON usage_records (caller_id, time)",
        """
        CREATE INDEX usage_records_unreconciled
            ON usage_records (reconcile_attempts, time)
            WHERE NOT reconciled AND generation_id <> '' AND (cancelled OR cost_usd IS NULL)
        """,
    ),
    # 2: rows keyed by the gateway's call_id; the caller's request_id becomes a correlation
    # column. Rows written before get a random call_id of the same shape as new ones.
    (
        "ALTER TABLE usage_records ADD COLUMN call_id text",
        "UPDATE usage_records SET call_id = md5(random()::text || clock_timestamp()::text || "
        "request_id)",
        "ALTER TABLE usage_records ALTER COLUMN call_id SET NOT NULL",
        "ALTER TABLE usage_records DROP CONSTRAINT usage_records_pkey",
        "ALTER TABLE usage_records ADD PRIMARY KEY (call_id)",
        "CREATE INDEX usage_records_request_id ON usage_records (request_id)",
        # Calls refused before the caller was known, counted per minute, peer, RPC and reason
        # rather than one row each, so a flood of bad keys adds a bounded number of rows.
        """
        CREATE TABLE rejected_calls (
            minute  timestamptz NOT NULL,
            peer    text NOT NULL,
            rpc     text NOT NULL,
            reason  text NOT NULL,
            calls   bigint NOT NULL CHECK (calls > 0),
            PRIMARY KEY (minute, peer, rpc, reason)
        )
        """,
    ),
    # 3: media per row (tokens by modality, the caller's parts by kind with their bytes,
    # generated images, outputs the contract could not carry); rows before have zeros.
    (
        *(
            f"ALTER TABLE usage_records ADD COLUMN {name} bigint NOT NULL DEFAULT 0 "
            f"CHECK ({name} >= 0)"
            for name in MEDIA_COUNT_FIELDS
        ),
        "ALTER TABLE usage_records ADD COLUMN unsupported_kinds text NOT NULL DEFAULT ''",
    ),
    # 4: which caller policy applied to each row, and the rule an answer's provider broke.
    (
        "ALTER TABLE usage_records ADD COLUMN policy_id text NOT NULL DEFAULT ''",
        "ALTER TABLE usage_records ADD COLUMN policy_breach text NOT NULL DEFAULT ''",
    ),
    # 5: prompt caching and server tools per row (see sqlite.py's migration 5).
    (
        *(
            f"ALTER TABLE usage_records ADD COLUMN {name} bigint NOT NULL DEFAULT 0 "
            f"CHECK ({name} >= 0)"
            for name in TOOL_COUNT_FIELDS
        ),
        "ALTER TABLE usage_records ADD COLUMN upstream_cost_usd numeric",
        "ALTER TABLE usage_records ADD COLUMN tool_cost_usd numeric",
        "ALTER TABLE usage_records ADD COLUMN byok boolean NOT NULL DEFAULT false",
    ),
    # 6: the cost split by kind (see sqlite.py's migration 6).
    (
        *(f"ALTER TABLE usage_records ADD COLUMN {name} numeric" for name in COST_COLUMNS_V6),
        "UPDATE usage_records SET cost_other_usd = cost_usd WHERE cost_usd IS NOT NULL",
    ),
    # 7: the file-parser fees' kind (see sqlite.py's migration 7).
    ("ALTER TABLE usage_records ADD COLUMN cost_file_parser_usd numeric",),
)

_COLUMNS = ", ".join(STORED_COLUMNS)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(STORED_COLUMNS) + 1))
# Queries are composed from the constants above only, never from input: hence the noqa.
_INSERT = (
    f"INSERT INTO usage_records ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "  # noqa: S608
    "ON CONFLICT (call_id) DO NOTHING"
)
_COST_SUMS = COST_SUMS.format(sum="sum")
_TOTALS = f"""
    SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL), {MEDIA_SUMS},
           {TOOL_SUMS}, coalesce(sum(tool_cost_usd), 0), {_COST_SUMS}
    FROM usage_records WHERE caller_id = $1 AND time >= $2 AND time < $3
"""  # noqa: S608
_BY_PROVIDER = f"""
    SELECT provider, count(*), coalesce(sum(prompt_tokens), 0),
           coalesce(sum(completion_tokens), 0), coalesce(sum(cost_usd), 0), {_COST_SUMS}
    FROM usage_records WHERE caller_id = $1 AND time >= $2 AND time < $3
    GROUP BY provider ORDER BY provider
"""  # noqa: S608
_COUNT_REJECTED = """
    INSERT INTO rejected_calls (minute, peer, rpc, reason, calls) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (minute, peer, rpc, reason)
    DO UPDATE SET calls = rejected_calls.calls + excluded.calls
"""
_REJECTED = """
    SELECT minute, peer, rpc, reason, calls FROM rejected_calls
    WHERE minute >= $1 AND minute < $2 ORDER BY minute, peer, rpc, reason
"""
_UNRECONCILED = (
    f"SELECT {_COLUMNS} FROM usage_records "  # noqa: S608
    "WHERE NOT reconciled AND generation_id <> '' AND (cancelled OR cost_usd IS NULL) "
    "AND reconcile_attempts < $1 ORDER BY reconcile_attempts, time LIMIT $2"
)
_COST_SETS = ", ".join(f"{name} = ${i}" for i, name in enumerate(COST_COLUMNS, start=8))
_RECONCILE = f"""
    UPDATE usage_records
    SET prompt_tokens = $1, completion_tokens = $2, reasoning_tokens = $3, cached_tokens = $4,
        cost_usd = $5, served_model = CASE WHEN served_model = '' THEN $6 ELSE served_model END,
        reconciled = true, {_COST_SETS}
    WHERE call_id = $7
"""  # noqa: S608
_MISS = "UPDATE usage_records SET reconcile_attempts = reconcile_attempts + 1 WHERE call_id = $1"


# asyncpg binds every field as is (timestamptz, numeric, boolean): the row is the record's
# fields in RECORD_COLUMNS order, the same list _from_row reads back by name.
_FIELDS = attrgetter(*RECORD_COLUMNS)


def _to_row(record: UsageRecord) -> tuple[object, ...]:
    row: tuple[object, ...] = _FIELDS(record)
    return (*row, *cost_values(record))


def _from_row(row: asyncpg.Record) -> UsageRecord:
    fields = {column: row[column] for column in RECORD_COLUMNS}
    if fields["cost_usd"] is not None:
        fields["costs"] = read_costs([row[column] for column in COST_COLUMNS])
    return UsageRecord(**fields)


async def migrate(
    conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record],
) -> int:
    """Bring the schema up to date; returns the version it is at. Safe to run concurrently."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger_schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current: int = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM ledger_schema_version"
        )
        if current > len(_MIGRATIONS):
            raise RuntimeError(
                f"ledger schema version {current} is newer than this gateway knows "
                f"({len(_MIGRATIONS)}): refusing to write to it"
            )
        for version, statements in enumerate(_MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO ledger_schema_version (version) VALUES ($1)", version)
    return len(_MIGRATIONS)


class PostgresLedger(BatchingLedger):
    """A ledger in PostgreSQL; see ``BatchingLedger`` for the queueing policies."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        command_timeout_s: float = 10.0,
        **policy: Unpack[QueuePolicy],
    ) -> None:
        super().__init__(**policy)
        self._dsn = dsn
        self._pool_size = pool_size
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def totals(self, caller_id: str, since: datetime, until: datetime) -> UsageTotals:
        # One snapshot for both queries, so the split adds up to the totals.
        async with self._db().acquire() as conn, conn.transaction(isolation="repeatable_read"):
            row = await conn.fetchrow(_TOTALS, caller_id, since, until)
            providers = await conn.fetch(_BY_PROVIDER, caller_id, since, until)
        assert row is not None  # an aggregate without GROUP BY always returns one row
        requests, prompt, completion, cost, unknown, *rest = row
        kinds = len(COST_COLUMNS)
        media, tools = split_sums(rest[:-kinds])
        return UsageTotals(
            requests,
            int(prompt),
            int(completion),
            Decimal(cost),
            unknown,
            media,
            tools=tools,
            by_provider=tuple(
                ProviderTotals(name, n, int(p), int(c), Decimal(usd), read_costs(costs))
                for name, n, p, c, usd, *costs in providers
            ),
            costs=read_costs(rest[-kinds:]),
        )

    async def unreconciled(self, limit: int, *, max_attempts: int = 10) -> list[UsageRecord]:
        rows = await self._db().fetch(_UNRECONCILED, max_attempts, limit)
        return [_from_row(row) for row in rows]

    async def reconcile(
        self, call_id: str, stats: GenerationStats, costs: CostSplit | None = None
    ) -> bool:
        status = await self._db().execute(
            _RECONCILE,
            stats.prompt_tokens,
            stats.completion_tokens,
            stats.reasoning_tokens,
            stats.cached_tokens,
            cost_from_stats(stats),
            stats.model,
            call_id,
            *reconciled_costs(stats, costs),
        )
        return status != "UPDATE 0"

    async def note_reconcile_miss(self, call_id: str) -> None:
        await self._db().execute(_MISS, call_id)

    async def rejected(self, since: datetime, until: datetime) -> list[RejectedCalls]:
        rows = await self._db().fetch(_REJECTED, since, until)
        return [RejectedCalls(*row) for row in rows]

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            command_timeout=self._command_timeout_s,
        )
        try:
            async with self._pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def _close_backend(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _write_batch(
        self, batch: Sequence[UsageRecord], rejections: Sequence[RejectedCalls] = ()
    ) -> None:
        rows = [_to_row(record) for record in batch]
        counts = [(r.minute, r.peer, r.rpc, r.reason, r.calls) for r in rejections]
        pool = self._db()
        async with pool.acquire(timeout=self._command_timeout_s) as conn, conn.transaction():
            if rows:
                await conn.executemany(_INSERT, rows)
            if counts:
                await conn.executemany(_COUNT_REJECTED, counts)

    def _is_transient(self, exc: Exception) -> bool:
        # Connection trouble and server-side errors are worth retrying, except SQLSTATE
        # classes 22 (data exception; asyncpg raises it too for a value it cannot encode)
        # and 23 (integrity constraint violation), which are about the rows themselves.
        if isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
            return False
        return isinstance(
            exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.PostgresError
        )

    def _db(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("ledger not started")
        return self._pool
