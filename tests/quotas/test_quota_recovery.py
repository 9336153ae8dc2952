"""Redis stopped and restarted under load: once it answers again, calls succeed within a
second, and no pooled connection left over from before costs a refusal afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from tests.harness import ALPHA_KEY, Harness, auth, start_gateway, user
from tests.servers import RedisServer

CALLERS = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(requests_per_minute=10**9))]
REQUEST = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
AFTER_S = 1.5
"""How long the load runs on after the first OK, to count refusals that follow it."""


@dataclass(frozen=True, slots=True)
class Call:
    started: float
    ended: float
    code: grpc.StatusCode


@dataclass
class Load:
    """Callers calling back to back; every finished call is logged."""

    calls: list[Call] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self, gw: Harness) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                await gw.stub.Complete(REQUEST, metadata=auth(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            self.calls.append(Call(started, time.monotonic(), code))
            self.changed.set()

    async def until(self, done: Callable[[list[Call]], bool], limit_s: float = 10) -> None:
        async with asyncio.timeout(limit_s):
            while not done(self.calls):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def redis(redis_factory: Callable[[], RedisServer]) -> RedisServer:
    """A Redis of this test's own, to stop and restart."""
    return redis_factory()


@pytest.mark.parametrize("callers", [10, 60])
async def test_calls_succeed_within_a_second_of_redis_answering_again(
    redis: RedisServer, callers: int
) -> None:
    load = Load()
    async with start_gateway(callers=CALLERS, gateway={"redis_url": redis.url}) as gw:
        tasks = [asyncio.create_task(load.caller(gw)) for _ in range(callers)]
        try:
            # Every caller through at least twice: the pool holds a connection per caller.
            await load.until(lambda calls: len(calls) >= 2 * callers)
            assert {c.code for c in load.calls} == {grpc.StatusCode.OK}

            await asyncio.to_thread(redis.stop)
            down = time.monotonic()
            await load.until(lambda calls: sum(c.started > down for c in calls) >= 2 * callers)
            restarting = time.monotonic()
            await asyncio.to_thread(redis.restart)
            up = time.monotonic()  # it answers PING

            def first_ok(calls: list[Call]) -> float | None:
                return min(
                    (c.ended for c in calls if c.code == grpc.StatusCode.OK and c.ended > up),
                    default=None,
                )

            await load.until(lambda calls: first_ok(calls) is not None)
            recovered = first_ok(load.calls)
            assert recovered is not None
            await load.until(lambda calls: calls[-1].ended > recovered + AFTER_S)
        finally:
            load.stop.set()
            await asyncio.gather(*tasks)

    outage = [c for c in load.calls if c.started > down and c.ended < restarting]
    refused_after = [
        c for c in load.calls if c.started >= recovered and c.code != grpc.StatusCode.OK
    ]
    served_after = [c for c in load.calls if c.started >= recovered]
    figures = (
        f"{callers} callers: {len(outage)} calls while down "
        f"({sum(c.code == grpc.StatusCode.UNAVAILABLE for c in outage)} UNAVAILABLE); "
        f"first OK {recovered - up:.3f} s after Redis answered; "
        f"{len(refused_after)} refused of {len(served_after)} after that"
    )
    print(figures)
    assert {c.code for c in outage} == {grpc.StatusCode.UNAVAILABLE}, figures
    assert recovered - up < 1.0, figures
    assert not refused_after, figures
