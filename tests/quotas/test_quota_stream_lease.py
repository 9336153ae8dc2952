"""A stream without a deadline has no bound to lease its reservation for: it renews the lease
while it runs, so its hold never lapses under it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from tests.harness import ALPHA_KEY, auth, start_gateway, user

MODEL = "anthropic/claude-3.5-haiku"
# The upstream budget (first event) of 0.3 s plus a 0.2 s margin: an unrenewed hold would
# lapse 0.5 s after the reserve; the stream runs ~2.5 s.
TIMEOUT_MS = 300
MARGIN_S = 0.2
CALLERS = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(usd_per_day=Decimal("1.00")))]


async def used_usd(stub: Any) -> float:
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    [usd] = usage.quotas
    return float(usd.used)


async def test_a_long_stream_without_a_deadline_keeps_its_hold(
    gateway_store: dict[str, Any],
) -> None:
    request = pb.StreamCompleteRequest(
        model=MODEL,
        messages=[user("Long [[sim:tokens=25]] [[sim:pace=100]]")],
        sampling=pb.SamplingParams(max_tokens=1000),
    )
    async with start_gateway(
        callers=CALLERS,
        gateway={**gateway_store, "quota_lease_margin_s": MARGIN_S},
        openrouter={"timeout_ms": TIMEOUT_MS},
    ) as gw:
        call = gw.stub.StreamComplete(request, metadata=auth())  # no deadline
        started = time.monotonic()
        first = await call.read()
        assert isinstance(first, pb.StreamCompleteResponse)
        held = await used_usd(gw.stub)
        assert held > 0.004  # 1000 completion tokens at $4/M, reserved

        # Three unrenewed leases' worth later, the stream still runs and still holds.
        await asyncio.sleep(3 * (TIMEOUT_MS / 1000 + MARGIN_S) - (time.monotonic() - started))
        assert not call.done()
        assert await used_usd(gw.stub) == pytest.approx(held)

        last = first
        while (message := await call.read()) is not grpc.aio.EOF:
            assert isinstance(message, pb.StreamCompleteResponse)
            last = message
        assert last.HasField("end")
        spent = await used_usd(gw.stub)

    assert 0 < spent < held  # settled to what it cost: 25 tokens, not 1000
