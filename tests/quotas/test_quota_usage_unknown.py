"""GetUsage while Redis is down: the ledger's totals, and the caller's limits marked unknown,
under either failure policy; the figures come back once Redis does."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from tests.harness import ALPHA_KEY, Harness, auth, start_gateway, user
from tests.servers import RedisServer, start_redis

LIMITS = CallerLimits(requests_per_minute=100, usd_per_day=Decimal("2.5"))
CALLERS = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), LIMITS)]
REQUEST = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])


async def known_again(gw: Harness) -> None:
    """Once the store has probed Redis again (every 100 ms while down), usage is known."""
    for _ in range(40):
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
        if not any(q.usage_unknown for q in usage.quotas):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("usage still unknown 2 s after Redis came back")


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_get_usage_reports_totals_and_unknown_quotas_while_redis_is_down(
    policy: str,
) -> None:
    redis: RedisServer = start_redis()
    try:
        settings = {"redis_url": redis.url, "quota_failure_policy": policy}
        async with start_gateway(callers=CALLERS, gateway=settings) as gw:
            await gw.stub.Complete(REQUEST, metadata=auth())
            redis.stop()
            if policy == "fail_closed":
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await gw.stub.Complete(REQUEST, metadata=auth())
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                await gw.stub.Complete(REQUEST, metadata=auth())  # admitted unchecked
            await gw.rows_written(2)

            down = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())

            redis.restart()  # empty: it knows only what happens from now on
            await known_again(gw)
            await gw.stub.Complete(REQUEST, metadata=auth())
            up = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    finally:
        redis.stop()

    assert down.request_count == 2
    assert down.cost_usd > 0
    assert [(q.kind, q.limit, q.usage_unknown) for q in down.quotas] == [
        (pb.QUOTA_KIND_REQUESTS_PER_MINUTE, 100, True),
        (pb.QUOTA_KIND_USD_PER_DAY, 2.5, True),
    ]
    assert all(q.used == 0 and q.remaining == 0 for q in down.quotas)
    assert not any(q.HasField("reset_time") for q in down.quotas)

    assert not any(q.usage_unknown for q in up.quotas)
    rpm = next(q for q in up.quotas if q.kind == pb.QUOTA_KIND_REQUESTS_PER_MINUTE)
    assert (rpm.used, rpm.remaining) == (1, 99)
    assert rpm.HasField("reset_time")
