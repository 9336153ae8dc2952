"""The usage ledger's vocabulary: one row per RPC, totals over rows, and the store's interface.

A ``UsageRecord`` is written once, when an RPC ends, off the request path. Records of streams
the caller cancelled usually lack the final usage chunk, so their cost is unknown or partial;
the reconciler later asks OpenRouter (``GET /generation``) for the real figures. Costs are
``Decimal`` throughout so that sums are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from service.domain.ports import GenerationStats


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """What one RPC used and how it went; ``request_id`` is its key in the ledger."""

    request_id: str
    time: datetime
    """When the RPC started; must be timezone-aware, kept in UTC."""
    caller_id: str
    rpc: str
    """The RPC method, e.g. ``"Complete"`` or ``"StreamComplete"``."""
    requested_model: str
    status: str
    """The gRPC status code name the caller got: ``"OK"``, ``"CANCELLED"``, ``"UNAVAILABLE"`` …"""
    end_user_id: str = ""
    served_model: str = ""
    provider: str = ""
    generation_id: str = ""
    """OpenRouter's ``gen-…`` id; empty when no upstream call got that far."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal | None = None
    """Exact cost as OpenRouter reported it; ``None`` when unknown (e.g. a cancelled stream)."""
    latency_ms: int = 0
    ttft_ms: int | None = None
    """Time to the first token; ``None`` when no token was produced."""
    retries: int = 0
    fallback_used: bool = False
    repair_used: bool = False
    cancelled: bool = False
    reconciled: bool = False
    """True once tokens and cost were replaced by OpenRouter's own record of the generation."""

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("UsageRecord.time must be timezone-aware")
        if self.time.tzinfo is not UTC:
            object.__setattr__(self, "time", self.time.astimezone(UTC))
        counts = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
            "latency_ms": self.latency_ms,
            "retries": self.retries,
        }
        negative = [name for name, value in counts.items() if value < 0]
        if self.ttft_ms is not None and self.ttft_ms < 0:
            negative.append("ttft_ms")
        if negative:
            raise ValueError(f"UsageRecord fields must not be negative: {', '.join(negative)}")
        if self.cost_usd is not None and (not self.cost_usd.is_finite() or self.cost_usd < 0):
            raise ValueError("UsageRecord.cost_usd must be a finite, non-negative amount")

    @property
    def needs_reconciliation(self) -> bool:
        """Whether OpenRouter's record would tell us more than we know.

        A cancelled stream's cost is partial at best (the usage chunk comes last), and a record
        without a cost is incomplete; either is worth a ``GET /generation`` if we have the id.
        """
        return (
            not self.reconciled
            and bool(self.generation_id)
            and (self.cancelled or self.cost_usd is None)
        )


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over a caller's records in a time range."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    """Sum of the known costs."""
    unknown_cost_requests: int = 0
    """Records whose cost is unknown, so ``cost_usd`` understates by their share."""


@dataclass(frozen=True, slots=True)
class LedgerCounters:
    """What a ledger store did with the records handed to it, since it was created."""

    written: int
    rejected: int
    """Records the database refused (e.g. a value out of range); logged with their request id."""
    dropped: int
    """Records never written: the queue was full, the store was closed, or the database stayed
    unreachable past the close timeout. Each drop is logged."""
    pending: int
    """Records queued or being written right now."""


def cost_from_stats(stats: GenerationStats) -> Decimal:
    """OpenRouter's total cost as an exact decimal.

    ``total_cost_usd`` arrives as a JSON number (a float); its shortest repr is the decimal
    OpenRouter wrote, which ``Decimal(float)`` would turn into a long binary expansion.
    """
    value = stats.total_cost_usd
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"generation {stats.id} has an invalid total cost")
    return Decimal(repr(value))


class LedgerStore(Protocol):
    """Where usage records go. Writes are batched off the request path.

    ``record`` only enqueues; rows reach the database in batches, one transaction per batch,
    so a row is there whole or not at all. Reads (``totals``, ``unreconciled``) see written
    rows only: ``await flush()`` first to read your own writes.
    """

    async def start(self) -> None:
        """Open the database, create or migrate the schema and start the writer."""
        ...

    async def close(self) -> None:
        """Write everything queued (bounded by the store's close timeout), then close."""
        ...

    def record(self, record: UsageRecord) -> None:
        """Enqueue a record without waiting; when the queue is full the record is dropped,
        counted and logged (see ``record_async`` for backpressure instead)."""
        ...

    async def record_async(self, record: UsageRecord) -> None:
        """Enqueue a record, waiting for room when the queue is full."""
        ...

    async def flush(self) -> None:
        """Return once every record enqueued before the call is written (or rejected)."""
        ...

    async def totals(self, caller_id: str, since: datetime, until: datetime) -> UsageTotals:
        """Sums over the caller's records with ``since <= time < until``."""
        ...

    async def unreconciled(self, limit: int, *, max_attempts: int = 10) -> list[UsageRecord]:
        """Records that ``needs_reconciliation``, fewest failed look-ups first, then oldest;
        records looked up ``max_attempts`` times in vain are left out."""
        ...

    async def reconcile(self, request_id: str, stats: GenerationStats) -> bool:
        """Replace a record's tokens and cost by OpenRouter's figures and mark it reconciled;
        False when no such record is written (yet)."""
        ...

    async def note_reconcile_miss(self, request_id: str) -> None:
        """Count a look-up that found nothing, so hopeless records stop being retried."""
        ...

    def counters(self) -> LedgerCounters:
        """A snapshot of what happened to the records handed to this store."""
        ...
