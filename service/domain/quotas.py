"""Per-caller quotas: reservations against RPM, TPM and a daily USD budget; the store's interface.

A request reserves its worst case up front (1 request, prompt estimate + ``max_tokens`` tokens,
worst-case cost) and settles to the actual figures when it ends. Every limit is checked in one
atomic step, so N concurrent reservations can never reserve more than a limit allows; a budget
is overshot at most by what one request's actual cost exceeds its reservation.

Windows: requests and tokens count over the last 60 seconds (a sliding window); dollars
count per UTC day.

Leases: a reservation's dollars are held only until its lease expires, unless settled first.
The gateway sets the lease to the longest its call can run plus ``LeasePolicy.margin_s``, and
renews it while a stream without a deadline runs, so a live call's hold never lapses, while
the holds of a replica that died (kill -9, lost node) free themselves shortly after its calls
would have ended, rather than at midnight. A settle after the lease expired still books the
actual cost. Minute windows need no lease: a reservation leaves them after 60 s anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from service.domain.callers import Caller
from service.errors import QuotaExceededError, QuotaViolation

MINUTE_S = 60.0
DAY_S = 86_400
DEFAULT_LEASE_S = 120.0
"""The lease of a reservation whose maker gives none (the gateway always gives one)."""


class QuotaLimit(StrEnum):
    """The limits a caller can have; the values are the field names of ``CallerLimits``."""

    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    USD_PER_DAY = "usd_per_day"


class FailurePolicy(StrEnum):
    """What a shared quota store does when it cannot be reached."""

    FAIL_CLOSED = "fail_closed"
    """Refuse the request (``ServiceUnavailableError``, reason ``QUOTA_STORE_UNAVAILABLE``)."""
    FAIL_OPEN = "fail_open"
    """Let the request through unchecked; logged and counted."""


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How long a reservation is held: the longest its call can run, plus a margin.

    A call's bound is the caller's deadline, else the upstream budget (``OPENROUTER_TIMEOUT_MS``)
    for each upstream attempt. A stream without a deadline has no bound once it has started
    (it runs while it keeps producing), so its lease is renewed every ``renew_every_s``
    while it runs.
    """

    call_timeout_s: float = 45.0
    """The upstream budget of one attempt when the caller set no deadline."""
    margin_s: float = 5.0
    """Covers the settle after the call ends and clock skew between replicas (their leases
    are compared with each other's wall clocks)."""

    def lease_s(self, remaining_s: float, *, attempts: int = 1) -> float:
        """The lease for a call with ``remaining_s`` until its deadline (``inf``: none)."""
        if math.isfinite(remaining_s):
            return max(remaining_s, 0.0) + self.margin_s
        return self.call_timeout_s * attempts + self.margin_s

    @property
    def renew_every_s(self) -> float:
        """How often a running stream without a deadline renews its lease: a third of the
        lease it renews to, so two renewals can be late or lost before the hold lapses."""
        return (self.call_timeout_s + self.margin_s) / 3


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request holds until it settles; pass it back to ``settle`` or ``release``."""

    caller_id: str
    token: str
    """Unique id of this reservation in the store."""
    requests: int
    tokens: int
    usd: Decimal
    reserved_at: float
    """Epoch seconds; the minute windows count the reservation from this instant."""
    day: int
    """UTC day (days since the epoch) whose budget the dollars count against, even if the
    request settles after midnight."""
    tracked: bool = True
    """False when the store holds nothing for it (no limits, or admitted by ``fail_open``):
    settling it is a no-op."""
    unchecked: bool = False
    """True when admitted without any check because the store was unreachable (fail open)."""
    lease_s: float = DEFAULT_LEASE_S
    """How long after ``reserved_at`` the hold lapses unless settled or renewed."""


N = TypeVar("N", int, Decimal)


@dataclass(frozen=True, slots=True)
class LimitUsage(Generic[N]):
    """One limit of one caller right now."""

    limit: N
    used: N
    """Requests/tokens in the last 60 s, or dollars spent plus still reserved today."""
    remaining: N
    resets_at: datetime
    """When everything counted in ``used`` will have left its window: 60 s after the newest
    counted request, or the next UTC midnight for dollars."""


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A caller's usage against each configured limit; ``None`` where the caller has no limit."""

    caller_id: str
    requests_per_minute: LimitUsage[int] | None
    tokens_per_minute: LimitUsage[int] | None
    usd_per_day: LimitUsage[Decimal] | None
    known: bool = True
    """False when the store could not be reached: the limits are the caller's, but ``used``,
    ``remaining`` and ``resets_at`` are placeholders (0, 0 and now), not figures."""


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit a reservation would exceed."""

    limit: QuotaLimit
    maximum: int | Decimal
    used: int | Decimal
    requested: int | Decimal
    retry_after_s: float | None
    """When enough room frees up; ``None`` when the request alone exceeds the limit."""


def utc_day(epoch_s: float) -> int:
    """The UTC day number (days since 1970-01-01) of an instant."""
    return math.floor(epoch_s / DAY_S)


def day_end(day: int) -> float:
    """Epoch seconds of the midnight that ends a UTC day."""
    return float((day + 1) * DAY_S)


def epoch_to_datetime(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def quota_status(
    caller: Caller,
    *,
    requests: int,
    tokens: int,
    window_reset: datetime,
    spent: Decimal,
    day: int,
) -> QuotaStatus:
    """What a store knows (calls and tokens in the current minute window, USD spent on UTC
    ``day``) set against each limit the caller has; every store reports through this."""
    limits = caller.limits
    rpm, tpm, budget = limits.requests_per_minute, limits.tokens_per_minute, limits.usd_per_day
    return QuotaStatus(
        caller_id=caller.id,
        requests_per_minute=(
            None if rpm is None else LimitUsage(rpm, requests, max(rpm - requests, 0), window_reset)
        ),
        tokens_per_minute=(
            None if tpm is None else LimitUsage(tpm, tokens, max(tpm - tokens, 0), window_reset)
        ),
        usd_per_day=(
            None
            if budget is None
            else LimitUsage(
                budget, spent, max(budget - spent, Decimal(0)), epoch_to_datetime(day_end(day))
            )
        ),
    )


def unknown_quota_status(caller: Caller, now: float) -> QuotaStatus:
    """The caller's limits without their usage, for when the store cannot be reached."""
    at = epoch_to_datetime(now)
    limits = caller.limits
    rpm, tpm, budget = limits.requests_per_minute, limits.tokens_per_minute, limits.usd_per_day
    return QuotaStatus(
        caller.id,
        None if rpm is None else LimitUsage(rpm, 0, 0, at),
        None if tpm is None else LimitUsage(tpm, 0, 0, at),
        None if budget is None else LimitUsage(budget, Decimal(0), Decimal(0), at),
        known=False,
    )


def check_reservation_args(tokens: int, usd: Decimal, lease_s: float = DEFAULT_LEASE_S) -> None:
    if tokens < 0:
        raise ValueError("tokens must not be negative")
    if not usd.is_finite() or usd < 0:
        raise ValueError("usd must be a finite, non-negative amount")
    if not math.isfinite(lease_s) or lease_s <= 0:
        raise ValueError("lease_s must be a finite, positive number of seconds")


def quota_exceeded(caller_id: str, breaches: list[Breach]) -> QuotaExceededError:
    """The error for a refused reservation, naming every limit it would exceed.

    ``retry_after_s`` is the latest of the breaches' waits (all must free up), or ``None`` when
    some limit can never fit the request.
    """
    violations = [
        QuotaViolation(subject=f"caller:{caller_id}", description=_describe(breach))
        for breach in breaches
    ]
    waits = [breach.retry_after_s for breach in breaches]
    retry_after: float | None = None
    if all(wait is not None for wait in waits):
        retry_after = max(wait for wait in waits if wait is not None)
    message = f"quota exceeded for caller {caller_id}: " + "; ".join(
        violation.description for violation in violations
    )
    return QuotaExceededError(
        message,
        violations,
        retry_after_s=retry_after,
        metadata={
            "caller_id": caller_id,
            "limits": ",".join(str(breach.limit) for breach in breaches),
        },
    )


def _describe(breach: Breach) -> str:
    head = f"{breach.limit} limit {breach.maximum} exceeded"
    if breach.retry_after_s is None:
        return f"{head}: this request alone needs {breach.requested}"
    window = "today (UTC)" if breach.limit is QuotaLimit.USD_PER_DAY else "in the last 60 s"
    return f"{head}: {breach.used} used {window}, this request needs {breach.requested}"


class QuotaStore(Protocol):
    """Holds callers' quota usage; the memory store serves one process, Redis a fleet."""

    async def reserve(
        self, caller: Caller, *, tokens: int, usd: Decimal, lease_s: float = DEFAULT_LEASE_S
    ) -> Reservation:
        """Reserve 1 request, ``tokens`` and ``usd`` against all of the caller's limits at once.

        The dollars are held for ``lease_s`` seconds unless settled (or renewed) before.
        Raises ``QuotaExceededError`` naming each limit that would be exceeded, with
        ``retry_after_s``; nothing is reserved then. A shared store that cannot be reached
        raises ``ServiceUnavailableError`` (fail closed) or admits unchecked (fail open).
        """
        ...

    async def renew(self, reservation: Reservation, *, lease_s: float) -> None:
        """Hold the reservation for ``lease_s`` seconds from now (never shorter than it was);
        a lapsed hold is taken again. A no-op once settled. Never raises for an unreachable
        store (the hold may then lapse)."""
        ...

    async def settle(self, reservation: Reservation, *, tokens: int, usd: Decimal) -> None:
        """Replace the reserved tokens and dollars by the actual ones (lower or higher).

        The request still counts against the RPM limit. Settling twice changes nothing.
        A settle after the lease lapsed still books the actual dollars. Never raises for an
        unreachable store: the call already happened; the reserved (worst-case) figures then
        stay counted until the lease lapses.
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """Settle with zero tokens and dollars, e.g. when the call failed before upstream."""
        ...

    async def status(self, caller: Caller) -> QuotaStatus:
        """The caller's usage against each configured limit; ``ServiceUnavailableError``
        when a shared store cannot be reached, whatever the failure policy."""
        ...

    async def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...
