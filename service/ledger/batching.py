"""The write path shared by the SQL ledger stores: a bounded queue drained in batches.

``record`` appends to an in-memory queue and returns at once, so the request path never waits
on the database. One writer task takes up to ``batch_size`` queued records and writes them in
one transaction. After the first record of a batch arrives it lingers (``linger_s``, 50 ms by
default) until either a full batch is queued or the linger has passed: at moderate load this
turns one transaction (and one thread hand-off, for SQLite) per RPC into one per few dozen.
``flush()`` and ``close()`` never wait for the linger. Policies:

* **Queue full** (``max_pending`` records waiting): ``record`` drops the record, counts it in
  ``counters().dropped`` and logs an error (rate-limited, with the running count), because a
  ledger must not lose rows silently. ``record_async`` waits for room instead (backpressure).
* **Database unreachable** (an error the backend calls transient: connection lost, database
  locked, disk full …): the same batch is retried with exponential backoff (50 ms doubling
  to ``retry_max_s``); records keep queueing meanwhile. Inserts ignore a call id already
  present (the key the gateway gave the RPC, never a caller's request id), so a retry after
  an unknown commit outcome cannot count a call twice.
* **A bad row** (any other error, e.g. an integer out of range): the batch's transaction
  rolls back whole, then its rows are written one per transaction, so the good rows land
  and only the bad one is rejected (counted, logged with its call id).
* **close()** writes everything queued before it; if the database stays unreachable past
  ``close_timeout_s`` the rest is dropped, counted and logged.

Calls refused before their caller was known are not records: ``count_rejected`` adds one to
an in-memory count per (minute, peer, RPC, reason), and the writer adds those counts to
their rows in the same transaction as its next batch (an upsert, so a retry after an unknown
commit outcome can count such calls twice; they bill nobody). At most
``max_rejection_keys`` distinct keys are held between two writes; further peers count under
``*``, so a flood from many addresses stays bounded in memory and rows.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

from service.domain.cost_kinds import COST_KINDS, CostKind, CostSplit
from service.domain.ports import GenerationStats
from service.domain.usage import (
    MEDIA_COUNT_FIELDS,
    TOOL_COUNT_FIELDS,
    LedgerCounters,
    MediaTotals,
    RejectedCalls,
    ToolTotals,
    UsageRecord,
    UsageTotals,
    cost_from_stats,
)

_log = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.05
_OTHER_PEERS = "*"

RECORD_COLUMNS = (
    "call_id",
    "request_id",
    "time",
    "caller_id",
    "rpc",
    "requested_model",
    "status",
    "end_user_id",
    "served_model",
    "provider",
    "generation_id",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "retries",
    "fallback_used",
    "repair_used",
    "cancelled",
    "reconciled",
    *MEDIA_COUNT_FIELDS,
    "unsupported_kinds",
    "policy_id",
    "policy_breach",
    *TOOL_COUNT_FIELDS,
    "upstream_cost_usd",
    "tool_cost_usd",
    "byok",
)
"""A usage record's columns in both SQL stores, in the order of their row tuples (its cost
split by kind follows them, in ``COST_COLUMNS``)."""
COST_COLUMNS = tuple(f"cost_{kind}_usd" for kind in COST_KINDS)
"""The row's cost by kind (``UsageRecord.costs``): exact decimals, NULL where the kind cost
nothing or the cost is unknown."""
COST_COLUMNS_V6 = COST_COLUMNS[: COST_COLUMNS.index("cost_other_usd") + 1]
"""The cost columns schema version 6 added (the kinds after ``OTHER`` came later)."""
STORED_COLUMNS = (*RECORD_COLUMNS, *COST_COLUMNS)
"""Every column a row is written with and read back from."""
COST_SUMS = ", ".join(f"{{sum}}({name})" for name in COST_COLUMNS)
"""The cost kinds' sums, in ``COST_KINDS`` order; ``{sum}`` is the store's exact sum."""
MEDIA_SUMS = ", ".join(f"coalesce(sum({name}), 0)" for name in MEDIA_COUNT_FIELDS)
"""The media counters' sums, in ``MediaTotals`` order, for the stores' totals queries."""
TOOL_SUMS = ", ".join(f"coalesce(sum({name}), 0)" for name in ("cached_tokens", *TOOL_COUNT_FIELDS))
"""The cache and tool counters' sums, in ``ToolTotals`` order (the fees come after them)."""


def cost_values(record: UsageRecord) -> tuple[Decimal | None, ...]:
    """The record's cost by kind, in ``COST_COLUMNS`` order (None: nothing of that kind)."""
    costs = dict(record.costs.parts) if record.costs is not None else {}
    return tuple(costs.get(kind) for kind in COST_KINDS)


def reconciled_costs(stats: GenerationStats, costs: CostSplit | None) -> tuple[Decimal | None, ...]:
    """The cost columns of a row reconciled with ``stats``: ``costs`` (the reconciler's split
    of OpenRouter's cost), or all of the cost ``OTHER`` when it has none that sums to it."""
    cost = cost_from_stats(stats)
    if costs is None or costs.total != cost:
        costs = CostSplit.of({CostKind.OTHER: cost})
    return tuple(costs.get(kind) or None for kind in COST_KINDS)


def read_costs(values: Sequence[Any]) -> CostSplit:
    """``COST_COLUMNS`` of a row, or ``COST_SUMS`` of rows, read back (NULL: none of a kind)."""
    return CostSplit.of(
        {kind: Decimal(value) for kind, value in zip(COST_KINDS, values, strict=True) if value}
    )


def split_sums(values: Sequence[Any]) -> tuple[MediaTotals, ToolTotals]:
    """A totals row's tail: the media sums, then the cache and tool sums and the tool fees."""
    media = len(MEDIA_COUNT_FIELDS)
    tools = media + 1 + len(TOOL_COUNT_FIELDS)
    reads, writes, searches, calls = (int(v) for v in values[media:tools])
    return (
        MediaTotals(*(int(v) for v in values[:media])),
        ToolTotals(reads, writes, searches, calls, Decimal(values[tools])),
    )


class QueuePolicy(TypedDict, total=False):
    """``BatchingLedger``'s queueing knobs, passed through by each backend's constructor (the
    defaults live in ``BatchingLedger.__init__`` only)."""

    max_pending: int
    batch_size: int
    linger_s: float
    close_timeout_s: float
    retry_max_s: float
    warn_interval_s: float
    max_rejection_keys: int


class BatchingLedger(abc.ABC):
    """Queue, writer task, flush and close; subclasses write batches and answer queries."""

    def __init__(
        self,
        *,
        max_pending: int = 100_000,
        batch_size: int = 500,
        linger_s: float = 0.05,
        close_timeout_s: float = 10.0,
        retry_max_s: float = 5.0,
        warn_interval_s: float = 10.0,
        max_rejection_keys: int = 10_000,
    ) -> None:
        if max_pending < 1 or batch_size < 1 or max_rejection_keys < 1:
            raise ValueError("max_pending and batch_size must be positive")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._close_timeout_s = close_timeout_s
        self._retry_max_s = retry_max_s
        self._warn_interval_s = warn_interval_s
        # A plain deque rather than an asyncio.Queue: record() runs once per RPC, and a
        # Queue's put wakes a getter future every time. Here record() only appends, and sets
        # _wakeup only once the queue reaches _wake_at, the length the writer is waiting for:
        # 1 when it is idle, batch_size while it lingers, never while it writes.
        self._pending: deque[UsageRecord] = deque()
        self._wakeup = asyncio.Event()
        self._wake_at = sys.maxsize
        self._room = asyncio.Event()
        self._abandon = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._enqueued = 0
        self._processed = 0
        self._written = 0
        self._rejected = 0
        self._dropped = 0
        self._flushers: list[tuple[int, asyncio.Future[None]]] = []
        self._last_warning: dict[str, float] = {}
        self._rejections: dict[tuple[datetime, str, str, str], int] = {}
        self._max_rejection_keys = max_rejection_keys

    # --- the store interface -------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None:
            raise RuntimeError("ledger already started")
        await self._open()
        self._writer = asyncio.create_task(self._run_writer(), name="ledger-writer")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._room.set()  # record_async callers waiting for room: they will find it closed
        writer = self._writer
        if writer is not None:
            # The writer drains the queue without lingering once it sees _closing, then ends.
            self._wakeup.set()
            try:
                async with asyncio.timeout(self._close_timeout_s):
                    await asyncio.shield(writer)
            except TimeoutError:
                # The writer stops retrying after its current attempt and drops what is left.
                self._abandon.set()
                await writer
        else:
            never_written = len(self._pending)
            self._pending.clear()
            self._processed += never_written
            self._drop(never_written, "closed", "ledger closed without being started")
        for _, waiter in self._flushers:
            if not waiter.done():
                waiter.set_exception(RuntimeError("ledger closed before the records were written"))
        self._flushers.clear()
        if self._dropped:
            _log.error("ledger closed: %d usage record(s) were dropped in all", self._dropped)
        await self._close_backend()

    def record(self, record: UsageRecord) -> None:
        # On the request path: O(1), no task, future or timer per record.
        pending = self._pending
        if self._closing:
            self._drop(1, "closed", "ledger is closed")
        elif len(pending) >= self._max_pending:
            self._drop(1, "full", f"ledger queue is full ({self._max_pending} records)")
        else:
            pending.append(record)
            self._enqueued += 1
            if len(pending) >= self._wake_at:
                self._wake_at = sys.maxsize  # one wake-up is enough
                self._wakeup.set()

    def count_rejected(self, at: datetime, peer: str, rpc: str, reason: str) -> None:
        # On the request path of every refused call: one dict update.
        if self._closing:
            self._drop(1, "closed", "ledger is closed")
            return
        rejections = self._rejections
        key = (at.replace(second=0, microsecond=0), peer, rpc, reason)
        if key not in rejections and len(rejections) >= self._max_rejection_keys:
            key = (key[0], _OTHER_PEERS, rpc, reason)
        rejections[key] = rejections.get(key, 0) + 1
        self._enqueued += 1
        if self._wake_at == 1:  # the writer is idle; while it lingers it takes these too
            self._wake_at = sys.maxsize
            self._wakeup.set()

    async def record_async(self, record: UsageRecord) -> None:
        while len(self._pending) >= self._max_pending and not self._closing:
            self._room.clear()
            await self._room.wait()
        self.record(record)

    async def flush(self) -> None:
        if self._writer is None:
            raise RuntimeError("ledger not started")
        await self._written_up_to(self._enqueued)

    def commit(self, record: UsageRecord) -> asyncio.Future[None]:
        self.record(record)
        return self._written_up_to(self._enqueued)

    def _written_up_to(self, target: int) -> asyncio.Future[None]:
        """Done once the writer has processed the first ``target`` enqueued entries."""
        waiter = asyncio.get_running_loop().create_future()
        if self._processed >= target:
            waiter.set_result(None)
        else:
            self._flushers.append((target, waiter))
            self._wakeup.set()  # a lingering writer writes at once while anyone waits
        return waiter

    def counters(self) -> LedgerCounters:
        return LedgerCounters(
            written=self._written,
            rejected=self._rejected,
            dropped=self._dropped,
            pending=self._enqueued - self._processed,
        )

    @abc.abstractmethod
    async def totals(self, caller_id: str, since: datetime, until: datetime) -> UsageTotals: ...

    @abc.abstractmethod
    async def unreconciled(self, limit: int, *, max_attempts: int = 10) -> list[UsageRecord]: ...

    @abc.abstractmethod
    async def reconcile(
        self, call_id: str, stats: GenerationStats, costs: CostSplit | None = None
    ) -> bool: ...

    @abc.abstractmethod
    async def note_reconcile_miss(self, call_id: str) -> None: ...

    @abc.abstractmethod
    async def rejected(self, since: datetime, until: datetime) -> list[RejectedCalls]: ...

    # --- what a backend provides ---------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def _close_backend(self) -> None: ...

    @abc.abstractmethod
    async def _write_batch(
        self, batch: Sequence[UsageRecord], rejections: Sequence[RejectedCalls] = ()
    ) -> None:
        """Insert the records and add the rejected-call counts to their rows, in one
        transaction: all of it, or none and raise."""

    @abc.abstractmethod
    def _is_transient(self, exc: Exception) -> bool:
        """Whether the same rows may be written later (the database, not the data, failed)."""

    # --- the writer ----------------------------------------------------------------------

    async def _run_writer(self) -> None:
        pending = self._pending
        while True:
            if not pending and not self._rejections:
                if self._closing:
                    return
                await self._wait(1, None)
                continue
            if (
                len(pending) < self._batch_size
                and self._linger_s > 0
                and not self._closing
                and not self._flushers
            ):
                # Let more records join this batch: up to a full batch or the linger,
                # whichever comes first; flush() and close() cut it short.
                await self._wait(self._batch_size, self._linger_s)
            batch = [pending.popleft() for _ in range(min(len(pending), self._batch_size))]
            rejections = self._take_rejections()
            self._room.set()
            await self._persist(batch, rejections)
            self._processed += len(batch) + sum(r.calls for r in rejections)
            self._wake_flushers()
            if self._abandon.is_set():
                left = len(pending) + sum(self._rejections.values())
                pending.clear()
                self._rejections.clear()
                self._processed += left
                self._drop(left, "abandoned", "database unreachable at shutdown")
                return

    def _take_rejections(self) -> list[RejectedCalls]:
        if not self._rejections:
            return []
        taken, self._rejections = self._rejections, {}
        return [
            RejectedCalls(minute, peer, rpc, reason, calls)
            for (minute, peer, rpc, reason), calls in taken.items()
        ]

    async def _wait(self, wake_at: int, timeout_s: float | None) -> None:
        """Sleep until ``wake_at`` records are queued, a flush or close, or the timeout.

        The caller has just checked that none of these holds yet (nothing runs in between),
        so a wake-up left over from before is stale and cleared."""
        self._wakeup.clear()
        self._wake_at = wake_at
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wakeup.wait()
        finally:
            self._wake_at = sys.maxsize  # writing: record() need not wake anyone

    async def _persist(
        self, batch: list[UsageRecord], rejections: Sequence[RejectedCalls] = ()
    ) -> None:
        delay = _RETRY_INITIAL_S
        while True:
            try:
                await self._write_batch(batch, rejections)
            except Exception as exc:
                if not self._is_transient(exc):
                    if batch:
                        await self._isolate(batch, exc)
                    if rejections:
                        if batch:
                            # The counts go on in a transaction of their own.
                            await self._persist([], rejections)
                        else:
                            self._reject_counts(rejections, exc)
                    return
                if self._abandon.is_set():
                    lost = len(batch) + sum(r.calls for r in rejections)
                    self._drop(lost, "abandoned", "database unreachable at shutdown")
                    return
                self._warn(
                    "retry",
                    "ledger write failed (%s: %s); retrying %d record(s) in %.2f s",
                    type(exc).__name__,
                    exc,
                    len(batch),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._abandon.wait()
                delay = min(delay * 2, self._retry_max_s)
            else:
                self._written += len(batch)
                return

    async def _isolate(self, batch: list[UsageRecord], exc: Exception) -> None:
        if len(batch) == 1:
            self._rejected += 1
            self._warn(
                "rejected",
                "ledger rejected usage record %s (%s: %s); %d rejected so far",
                batch[0].call_id,
                type(exc).__name__,
                exc,
                self._rejected,
                level=logging.ERROR,
            )
            return
        # The transaction rolled back whole; one row per transaction finds the bad one(s)
        # without losing the good ones.
        for record in batch:
            await self._persist([record])

    def _reject_counts(self, rejections: Sequence[RejectedCalls], exc: Exception) -> None:
        calls = sum(r.calls for r in rejections)
        self._rejected += calls
        self._warn(
            "rejected-counts",
            "ledger refused the counts of %d rejected call(s) (%s: %s)",
            calls,
            type(exc).__name__,
            exc,
            level=logging.ERROR,
        )

    def _wake_flushers(self) -> None:
        still_waiting = []
        for target, waiter in self._flushers:
            if self._processed >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still_waiting.append((target, waiter))
        self._flushers = still_waiting

    def _drop(self, count: int, kind: str, why: str) -> None:
        if count == 0:
            return
        self._dropped += count
        self._warn(
            kind,
            "usage record(s) dropped: %s; %d dropped so far",
            why,
            self._dropped,
            level=logging.ERROR,
        )

    def _warn(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        # One line per kind of trouble per interval: a ledger in trouble must be visible in
        # the logs without flooding them at request rate.
        now = time.monotonic()
        if now - self._last_warning.get(kind, -float("inf")) >= self._warn_interval_s:
            self._last_warning[kind] = now
            _log.log(level, message, *args)
