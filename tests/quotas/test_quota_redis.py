"""What only the Redis store does: replicas sharing limits, keys and TTLs, Redis outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from service.domain.callers import Caller, CallerLimits
from service.domain.quotas import FailurePolicy
from service.errors import QuotaExceededError, ServiceUnavailableError
from service.quotas import MemoryQuotaStore, RedisQuotaStore, open_quota_store
from tests.servers import RedisServer

WHO = Caller("billing", b"\0" * 32, limits=CallerLimits(10, 10_000, Decimal("5")))


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_two_replicas_share_one_limit(redis_url: str) -> None:
    # Separate clients and pools, the real clock: as two gateway processes would run.
    replicas = [RedisQuotaStore.from_url(redis_url), RedisQuotaStore.from_url(redis_url)]
    try:
        results = await asyncio.gather(
            *(replicas[n % 2].reserve(WHO, tokens=100, usd=Decimal("0.01")) for n in range(30)),
            return_exceptions=True,
        )
        granted = [r for r in results if not isinstance(r, BaseException)]
        assert len(granted) == 10
        assert all(isinstance(r, QuotaExceededError) for r in results if r not in granted)
        for replica in replicas:
            status = await replica.status(WHO)
            assert status.requests_per_minute is not None
            assert status.requests_per_minute.used == 10
    finally:
        for replica in replicas:
            await replica.close()


async def test_keys_are_prefixed_and_all_expire(redis_url: str, raw_redis: Redis) -> None:
    store = RedisQuotaStore.from_url(redis_url, key_prefix="gw-test")
    try:
        reservation = await store.reserve(WHO, tokens=10, usd=Decimal("0.5"))
        await store.settle(reservation, tokens=5, usd=Decimal("0.25"))
        await store.reserve(WHO, tokens=10, usd=Decimal("0.5"))  # left outstanding
    finally:
        await store.close()

    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await raw_redis.keys("*"))
    assert keys == [
        f"gw-test:{{billing}}:day:{reservation.day}",
        f"gw-test:{{billing}}:lease:{reservation.day}",
        "gw-test:{billing}:log",
        "gw-test:{billing}:tok",
    ]
    for key in keys:
        ttl = await raw_redis.ttl(key)
        assert 0 < ttl <= 2 * 86_400, key


async def test_open_quota_store_picks_the_backend(redis_url: str) -> None:
    assert isinstance(open_quota_store(None), MemoryQuotaStore)
    store = open_quota_store(redis_url, failure_policy=FailurePolicy.FAIL_OPEN)
    assert isinstance(store, RedisQuotaStore)
    await store.close()


@pytest.fixture
def own_redis(redis_factory: Callable[[], RedisServer]) -> RedisServer:
    """A Redis of this test's own, to pause or stop."""
    return redis_factory()


async def test_fail_closed_on_a_frozen_redis_is_quick(own_redis: RedisServer) -> None:
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.2, probe_every_s=0)
    try:
        await store.reserve(WHO, tokens=1, usd=Decimal(0))  # a pooled connection now exists
        own_redis.pause()  # connected, but nothing answers: the worst kind of outage

        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            await store.reserve(WHO, tokens=1, usd=Decimal(0))
        assert time.monotonic() - started < 1.0
        assert info.value.reason == "QUOTA_STORE_UNAVAILABLE"
        assert "quota store unreachable" in info.value.message
        assert info.value.retryable

        own_redis.resume()
        async with asyncio.timeout(5):
            await store.reserve(WHO, tokens=1, usd=Decimal(0))  # back to normal
    finally:
        await store.close()


async def test_fail_closed_when_nothing_listens(own_redis: RedisServer) -> None:
    own_redis.stop()
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await store.reserve(WHO, tokens=1, usd=Decimal(0))
        with pytest.raises(ServiceUnavailableError):
            await store.status(WHO)  # status fails whatever the policy
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()


async def test_fail_open_admits_warns_once_and_counts(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisQuotaStore.from_url(
        own_redis.url, timeout_s=0.2, failure_policy=FailurePolicy.FAIL_OPEN, probe_every_s=0
    )
    try:
        await store.reserve(WHO, tokens=1, usd=Decimal(0))
        own_redis.pause()
        with caplog.at_level(logging.WARNING, logger="service.quotas"):
            first = await store.reserve(WHO, tokens=1, usd=Decimal(0))
            second = await store.reserve(WHO, tokens=1, usd=Decimal(0))
            await store.settle(first, tokens=1, usd=Decimal("0.1"))  # a no-op, not an error

        assert first.unchecked
        assert second.unchecked
        assert not first.tracked
        assert store.unchecked_admissions == 2
        assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
    finally:
        own_redis.resume()
        await store.close()


async def test_settle_during_an_outage_does_not_raise(own_redis: RedisServer) -> None:
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.2)
    try:
        reservation = await store.reserve(WHO, tokens=1, usd=Decimal("0.1"))
        own_redis.stop()
        await store.settle(reservation, tokens=1, usd=Decimal("0.05"))
        await store.release(reservation)
        assert store.store_failures >= 1
    finally:
        await store.close()


async def test_while_down_only_one_call_at_a_time_tries_redis(own_redis: RedisServer) -> None:
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.3, probe_every_s=60)
    try:
        await store.reserve(WHO, tokens=1, usd=Decimal(0))
        own_redis.pause()
        with pytest.raises(ServiceUnavailableError):
            await store.reserve(WHO, tokens=1, usd=Decimal(0))  # found it down: 0.3 s
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            await store.reserve(WHO, tokens=1, usd=Decimal(0))
        assert time.monotonic() - started < 0.05  # not tried again before the next probe
        assert info.value.retry_after_s == 60
    finally:
        own_redis.resume()
        await store.close()


async def test_one_probe_at_a_time_the_others_fail_at_once(own_redis: RedisServer) -> None:
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.3, probe_every_s=0)
    try:
        await store.reserve(WHO, tokens=1, usd=Decimal(0))
        own_redis.pause()
        with pytest.raises(ServiceUnavailableError):
            await store.reserve(WHO, tokens=1, usd=Decimal(0))

        probe = asyncio.ensure_future(store.reserve(WHO, tokens=1, usd=Decimal(0)))
        await asyncio.sleep(0)  # the probe is waiting on the frozen Redis
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.reserve(WHO, tokens=1, usd=Decimal(0)) for _ in range(20)),
            return_exceptions=True,
        )
        assert time.monotonic() - started < 0.1
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
        with pytest.raises(ServiceUnavailableError):
            await probe
    finally:
        own_redis.resume()
        await store.close()


async def test_a_restart_costs_no_call_on_a_pooled_connection(own_redis: RedisServer) -> None:
    store = RedisQuotaStore.from_url(own_redis.url, timeout_s=0.5)
    try:
        # Ten connections in the pool, every one of them broken by the restart.
        await asyncio.gather(*(store.reserve(WHO, tokens=1, usd=Decimal(0)) for _ in range(10)))
        own_redis.stop()
        own_redis.restart()
        results = await asyncio.gather(
            *(store.reserve(WHO, tokens=1, usd=Decimal(0)) for _ in range(10))
        )
        assert all(r.tracked for r in results)
        assert store.store_failures == 0
    finally:
        await store.close()


async def test_more_concurrent_calls_than_connections_wait_for_one(redis_url: str) -> None:
    store = RedisQuotaStore.from_url(redis_url, max_connections=2)
    try:
        who = Caller("busy", b"\0" * 32, limits=CallerLimits(requests_per_minute=100))
        await asyncio.gather(*(store.reserve(who, tokens=1, usd=Decimal(0)) for _ in range(40)))
        assert store.store_failures == 0
        status = await store.status(who)
        assert status.requests_per_minute is not None
        assert status.requests_per_minute.used == 40
    finally:
        await store.close()
