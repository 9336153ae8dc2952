"""Reservations are leases: an unsettled hold lapses, a late settle still books, renew keeps
a hold. Each body runs against the memory store and Redis (see conftest)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from service.domain.callers import Caller, CallerLimits
from service.domain.quotas import LeasePolicy, LimitUsage, QuotaStore
from service.errors import QuotaExceededError
from tests.quotas.conftest import FakeClock

WHO = Caller("billing", b"\0" * 32, limits=CallerLimits(usd_per_day=Decimal("1.00")))


async def budget(store: QuotaStore) -> LimitUsage[Decimal]:
    usage = (await store.status(WHO)).usd_per_day
    assert usage is not None
    return usage


async def refusal(store: QuotaStore, usd: str) -> QuotaExceededError:
    with pytest.raises(QuotaExceededError) as info:
        await store.reserve(WHO, tokens=0, usd=Decimal(usd), lease_s=30)
    return info.value


async def test_an_unsettled_hold_lapses_with_its_lease(
    store_factory: Callable[[], QuotaStore], clock: FakeClock
) -> None:
    dead, alive = store_factory(), store_factory()  # for Redis: two replicas
    await dead.reserve(WHO, tokens=0, usd=Decimal("0.70"), lease_s=30)
    clock.advance(10)

    # Counted while the lease runs; the refusal says when it lapses.
    assert (await budget(alive)).used == Decimal("0.70")
    error = await refusal(alive, "0.50")
    assert error.retry_after_s == pytest.approx(20)

    clock.advance(20)  # the lease's end: the replica that held it never settled
    assert (await budget(alive)).used == Decimal(0)
    await alive.reserve(WHO, tokens=0, usd=Decimal("0.50"), lease_s=30)


async def test_a_settle_after_the_lease_lapsed_still_books_what_was_spent(
    store: QuotaStore, clock: FakeClock
) -> None:
    reservation = await store.reserve(WHO, tokens=0, usd=Decimal("0.70"), lease_s=30)
    clock.advance(31)
    assert (await budget(store)).used == Decimal(0)

    await store.settle(reservation, tokens=0, usd=Decimal("0.40"))
    await store.settle(reservation, tokens=0, usd=Decimal("0.40"))  # still a no-op twice

    assert (await budget(store)).used == Decimal("0.40")


async def test_settling_a_live_lease_releases_its_hold(store: QuotaStore, clock: FakeClock) -> None:
    reservation = await store.reserve(WHO, tokens=0, usd=Decimal("0.70"), lease_s=30)
    await store.settle(reservation, tokens=0, usd=Decimal("0.25"))
    clock.advance(31)  # the lapse of a settled lease frees nothing twice

    assert (await budget(store)).used == Decimal("0.25")


async def test_renew_keeps_a_hold_and_takes_a_lapsed_one_again(
    store: QuotaStore, clock: FakeClock
) -> None:
    reservation = await store.reserve(WHO, tokens=0, usd=Decimal("0.70"), lease_s=30)
    clock.advance(20)
    await store.renew(reservation, lease_s=30)  # now ends at +50
    clock.advance(25)
    assert (await budget(store)).used == Decimal("0.70")
    await store.renew(reservation, lease_s=1)  # never shortens a lease
    clock.advance(4)
    assert (await budget(store)).used == Decimal("0.70")

    clock.advance(10)  # +59: lapsed
    assert (await budget(store)).used == Decimal(0)
    await store.renew(reservation, lease_s=30)  # the call was still running after all
    assert (await budget(store)).used == Decimal("0.70")

    await store.settle(reservation, tokens=0, usd=Decimal("0.10"))
    await store.renew(reservation, lease_s=30)  # settled: nothing to hold
    assert (await budget(store)).used == Decimal("0.10")


async def test_the_wait_is_until_enough_leases_lapse_or_midnight(
    store: QuotaStore, clock: FakeClock
) -> None:
    await store.reserve(WHO, tokens=0, usd=Decimal("0.30"), lease_s=10)
    await store.reserve(WHO, tokens=0, usd=Decimal("0.30"), lease_s=40)
    settled = await store.reserve(WHO, tokens=0, usd=Decimal("0.30"), lease_s=60)
    await store.settle(settled, tokens=0, usd=Decimal("0.30"))

    # 0.30 spent, 0.60 held: 0.65 fits once both holds lapse, 0.20 once the first does.
    assert (await refusal(store, "0.65")).retry_after_s == pytest.approx(40)
    assert (await refusal(store, "0.20")).retry_after_s == pytest.approx(10)
    # Spent money never lapses: only midnight makes room for 0.75.
    late = await refusal(store, "0.75")
    assert late.retry_after_s is not None
    assert late.retry_after_s > 3600


def test_a_lease_lasts_as_long_as_the_call_can_run_plus_the_margin() -> None:
    policy = LeasePolicy(call_timeout_s=45, margin_s=5)
    assert policy.lease_s(12.5) == 17.5  # the caller's deadline bounds the call
    assert policy.lease_s(float("inf")) == 50  # else the upstream budget
    assert policy.lease_s(float("inf"), attempts=2) == 95  # each attempt has its own
    assert policy.lease_s(-1) == 5
    assert policy.renew_every_s == pytest.approx(50 / 3)
