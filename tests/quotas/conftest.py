"""Quota fixtures: every store test body runs against the memory store and against Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from service.domain.quotas import QuotaStore
from service.quotas import MemoryQuotaStore, RedisQuotaStore

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
async def store_factory(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[Callable[[], QuotaStore]]:
    """Makes stores that share state: Redis replicas on one server and one key prefix, or
    (memory) the same in-process store again."""
    made: list[QuotaStore] = []
    if request.param == "memory":
        memory = MemoryQuotaStore(clock=clock)

        def make() -> QuotaStore:
            return memory

    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = f"test:{uuid.uuid4().hex[:8]}"

        def make() -> QuotaStore:
            store = RedisQuotaStore.from_url(url, key_prefix=prefix, clock=clock, timeout_s=2.0)
            made.append(store)
            return store

    try:
        yield make
    finally:
        for store in made:
            await store.close()


@pytest.fixture
def store(store_factory: Callable[[], QuotaStore]) -> QuotaStore:
    return store_factory()


@pytest.fixture(params=["memory", "redis"])
def gateway_store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Gateway settings selecting the quota store: in-process, or a real (flushed) Redis."""
    if request.param == "memory":
        return {}
    url: str = request.getfixturevalue("redis_url")
    return {"redis_url": url}
