"""Driving a gateway through its drain: health polled and calls made until they are refused.

Shared by the in-process and process tests (``test_drain_delay.py``) and the image check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import StreamCall, health_check
from tests.harness import auth, rich_error, user

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Longer than the delay: the stream is in flight when calls start being refused.
LONG = "Long one [[sim:pace=40]] [[sim:tokens=40]]"
MAX_PROBES = 2_000


async def rest_of(stream: StreamCall) -> list[pb.StreamCompleteResponse]:
    rest: list[pb.StreamCompleteResponse] = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        assert isinstance(message, pb.StreamCompleteResponse)
        rest.append(message)
    return rest


@dataclass
class Probe:
    at: float
    """Seconds since the stop began."""
    health: int
    code: grpc.StatusCode
    reason: str = ""


async def probe_until_refused(
    channel: grpc.aio.Channel, began: float, key: str, *, after_refusal: int = 3
) -> list[Probe]:
    """Health check then a Complete, again and again, until ``after_refusal`` calls past the
    first refusal."""
    stub = pb_grpc.CompletionServiceStub(channel)
    check = health_check(channel)
    probes: list[Probe] = []
    refused = 0
    for _ in range(MAX_PROBES):
        health = await check(health_pb2.HealthCheckRequest())
        try:
            await stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth(key))
            probes.append(Probe(time.monotonic() - began, health.status, grpc.StatusCode.OK))
        except grpc.aio.AioRpcError as exc:
            error = rich_error(exc)
            probes.append(
                Probe(time.monotonic() - began, health.status, error.code, error.info.reason)
            )
            refused += 1
            if refused > after_refusal:
                return probes
    raise AssertionError(f"never refused in {MAX_PROBES} calls")


def check_sequence(probes: list[Probe], delay_s: float) -> None:
    first_refusal = next(i for i, p in enumerate(probes) if p.code is not grpc.StatusCode.OK)
    served, refused = probes[:first_refusal], probes[first_refusal:]
    # Health said NOT_SERVING from the first probe on, while calls were still served ...
    assert all(p.health == NOT_SERVING for p in probes)
    assert len(served) >= 3, probes[:5]
    assert all(p.code is grpc.StatusCode.OK for p in served)
    # ... for the whole delay, and only then were they refused, every one after the first.
    assert served[-1].at < refused[0].at
    assert refused[0].at >= delay_s - 0.05, (served[-1].at, refused[0].at)
    assert {(p.code, p.reason) for p in refused} == {
        (grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE")
    }
