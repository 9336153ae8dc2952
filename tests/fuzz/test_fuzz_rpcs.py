"""Hostile input to every RPC of a real gateway process: random bytes and random field values
never get INTERNAL or UNKNOWN, the process stays up and its memory stays bounded.

Seeded and time-bounded: ``LLMGW_FUZZ_SECONDS`` (default 4 s in ``make test``; ``make soak``
runs longer) and ``LLMGW_FUZZ_SEED`` (default 1; a finding names its seed, worker and case).
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from service.domain.callers import Caller, CallerLimits, hash_key
from service.server import SERVICE_NAME
from service.simulator import SimulatorConfig, run_simulator
from tests.fuzz.fuzzer import all_method_names, covered, fuzz, methods
from tests.gateway_process import GatewayProcess, gateway_process
from tests.harness import ALPHA_KEY, auth, user

SECONDS = float(os.environ.get("LLMGW_FUZZ_SECONDS", "4"))
SEED = int(os.environ.get("LLMGW_FUZZ_SEED", "1"))
RSS_GROWTH_MB = float(os.environ.get("LLMGW_FUZZ_RSS_GROWTH_MB", "150"))
# Limits high enough to admit the fuzz, so the quota code runs on every call.
LIMITS = CallerLimits(
    requests_per_minute=10**6, tokens_per_minute=10**9, usd_per_day=Decimal(10**4)
)
CALLERS = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), LIMITS)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def warm_up(child: GatewayProcess) -> None:
    """A few ordinary calls, so start-up allocations are not counted as growth."""
    async with grpc.aio.insecure_channel(child.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        for _ in range(20):
            await stub.Complete(
                pb.CompleteRequest(messages=[user("Hi [[sim:tokens=3]]")]), metadata=auth()
            )
        await stub.ListModels(pb.ListModelsRequest(), metadata=auth())
        await stub.GetUsage(pb.GetUsageRequest(), metadata=auth())


async def serving(child: GatewayProcess) -> int:
    async with grpc.aio.insecure_channel(child.address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = await check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
        assert isinstance(reply, health_pb2.HealthCheckResponse)
        return reply.status


@pytest.mark.timeout(SECONDS + 60)
async def test_hostile_calls_to_every_rpc_get_their_own_status_and_hurt_nothing() -> None:
    env = {
        "OPENROUTER_MAX_RETRIES": "1",
        "OPENROUTER_BACKOFF_BASE_MS": "10",
        "OPENROUTER_BACKOFF_MAX_MS": "20",
    }
    async with (
        run_simulator(SimulatorConfig(keepalive_comments=1)) as sim,
        gateway_process(sim.base_url, CALLERS, env=env) as child,
    ):
        await warm_up(child)
        before = rss_mb(child.process.pid)
        report = await fuzz(child.address, seconds=SECONDS, seed=SEED, caller_key=ALPHA_KEY)
        assert child.process.returncode is None, child.output()[-3000:]
        status = await serving(child)
        after = rss_mb(child.process.pid)

    summary = f"{report.summary()}\nRSS {before:.0f} -> {after:.0f} MB"
    print(summary)
    assert not report.findings, summary
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert covered(report) == all_method_names(), summary
    # The fuzz got past decoding, authentication and validation too, not only refused at the
    # door: some of the contract's calls were answered.
    contract = {m.name for m in methods() if m.path.startswith("/llmgateway.")}
    assert sum(report.codes[(name, "OK")] for name in contract) > 0, summary
    assert after - before < RSS_GROWTH_MB, summary
