"""In-process quota store, the default for a single gateway replica.

Same algorithms as the Redis store (see ``service.quotas.redis``): a sliding-window log of the
last 60 s of reservations for RPM and TPM, and per UTC day the dollars spent (settled) plus
those held by live leases. ``reserve`` has no ``await`` between reading and updating the
counters, so on one event loop it is atomic by construction. Dollars are exact ``Decimal``s.

Leases matter less here than in Redis (a dead process takes its holds with it), but a
reservation nobody settles still lapses when its lease ends, as it would in Redis.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from service.domain.callers import Caller
from service.domain.quotas import (
    DEFAULT_LEASE_S,
    MINUTE_S,
    Breach,
    QuotaLimit,
    QuotaStatus,
    Reservation,
    check_reservation_args,
    day_end,
    epoch_to_datetime,
    quota_exceeded,
    quota_status,
    utc_day,
)


@dataclass(slots=True)
class _Entry:
    at: float
    tokens: int


@dataclass(slots=True)
class _Pending:
    day: int
    usd: Decimal | None
    """Dollars reserved, or None when the caller had no budget at reservation time."""
    expires_at: float
    live: bool = True
    """Its dollars are held; False once the lease lapsed (a settle still books the actual)."""


@dataclass(slots=True)
class _CallerState:
    order: deque[str] = field(default_factory=deque)
    """Reservation tokens in the window, oldest first."""
    entries: dict[str, _Entry] = field(default_factory=dict)
    window_tokens: int = 0
    latest: float = 0.0
    day: int = -1
    """The UTC day of the latest reservation; older days are pruned when it changes."""
    spent: dict[int, Decimal] = field(default_factory=dict)
    """UTC day -> dollars of settled reservations."""
    held: dict[int, Decimal] = field(default_factory=dict)
    """UTC day -> dollars of reservations whose lease is live."""
    pending: dict[str, _Pending] = field(default_factory=dict)
    leases: list[tuple[float, str]] = field(default_factory=list)
    """Heap of (expiry, token); entries of settled or renewed leases are skipped when due."""


class MemoryQuotaStore:
    """Quota counters in this process's memory; lost on restart, not shared between replicas."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._callers: dict[str, _CallerState] = {}

    async def reserve(
        self, caller: Caller, *, tokens: int, usd: Decimal, lease_s: float = DEFAULT_LEASE_S
    ) -> Reservation:
        check_reservation_args(tokens, usd, lease_s)
        limits = caller.limits
        state = self._callers.setdefault(caller.id, _CallerState())
        # Keep time monotonic per caller so the log stays ordered even if the wall clock steps back.
        now = max(self._clock(), state.latest)
        day = utc_day(now)
        token = os.urandom(16).hex()  # as unique as uuid4().hex, at a third of its cost
        rpm, tpm, budget = limits.requests_per_minute, limits.tokens_per_minute, limits.usd_per_day
        if rpm is None and tpm is None and budget is None:
            return Reservation(caller.id, token, 1, tokens, usd, now, day, tracked=False)
        rate = rpm is not None or tpm is not None
        if rate:
            self._trim(state, now)
        self._forget_old_days(state, day)
        self._expire_leases(state, now)
        spent = state.spent.get(day, Decimal(0))
        held = state.held.get(day, Decimal(0))

        breaches: list[Breach] = []
        if rpm is not None and len(state.order) + 1 > rpm:
            breaches.append(self._rpm_breach(state, rpm, now))
        if tpm is not None and state.window_tokens + tokens > tpm:
            breaches.append(self._tpm_breach(state, tpm, tokens, now))
        if budget is not None and spent + held + usd > budget:
            breaches.append(self._usd_breach(state, budget, usd, day, now))
        if breaches:
            raise quota_exceeded(caller.id, breaches)

        if rate:
            state.order.append(token)
            state.entries[token] = _Entry(now, tokens)
            state.window_tokens += tokens
            state.latest = now
        expires_at = now + lease_s
        if budget is not None:
            state.held[day] = held + usd
            heapq.heappush(state.leases, (expires_at, token))
        state.pending[token] = _Pending(day, usd if budget is not None else None, expires_at)
        return Reservation(caller.id, token, 1, tokens, usd, now, day, lease_s=lease_s)

    async def renew(self, reservation: Reservation, *, lease_s: float) -> None:
        check_reservation_args(0, Decimal(0), lease_s)
        state = self._callers.get(reservation.caller_id)
        if not reservation.tracked or state is None:
            return
        pending = state.pending.get(reservation.token)
        if pending is None:  # settled already
            return
        expires_at = max(pending.expires_at, self._clock() + lease_s)
        if expires_at == pending.expires_at and pending.live:
            return
        pending.expires_at = expires_at
        if pending.usd is None:
            return
        if not pending.live:  # lapsed while the call still ran: hold it again
            pending.live = True
            state.held[pending.day] = state.held.get(pending.day, Decimal(0)) + pending.usd
        heapq.heappush(state.leases, (expires_at, reservation.token))

    async def settle(self, reservation: Reservation, *, tokens: int, usd: Decimal) -> None:
        check_reservation_args(tokens, usd)
        state = self._callers.get(reservation.caller_id)
        if not reservation.tracked or state is None:
            return
        pending = state.pending.pop(reservation.token, None)
        if pending is None:  # settled already, or its day is long gone
            return
        entry = state.entries.get(reservation.token)
        if entry is not None:  # still inside the minute window
            state.window_tokens += tokens - entry.tokens
            entry.tokens = tokens
        if pending.usd is not None:
            if pending.live:
                state.held[pending.day] -= pending.usd
            state.spent[pending.day] = state.spent.get(pending.day, Decimal(0)) + usd

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, tokens=0, usd=Decimal(0))

    async def status(self, caller: Caller) -> QuotaStatus:
        state = self._callers.setdefault(caller.id, _CallerState())
        now = max(self._clock(), state.latest)
        self._trim(state, now)
        self._expire_leases(state, now)
        newest = state.entries[state.order[-1]].at if state.order else None
        day = utc_day(now)
        return quota_status(
            caller,
            requests=len(state.order),
            tokens=state.window_tokens,
            window_reset=epoch_to_datetime(now if newest is None else newest + MINUTE_S),
            spent=state.spent.get(day, Decimal(0)) + state.held.get(day, Decimal(0)),
            day=day,
        )

    async def close(self) -> None:
        self._callers.clear()

    @staticmethod
    def _trim(state: _CallerState, now: float) -> None:
        horizon = now - MINUTE_S
        while state.order and state.entries[state.order[0]].at <= horizon:
            entry = state.entries.pop(state.order.popleft())
            state.window_tokens -= entry.tokens

    @staticmethod
    def _expire_leases(state: _CallerState, now: float) -> None:
        leases = state.leases
        while leases and leases[0][0] <= now:
            expires_at, token = heapq.heappop(leases)
            pending = state.pending.get(token)
            # Skipped: settled, renewed (a later heap entry holds it), or lapsed already.
            if pending is None or pending.expires_at != expires_at or not pending.live:
                continue
            pending.live = False
            if pending.usd is not None and pending.day in state.held:
                state.held[pending.day] -= pending.usd

    @staticmethod
    def _forget_old_days(state: _CallerState, today: int) -> None:
        if state.day == today:
            return
        state.day = today
        # Yesterday stays: a request reserved before midnight may settle after it. Older
        # pending entries belong to requests that never settled (a bug upstream of us).
        state.spent = {day: v for day, v in state.spent.items() if day >= today - 1}
        state.held = {day: v for day, v in state.held.items() if day >= today - 1}
        state.pending = {t: p for t, p in state.pending.items() if p.day >= today - 1}
        state.leases = [(at, t) for at, t in state.leases if t in state.pending]
        heapq.heapify(state.leases)

    @staticmethod
    def _rpm_breach(state: _CallerState, rpm: int, now: float) -> Breach:
        count = len(state.order)
        if rpm == 0:
            return Breach(QuotaLimit.REQUESTS_PER_MINUTE, rpm, count, 1, None)
        # Room for one more once the (count - rpm + 1)-th oldest request leaves the window.
        frees_at = state.entries[state.order[count - rpm]].at + MINUTE_S
        return Breach(QuotaLimit.REQUESTS_PER_MINUTE, rpm, count, 1, frees_at - now)

    @staticmethod
    def _tpm_breach(state: _CallerState, tpm: int, tokens: int, now: float) -> Breach:
        used = state.window_tokens
        if tokens > tpm:
            return Breach(QuotaLimit.TOKENS_PER_MINUTE, tpm, used, tokens, None)
        need, freed = used + tokens - tpm, 0
        wait = MINUTE_S
        for token in state.order:
            entry = state.entries[token]
            freed += entry.tokens
            if freed >= need:
                wait = entry.at + MINUTE_S - now
                break
        return Breach(QuotaLimit.TOKENS_PER_MINUTE, tpm, used, tokens, wait)

    @staticmethod
    def _usd_breach(
        state: _CallerState, budget: Decimal, usd: Decimal, day: int, now: float
    ) -> Breach:
        spent = state.spent.get(day, Decimal(0))
        held = state.held.get(day, Decimal(0))
        if usd > budget:
            return Breach(QuotaLimit.USD_PER_DAY, budget, spent + held, usd, None)
        # Room frees up when enough of today's leases lapse (at the latest: they usually
        # settle sooner), or at midnight when settled spending alone leaves none.
        wait = day_end(day) - now
        if spent + usd <= budget:
            need, freed = spent + held + usd - budget, Decimal(0)
            live = sorted(
                (p.expires_at, p.usd)
                for p in state.pending.values()
                if p.live and p.day == day and p.usd is not None
            )
            for expires_at, amount in live:
                freed += amount
                if freed >= need:
                    wait = min(wait, expires_at - now)
                    break
        return Breach(QuotaLimit.USD_PER_DAY, budget, spent + held, usd, wait)
