"""A busy gateway is not a dead Redis: a call whose answer came late, while Redis answered
another call meanwhile, is tried once more instead of marking the store down (which refused
every call for a probe interval: the 50-concurrent budget test failed so under a loaded
machine). A Redis that answers nobody still fails within the timeout.

A real ``redis-server`` behind a loopback TCP relay of the test's own, which can hold back the
next answer Redis sends, as a process too busy to read it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from service.domain.callers import Caller, CallerLimits, hash_key
from service.errors import ServiceUnavailableError
from service.quotas.redis import RedisQuotaStore
from tests.servers import RedisServer

CALLER = Caller("alpha", hash_key("k"), ("*",), CallerLimits(usd_per_day=Decimal(1000)))
TIMEOUT_S = 0.3


class Relay:
    """Forwards bytes between clients and Redis; ``hold_next`` delays Redis's next answer on
    one connection; ``hold_all`` stops forwarding answers (a Redis that answers nobody)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.port = 0
        self._hold_next_s = 0.0
        self.holding = asyncio.Event()
        self._hold_all = False
        self._tasks: set[asyncio.Task[None]] = set()

    def hold_next(self, seconds: float) -> None:
        self._hold_next_s = seconds
        self.holding.clear()

    def hold_all(self) -> None:
        self._hold_all = True

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if answers and self._hold_all:
                    continue  # swallowed: Redis never seems to answer
                if answers and self._hold_next_s:
                    hold, self._hold_next_s = self._hold_next_s, 0.0
                    self.holding.set()
                    await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._target)
        for task in (
            asyncio.create_task(self._pipe(client_r, redis_w, answers=False)),
            asyncio.create_task(self._pipe(redis_r, client_w, answers=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def relay(redis_server: RedisServer, redis_url: str) -> AsyncIterator[Relay]:
    async with Relay(redis_server.port).running() as running:
        yield running


def store_via(relay: Relay) -> RedisQuotaStore:
    return RedisQuotaStore.from_url(
        f"redis://127.0.0.1:{relay.port}", key_prefix=f"busy{time.time_ns()}", timeout_s=TIMEOUT_S
    )


async def reserve(store: RedisQuotaStore) -> object:
    return await store.reserve(CALLER, tokens=10, usd=Decimal("0.001"))


async def test_a_late_answer_while_redis_answers_others_is_tried_again_not_a_refusal(
    relay: Relay,
) -> None:
    store = store_via(relay)
    try:
        await store.warm(connections=2)
        relay.hold_next(TIMEOUT_S + 0.3)
        late = asyncio.create_task(reserve(store))
        await relay.holding.wait()  # the late call's answer is held back
        await reserve(store)  # another call is answered meanwhile: Redis is up
        await late  # its first try timed out; the second is answered
        assert store.store_failures == 0
        await reserve(store)  # and the store was never marked down
    finally:
        await store.close()


async def test_a_redis_that_answers_nobody_still_fails_within_the_timeout(relay: Relay) -> None:
    store = store_via(relay)
    try:
        await store.warm(connections=2)
        relay.hold_all()
        began = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await reserve(store)
        assert time.monotonic() - began < 2 * TIMEOUT_S  # one timeout, no second try
        assert store.store_failures == 1
    finally:
        await store.close()
