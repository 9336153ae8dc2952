"""A replica killed with calls in flight: its Redis holds lapse with their leases, and the
caller is served again by the other replica, without waiting for midnight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from service.domain.callers import Caller, CallerLimits, hash_key
from service.simulator import SimulatorConfig, run_simulator
from service.simulator.state import RecordedRequest
from tests.gateway_process import gateway_process
from tests.harness import ALPHA_KEY, auth, rich_error, serve_gateway, user

CHAT_PATH = "/api/v1/chat/completions"
MODEL = "anthropic/claude-3.5-haiku"  # $4 per million completion tokens
MAX_TOKENS = 1000
HOLDS = 3
# Each reservation is ~$0.00402 (1000 tokens at $4/M plus the prompt): three fill the
# budget, and a fourth call fits only once they are gone.
BUDGET = Decimal("0.0125")
DEADLINE_S = 2.0
MARGIN_S = 0.5
CALLERS = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(usd_per_day=BUDGET))]


def request(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        model=MODEL, messages=[user(text)], sampling=pb.SamplingParams(max_tokens=MAX_TOKENS)
    )


def holding(i: int) -> Callable[[RecordedRequest], bool]:
    return lambda r: r.path == CHAT_PATH and f"Hold {i} " in str(r.body)


async def test_a_killed_replicas_holds_lapse_with_their_leases(redis_url: str) -> None:
    settings = {"redis_url": redis_url, "quota_lease_margin_s": MARGIN_S}
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_QUOTA_LEASE_MARGIN_S": str(MARGIN_S)}
    async with (
        run_simulator(SimulatorConfig(keepalive_comments=2)) as sim,
        gateway_process(sim.base_url, CALLERS, env=env) as doomed,
        serve_gateway(sim, callers=CALLERS, gateway=settings) as survivor,
        grpc.aio.insecure_channel(doomed.address) as channel,
    ):
        stub = pb_grpc.CompletionServiceStub(channel)
        reserved_at = time.monotonic()
        # Calls that never end upstream: they hold their reservations until the kill.
        held = [
            asyncio.ensure_future(
                stub.Complete(
                    request(f"Hold {i} [[sim:hang]]"), metadata=auth(), timeout=DEADLINE_S
                )
            )
            for i in range(HOLDS)
        ]
        for i in range(HOLDS):
            await sim.state.wait_for_request(holding(i))

        doomed.kill()
        assert await doomed.process.wait() == -9
        for call in held:
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE

        # The dead replica's holds still count: the survivor refuses, and says when the
        # leases it waits for lapse (the deadline plus the margin, counted from the reserve).
        try:
            await survivor.stub.Complete(request("After [[sim:tokens=2]]"), metadata=auth())
        except grpc.aio.AioRpcError as exc:
            error = rich_error(exc)
        else:
            raise AssertionError("served while the dead replica's holds still counted")
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = error.detail(error_details_pb2.RetryInfo).retry_delay
        wait_s = delay.seconds + delay.nanos / 1e9
        lease_end = reserved_at + DEADLINE_S + MARGIN_S
        assert 0 < wait_s <= lease_end - time.monotonic() + 0.1

        # Waiting is all it takes: no settle ever comes from the dead replica.
        await asyncio.sleep(wait_s)
        served = await survivor.stub.Complete(request("After [[sim:tokens=2]]"), metadata=auth())
        served_after = time.monotonic() - reserved_at

        usage = await survivor.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())

    assert served.usage.completion_tokens == 2
    assert served_after < DEADLINE_S + MARGIN_S + 1.0
    [usd] = usage.quotas
    assert usd.used == pytest.approx(served.usage.cost_usd)  # only what was spent
