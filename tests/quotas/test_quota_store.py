"""Quota stores, each body run against the memory store and Redis (see conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from service.domain.callers import Caller, CallerLimits
from service.domain.quotas import (
    DEFAULT_LEASE_S,
    LimitUsage,
    N,
    QuotaStore,
    day_end,
    epoch_to_datetime,
    utc_day,
)
from service.errors import QuotaExceededError, QuotaViolation
from tests.quotas.conftest import FakeClock


def caller(
    rpm: int | None = None, tpm: int | None = None, usd: str | None = None, name: str = "billing"
) -> Caller:
    limits = CallerLimits(rpm, tpm, None if usd is None else Decimal(usd))
    return Caller(name, b"\0" * 32, limits=limits)


def used(usage: LimitUsage[N] | None) -> N:
    assert usage is not None
    return usage.used


def present(usage: LimitUsage[N] | None) -> LimitUsage[N]:
    assert usage is not None
    return usage


async def refused(
    store: QuotaStore, who: Caller, tokens: int = 0, usd: str = "0"
) -> QuotaExceededError:
    with pytest.raises(QuotaExceededError) as info:
        await store.reserve(who, tokens=tokens, usd=Decimal(usd))
    return info.value


async def test_rpm_limit_with_retry_after(store: QuotaStore, clock: FakeClock) -> None:
    who = caller(rpm=3)
    for _ in range(3):
        await store.reserve(who, tokens=0, usd=Decimal(0))
        clock.advance(10)

    error = await refused(store, who)  # at +30 s: the first request leaves the window at +60 s

    assert error.retry_after_s == pytest.approx(30.0)
    assert error.violations == (
        QuotaViolation(
            "caller:billing",
            "requests_per_minute limit 3 exceeded: 3 used in the last 60 s, this request needs 1",
        ),
    )
    assert error.reason == "QUOTA_EXCEEDED"
    assert error.metadata == {"caller_id": "billing", "limits": "requests_per_minute"}
    clock.advance(29.9)
    await refused(store, who)
    clock.advance(0.1)
    await store.reserve(who, tokens=0, usd=Decimal(0))


async def test_window_slides_instead_of_resetting(store: QuotaStore, clock: FakeClock) -> None:
    # A burst at the end of one minute and another at the start of the next must not double
    # the rate, as fixed per-minute buckets would allow.
    who = caller(rpm=4)
    clock.advance(59)
    for _ in range(4):
        await store.reserve(who, tokens=0, usd=Decimal(0))
    clock.advance(2)  # the next minute
    error = await refused(store, who)
    assert error.retry_after_s == pytest.approx(58.0)


async def test_tpm_limit(store: QuotaStore, clock: FakeClock) -> None:
    who = caller(tpm=1000)
    await store.reserve(who, tokens=600, usd=Decimal(0))
    clock.advance(15)
    await store.reserve(who, tokens=300, usd=Decimal(0))
    clock.advance(15)

    error = await refused(store, who, tokens=500)

    # 400 tokens must leave the window: the 600 reserved at 0 s do so at 60 s, 30 s from now.
    assert error.retry_after_s == pytest.approx(30.0)
    assert [v.description for v in error.violations] == [
        "tokens_per_minute limit 1000 exceeded: 900 used in the last 60 s, this request needs 500"
    ]
    await store.reserve(who, tokens=100, usd=Decimal(0))  # still fits exactly


async def test_a_request_larger_than_the_limit_can_never_fit(store: QuotaStore) -> None:
    error = await refused(store, caller(tpm=1000), tokens=1001)

    assert error.retry_after_s is None
    assert [v.description for v in error.violations] == [
        "tokens_per_minute limit 1000 exceeded: this request alone needs 1001"
    ]


async def test_every_violated_limit_is_named_and_nothing_is_reserved(
    store: QuotaStore, clock: FakeClock
) -> None:
    who = caller(rpm=1, tpm=100, usd="1.00")
    await store.reserve(who, tokens=50, usd=Decimal("0.90"))
    clock.advance(20)

    error = await refused(store, who, tokens=80, usd="0.20")

    assert [v.description.split(" exceeded")[0] for v in error.violations] == [
        "requests_per_minute limit 1",
        "tokens_per_minute limit 100",
        "usd_per_day limit 1.00",
    ]
    assert error.metadata["limits"] == "requests_per_minute,tokens_per_minute,usd_per_day"
    # All three must free up; the budget once the unsettled reservation's lease lapses.
    assert error.retry_after_s == pytest.approx(DEFAULT_LEASE_S - 20)
    status = await store.status(who)
    assert used(status.requests_per_minute) == 1
    assert used(status.tokens_per_minute) == 50
    assert used(status.usd_per_day) == Decimal("0.90")


async def test_budget_holds_under_50_concurrent_reservations(
    store_factory: Callable[[], QuotaStore],
) -> None:
    # Two handles on the same counters: for Redis two replicas with their own connections.
    replicas: list[QuotaStore] = [store_factory(), store_factory()]
    who = caller(usd="1.00")

    results = await asyncio.gather(
        *(replicas[n % 2].reserve(who, tokens=10, usd=Decimal("0.03")) for n in range(50)),
        return_exceptions=True,
    )

    granted = [r for r in results if not isinstance(r, BaseException)]
    refusals = [r for r in results if isinstance(r, BaseException)]
    assert len(granted) == 33  # 33 * 0.03 = 0.99; a 34th would make 1.02
    assert all(isinstance(r, QuotaExceededError) for r in refusals)
    budget = present((await replicas[0].status(who)).usd_per_day)
    assert (budget.used, budget.remaining) == (Decimal("0.99"), Decimal("0.01"))


async def test_settle_refunds_so_later_calls_fit(store: QuotaStore) -> None:
    who = caller(tpm=1000, usd="1.00")
    first = await store.reserve(who, tokens=800, usd=Decimal("0.60"))
    await refused(store, who, tokens=800, usd="0.60")

    await store.settle(first, tokens=150, usd=Decimal("0.10"))

    await store.reserve(who, tokens=800, usd=Decimal("0.60"))
    status = await store.status(who)
    assert used(status.tokens_per_minute) == 950
    assert used(status.usd_per_day) == Decimal("0.70")


async def test_settle_can_exceed_the_reservation(store: QuotaStore) -> None:
    who = caller(tpm=1000, usd="1.00")
    reservation = await store.reserve(who, tokens=100, usd=Decimal("0.10"))

    await store.settle(reservation, tokens=1200, usd=Decimal("1.05"))

    status = await store.status(who)
    tpm, usd = present(status.tokens_per_minute), present(status.usd_per_day)
    assert (tpm.used, tpm.remaining) == (1200, 0)
    assert (usd.used, usd.remaining) == (Decimal("1.05"), Decimal(0))


async def test_release_returns_tokens_and_dollars_but_not_the_request(store: QuotaStore) -> None:
    who = caller(rpm=5, tpm=1000, usd="1.00")
    reservation = await store.reserve(who, tokens=900, usd=Decimal("0.90"))

    await store.release(reservation)

    status = await store.status(who)
    assert used(status.requests_per_minute) == 1
    assert used(status.tokens_per_minute) == 0
    assert used(status.usd_per_day) == Decimal(0)


async def test_settling_twice_changes_nothing(store: QuotaStore) -> None:
    who = caller(tpm=1000, usd="1.00")
    reservation = await store.reserve(who, tokens=500, usd=Decimal("0.50"))
    await store.settle(reservation, tokens=200, usd=Decimal("0.20"))

    await store.release(reservation)
    await store.settle(reservation, tokens=0, usd=Decimal("0.01"))

    status = await store.status(who)
    assert used(status.tokens_per_minute) == 200
    assert used(status.usd_per_day) == Decimal("0.20")


async def test_budget_is_per_utc_day(store: QuotaStore, clock: FakeClock) -> None:
    who = caller(usd="1.00")
    clock.now = day_end(utc_day(clock.now)) - 1  # 23:59:59 UTC
    late = await store.reserve(who, tokens=0, usd=Decimal("0.80"))
    error = await refused(store, who, usd="0.30")
    assert error.retry_after_s == pytest.approx(1.0)

    clock.advance(2)  # 00:00:01 the next day: a fresh budget
    await store.reserve(who, tokens=0, usd=Decimal("0.90"))
    # Yesterday's request settles today; its dollars stay with yesterday's budget.
    await store.settle(late, tokens=0, usd=Decimal("0.20"))
    budget = present((await store.status(who)).usd_per_day)
    assert budget.used == Decimal("0.90")
    assert budget.resets_at == epoch_to_datetime(day_end(utc_day(clock.now)))


async def test_status_numbers(store: QuotaStore, clock: FakeClock) -> None:
    who = caller(rpm=10, tpm=5000, usd="2.50")
    await store.reserve(who, tokens=1000, usd=Decimal("0.25"))
    clock.advance(5)
    await store.reserve(who, tokens=500, usd=Decimal("0.125"))
    newest = clock.now
    clock.advance(1)

    status = await store.status(who)

    resets = epoch_to_datetime(newest) + timedelta(seconds=60)
    assert status.caller_id == "billing"
    rpm, tpm = present(status.requests_per_minute), present(status.tokens_per_minute)
    usd = present(status.usd_per_day)
    assert (rpm.limit, rpm.used, rpm.remaining, rpm.resets_at) == (10, 2, 8, resets)
    assert (tpm.limit, tpm.used, tpm.remaining, tpm.resets_at) == (5000, 1500, 3500, resets)
    assert (usd.limit, usd.used, usd.remaining) == (
        Decimal("2.50"),
        Decimal("0.375"),
        Decimal("2.125"),
    )
    clock.advance(60)
    later = await store.status(who)
    assert used(later.requests_per_minute) == 0
    assert used(later.tokens_per_minute) == 0


async def test_status_leaves_out_absent_limits(store: QuotaStore) -> None:
    status = await store.status(caller(rpm=5))
    assert status.tokens_per_minute is None
    assert status.usd_per_day is None
    assert used(status.requests_per_minute) == 0


async def test_callers_do_not_share_limits(store: QuotaStore) -> None:
    one, other = caller(rpm=1, name="one"), caller(rpm=1, name="other")
    await store.reserve(one, tokens=0, usd=Decimal(0))
    await store.reserve(other, tokens=0, usd=Decimal(0))
    await refused(store, one)


async def test_a_caller_without_limits_is_not_tracked(store: QuotaStore) -> None:
    who = caller()
    reservations = [await store.reserve(who, tokens=10**9, usd=Decimal(10**6)) for _ in range(3)]
    assert not any(r.tracked for r in reservations)
    await store.settle(reservations[0], tokens=1, usd=Decimal(1))


async def test_zero_rpm_refuses_for_good(store: QuotaStore) -> None:
    error = await refused(store, caller(rpm=0))
    assert error.retry_after_s is None


async def test_negative_amounts_are_a_programming_error(store: QuotaStore) -> None:
    with pytest.raises(ValueError, match="tokens"):
        await store.reserve(caller(rpm=1), tokens=-1, usd=Decimal(0))
    with pytest.raises(ValueError, match="usd"):
        await store.reserve(caller(rpm=1), tokens=0, usd=Decimal("-0.01"))
