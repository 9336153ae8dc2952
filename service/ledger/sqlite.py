"""The default ledger: one SQLite file in WAL mode, written in batches off the event loop.

One dedicated thread owns the connection and runs every statement, so SQLite's threading rules
hold by construction and a cancelled ``await`` can never interleave two transactions. WAL with
``synchronous=NORMAL`` keeps every committed batch across a crash of the process (a power cut
may lose the last few); ``fsync_commits`` (``GATEWAY_LEDGER_DURABILITY=sync``) makes it
``FULL``: each commit is on the disk before it returns, across a power cut too. Times are
stored as integer microseconds since the epoch (UTC), costs as exact decimal text, summed
with a decimal aggregate rather than SQLite's float ``sum``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, Unpack, cast

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

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_OPEN_RETRY_S = 5.0
"""Opening a locked file is retried for at least this long (see ``SqliteLedger._connect``)."""

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version holds i).
# Append only: a released migration never changes.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE usage_records (
            request_id         TEXT PRIMARY KEY,
            time               INTEGER NOT NULL,  -- microseconds since the epoch, UTC
            caller_id          TEXT NOT NULL,
            rpc                TEXT NOT NULL,
            requested_model    TEXT NOT NULL,
            status             TEXT NOT NULL,
            end_user_id        TEXT NOT NULL,
            served_model       TEXT NOT NULL,
            provider           TEXT NOT NULL,
            generation_id      TEXT NOT NULL,
            prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
            reasoning_tokens   INTEGER NOT NULL CHECK (reasoning_tokens >= 0),
            cached_tokens      INTEGER NOT NULL CHECK (cached_tokens >= 0),
            cost_usd           TEXT,              -- exact decimal; NULL when unknown
            latency_ms         INTEGER NOT NULL,
            ttft_ms            INTEGER,
            retries            INTEGER NOT NULL,
            fallback_used      INTEGER NOT NULL,
            repair_used        INTEGER NOT NULL,
            cancelled          INTEGER NOT NULL,
            reconciled         INTEGER NOT NULL,
            reconcile_attempts INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX usage_records_caller_time ON usage_records (caller_id, time)",
        """
        CREATE INDEX usage_records_unreconciled
            ON usage_records (reconcile_attempts, time)
            WHERE reconciled = 0 AND generation_id <> '' AND (cancelled = 1 OR cost_usd IS NULL)
        """,
    ),
    # 2: rows keyed by the gateway's call_id; the caller's request_id becomes a correlation
    # column. SQLite cannot change a primary key in place, so the table is rebuilt; rows
    # written before get a random call_id of the same shape as new ones.
    (
        """
        CREATE TABLE usage_records_v2 (
            call_id            TEXT PRIMARY KEY,
            request_id         TEXT NOT NULL,
            time               INTEGER NOT NULL,  -- microseconds since the epoch, UTC
            caller_id          TEXT NOT NULL,
            rpc                TEXT NOT NULL,
            requested_model    TEXT NOT NULL,
            status             TEXT NOT NULL,
            end_user_id        TEXT NOT NULL,
            served_model       TEXT NOT NULL,
            provider           TEXT NOT NULL,
            generation_id      TEXT NOT NULL,
            prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
            reasoning_tokens   INTEGER NOT NULL CHECK (reasoning_tokens >= 0),
            cached_tokens      INTEGER NOT NULL CHECK (cached_tokens >= 0),
            cost_usd           TEXT,              -- exact decimal; NULL when unknown
            latency_ms         INTEGER NOT NULL,
            ttft_ms            INTEGER,
            retries            INTEGER NOT NULL,
            fallback_used      INTEGER NOT NULL,
            repair_used        INTEGER NOT NULL,
            cancelled          INTEGER NOT NULL,
            reconciled         INTEGER NOT NULL,
            reconcile_attempts INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        INSERT INTO usage_records_v2 (
            call_id, request_id, time, caller_id, rpc, requested_model, status, end_user_id,
            served_model, provider, generation_id, prompt_tokens, completion_tokens,
            reasoning_tokens, cached_tokens, cost_usd, latency_ms, ttft_ms, retries,
            fallback_used, repair_used, cancelled, reconciled, reconcile_attempts)
        SELECT
            lower(hex(randomblob(16))), request_id, time, caller_id, rpc, requested_model,
            status, end_user_id, served_model, provider, generation_id, prompt_tokens,
            completion_tokens, reasoning_tokens, cached_tokens, cost_usd, latency_ms, ttft_ms,
            retries, fallback_used, repair_used, cancelled, reconciled, reconcile_attempts
        FROM usage_records
        """,
        "DROP TABLE usage_records",
        "ALTER TABLE usage_records_v2 RENAME TO usage_records",
        "CREATE INDEX usage_records_caller_time ON usage_records (caller_id, time)",
        """
        CREATE INDEX usage_records_unreconciled
            ON usage_records (reconcile_attempts, time)
            WHERE reconciled = 0 AND generation_id <> '' AND (cancelled = 1 OR cost_usd IS NULL)
        """,
        "CREATE INDEX usage_records_request_id ON usage_records (request_id)",
        # Calls refused before the caller was known, counted per minute, peer, RPC and reason
        # rather than one row each, so a flood of bad keys adds a bounded number of rows.
        """
        CREATE TABLE rejected_calls (
            minute  INTEGER NOT NULL,  -- the minute's start, microseconds since the epoch, UTC
            peer    TEXT NOT NULL,     -- the peer's address without its port
            rpc     TEXT NOT NULL,
            reason  TEXT NOT NULL,     -- the ErrorInfo reason the calls got
            calls   INTEGER NOT NULL CHECK (calls > 0),
            PRIMARY KEY (minute, peer, rpc, reason)
        )
        """,
    ),
    # 3: media per row (tokens by modality, the caller's parts by kind with their bytes,
    # generated images, outputs the contract could not carry); rows before have zeros.
    (
        *(
            f"ALTER TABLE usage_records ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0 "
            f"CHECK ({name} >= 0)"
            for name in MEDIA_COUNT_FIELDS
        ),
        "ALTER TABLE usage_records ADD COLUMN unsupported_kinds TEXT NOT NULL DEFAULT ''",
    ),
    # 4: which caller policy applied to each row, and the rule an answer's provider broke.
    (
        "ALTER TABLE usage_records ADD COLUMN policy_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE usage_records ADD COLUMN policy_breach TEXT NOT NULL DEFAULT ''",
    ),
    # 5: prompt caching and server tools per row (cache-write tokens, searches, tool calls),
    # the provider's own cost, the tool fees (exact decimals) and BYOK; rows before: zeros.
    (
        *(
            f"ALTER TABLE usage_records ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0 "
            f"CHECK ({name} >= 0)"
            for name in TOOL_COUNT_FIELDS
        ),
        "ALTER TABLE usage_records ADD COLUMN upstream_cost_usd TEXT",
        "ALTER TABLE usage_records ADD COLUMN tool_cost_usd TEXT",
        "ALTER TABLE usage_records ADD COLUMN byok INTEGER NOT NULL DEFAULT 0",
    ),
    # 6: the cost split by kind (exact decimals, NULL for none of a kind). A row from before
    # keeps its cost, all of it unattributed (other): what it was spent on was not recorded.
    (
        *(f"ALTER TABLE usage_records ADD COLUMN {name} TEXT" for name in COST_COLUMNS_V6),
        "UPDATE usage_records SET cost_other_usd = cost_usd WHERE cost_usd IS NOT NULL",
    ),
    # 7: OpenRouter's file-parser fees as a kind of their own (before: other).
    ("ALTER TABLE usage_records ADD COLUMN cost_file_parser_usd TEXT",),
)

_COLUMNS = ", ".join(STORED_COLUMNS)
_PLACEHOLDERS = ", ".join("?" * len(STORED_COLUMNS))
# Queries are composed from the constants above only, never from input: hence the noqa.
_INSERT = (
    f"INSERT INTO usage_records ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "  # noqa: S608
    "ON CONFLICT (call_id) DO NOTHING"
)
_COST_SUMS = COST_SUMS.format(sum="decimal_sum")
_TOTALS = f"""
    SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           coalesce(decimal_sum(cost_usd), '0'), count(*) - count(cost_usd), {MEDIA_SUMS},
           {TOOL_SUMS}, coalesce(decimal_sum(tool_cost_usd), '0'), {_COST_SUMS}
    FROM usage_records WHERE caller_id = ? AND time >= ? AND time < ?
"""  # noqa: S608
_BY_PROVIDER = f"""
    SELECT provider, count(*), coalesce(sum(prompt_tokens), 0),
           coalesce(sum(completion_tokens), 0), coalesce(decimal_sum(cost_usd), '0'),
           {_COST_SUMS}
    FROM usage_records WHERE caller_id = ? AND time >= ? AND time < ?
    GROUP BY provider ORDER BY provider
"""  # noqa: S608
_COUNT_REJECTED = """
    INSERT INTO rejected_calls (minute, peer, rpc, reason, calls) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (minute, peer, rpc, reason) DO UPDATE SET calls = calls + excluded.calls
"""
_REJECTED = """
    SELECT minute, peer, rpc, reason, calls FROM rejected_calls
    WHERE minute >= ? AND minute < ? ORDER BY minute, peer, rpc, reason
"""
_UNRECONCILED = (
    f"SELECT {_COLUMNS} FROM usage_records "  # noqa: S608
    "WHERE reconciled = 0 AND generation_id <> '' AND (cancelled = 1 OR cost_usd IS NULL) "
    "AND reconcile_attempts < ? ORDER BY reconcile_attempts, time LIMIT ?"
)
_COST_SETS = ", ".join(f"{name} = ?" for name in COST_COLUMNS)
_RECONCILE = f"""
    UPDATE usage_records
    SET prompt_tokens = ?, completion_tokens = ?, reasoning_tokens = ?, cached_tokens = ?,
        cost_usd = ?, served_model = CASE WHEN served_model = '' THEN ? ELSE served_model END,
        reconciled = 1, {_COST_SETS}
    WHERE call_id = ?
"""  # noqa: S608
_MISS = "UPDATE usage_records SET reconcile_attempts = reconcile_attempts + 1 WHERE call_id = ?"


class _DecimalSum:
    """``decimal_sum(text)``: an exact sum of decimal strings (NULLs skipped), as text."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return str(self.total)


def _to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _to_row(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.call_id,
        record.request_id,
        _to_micros(record.time),
        record.caller_id,
        record.rpc,
        record.requested_model,
        record.status,
        record.end_user_id,
        record.served_model,
        record.provider,
        record.generation_id,
        record.prompt_tokens,
        record.completion_tokens,
        record.reasoning_tokens,
        record.cached_tokens,
        None if record.cost_usd is None else str(record.cost_usd),
        record.latency_ms,
        record.ttft_ms,
        record.retries,
        int(record.fallback_used),
        int(record.repair_used),
        int(record.cancelled),
        int(record.reconciled),
        *(getattr(record, name) for name in MEDIA_COUNT_FIELDS),
        record.unsupported_kinds,
        record.policy_id,
        record.policy_breach,
        *(getattr(record, name) for name in TOOL_COUNT_FIELDS),
        _decimal_text(record.upstream_cost_usd),
        _decimal_text(record.tool_cost_usd),
        int(record.byok),
        *(_decimal_text(amount) for amount in cost_values(record)),
    )


def _decimal_text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _from_row(row: Sequence[Any]) -> UsageRecord:
    fields = dict(zip(RECORD_COLUMNS, row[: len(RECORD_COLUMNS)], strict=True))
    fields["time"] = _EPOCH + fields["time"] * _MICROSECOND
    for name in ("cost_usd", "upstream_cost_usd", "tool_cost_usd"):
        amount = fields[name]
        fields[name] = None if amount is None else Decimal(amount)
    for flag in ("fallback_used", "repair_used", "cancelled", "reconciled", "byok"):
        fields[flag] = bool(fields[flag])
    if fields["cost_usd"] is not None:
        fields["costs"] = read_costs(row[len(RECORD_COLUMNS) :])
    return UsageRecord(**fields)


class SqliteLedger(BatchingLedger):
    """A ledger in one SQLite file; see ``BatchingLedger`` for the queueing policies."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        fsync_commits: bool = False,
        **policy: Unpack[QueuePolicy],
    ) -> None:
        super().__init__(**policy)
        self._path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = "FULL" if fsync_commits else "NORMAL"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- queries ---------------------------------------------------------------------------

    async def totals(self, caller_id: str, since: datetime, until: datetime) -> UsageTotals:
        params = (caller_id, _to_micros(since), _to_micros(until))

        def read() -> tuple[Any, list[Any]]:
            # One read transaction, so the split adds up to the totals.
            db = self._db()
            db.execute("BEGIN")
            try:
                return (
                    db.execute(_TOTALS, params).fetchone(),
                    db.execute(_BY_PROVIDER, params).fetchall(),
                )
            finally:
                db.execute("COMMIT")

        row, providers = await self._run(read)
        requests, prompt, completion, cost, unknown, *rest = row
        kinds = len(COST_COLUMNS)
        media, tools = split_sums(rest[:-kinds])
        return UsageTotals(
            requests,
            prompt,
            completion,
            Decimal(cost),
            unknown,
            media,
            tools=tools,
            by_provider=tuple(
                ProviderTotals(name, n, p, c, Decimal(usd), read_costs(costs))
                for name, n, p, c, usd, *costs in providers
            ),
            costs=read_costs(rest[-kinds:]),
        )

    async def unreconciled(self, limit: int, *, max_attempts: int = 10) -> list[UsageRecord]:
        rows = await self._run(
            lambda: self._db().execute(_UNRECONCILED, (max_attempts, limit)).fetchall()
        )
        return [_from_row(row) for row in rows]

    async def reconcile(
        self, call_id: str, stats: GenerationStats, costs: CostSplit | None = None
    ) -> bool:
        params = (
            stats.prompt_tokens,
            stats.completion_tokens,
            stats.reasoning_tokens,
            stats.cached_tokens,
            str(cost_from_stats(stats)),
            stats.model,
            *(_decimal_text(amount) for amount in reconciled_costs(stats, costs)),
            call_id,
        )
        updated = await self._run(lambda: self._db().execute(_RECONCILE, params).rowcount)
        return bool(updated)

    async def note_reconcile_miss(self, call_id: str) -> None:
        await self._run(lambda: self._db().execute(_MISS, (call_id,)))

    async def rejected(self, since: datetime, until: datetime) -> list[RejectedCalls]:
        params = (_to_micros(since), _to_micros(until))
        rows = await self._run(lambda: self._db().execute(_REJECTED, params).fetchall())
        return [
            RejectedCalls(_EPOCH + minute * _MICROSECOND, peer, rpc, reason, calls)
            for minute, peer, rpc, reason, calls in rows
        ]

    # --- backend ---------------------------------------------------------------------------

    async def _open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn = await self._run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        """Open, switch to WAL and migrate; several processes (``GATEWAY_WORKERS``) may do
        this at the same moment on a fresh file. Switching to WAL takes an exclusive lock
        that SQLite does not always wait for, so a locked database is retried here with
        backoff for as long as the busy timeout would have waited (at least a few seconds)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        give_up = time.monotonic() + max(self._busy_timeout_s, _OPEN_RETRY_S)
        pause = 0.01
        while True:
            try:
                return self._connect_once()
            except sqlite3.OperationalError as exc:
                if not _is_lock(exc) or time.monotonic() + pause > give_up:
                    raise
            time.sleep(pause)  # on the ledger's own thread, never the loop's
            pause = min(pause * 2, 0.25)

    def _connect_once(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write says BEGIN/COMMIT itself.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # The value is one of our two constants; PRAGMA takes no parameters.
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # typeshed wants int-valued aggregates; SQLite itself takes any value type.
            conn.create_aggregate("decimal_sum", 1, cast("Callable[[], Any]", _DecimalSum))
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _close_backend(self) -> None:
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=False)
        self._executor = None

    async def _write_batch(
        self, batch: Sequence[UsageRecord], rejections: Sequence[RejectedCalls] = ()
    ) -> None:
        await self._run(lambda: _insert(self._db(), batch, rejections))

    def _is_transient(self, exc: Exception) -> bool:
        # OperationalError: locked, busy, disk full, I/O error. Anything else is about the
        # rows (IntegrityError, OverflowError for an int beyond 64 bits, InterfaceError for a
        # type SQLite cannot bind …) and retrying the same rows cannot help.
        return isinstance(exc, sqlite3.OperationalError)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the ledger's own thread, the only one that touches the connection."""
        if self._executor is None:
            raise RuntimeError("ledger not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("ledger not started")
        return self._conn


def _is_lock(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


def _insert(
    conn: sqlite3.Connection, batch: Sequence[UsageRecord], rejections: Sequence[RejectedCalls]
) -> None:
    rows = [_to_row(record) for record in batch]
    counts = [(_to_micros(r.minute), r.peer, r.rpc, r.reason, r.calls) for r in rejections]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        if counts:
            conn.executemany(_COUNT_REJECTED, counts)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(_MIGRATIONS):
            raise RuntimeError(
                f"ledger schema version {version} is newer than this gateway knows "
                f"({len(_MIGRATIONS)}): refusing to write to it"
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
