"""Driving a gateway through its drain: health polled and calls made until they are refused.

Shared by the in-process and process tests (``test_drain_delay.py``) and the image check.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import StreamCall, health_check, health_watch
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


async def serving_address(process: asyncio.subprocess.Process) -> str:
    """Reads a starting gateway's stderr up to its banner and returns where it serves."""
    assert process.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while not lines or "serving on" not in lines[-1]:
            lines.append((await process.stderr.readline()).decode())
            assert lines[-1], f"exited before serving: {lines}"
    found = re.search(r"serving on (\S+)", lines[-1])
    assert found is not None
    return found.group(1)


PROCESS_TEST_S = 45.0
"""A process test's whole budget, start-up included: below pytest-timeout's 60 s, so a test
that stalls fails here, inside the running loop, with the stall in its traceback and its
cleanup run. pytest-timeout's signal instead interrupts the loop itself; the runner's
cancellation of the tasks left half-way then never finished, and the whole session hung
in that test's teardown (seen under load in full runs)."""


@asynccontextmanager
async def serving_process(
    *command: str, budget_s: float | None = None, **options: Any
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A gateway process (``command``) once it serves, and its address; killed if still
    running at the end. ``budget_s`` bounds the block, start-up included (a test passes
    ``PROCESS_TEST_S``; the image check's container start is its own)."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, **options
    )
    try:
        async with asyncio.timeout(budget_s):
            yield process, await serving_address(process)
    finally:
        if process.returncode is None:
            process.kill()
            async with asyncio.timeout(10):
                await process.wait()


async def drain_with_a_stream_in_flight(
    channel: grpc.aio.Channel, terminate: Callable[[], None], *, key: str, delay_s: float
) -> None:
    """The whole rollout sequence against a serving gateway: a stream in flight, then
    ``terminate()`` (SIGTERM): NOT_SERVING at once, calls served through the delay, then
    refused, and the stream ends OK with its ``end``."""
    watch = health_watch(channel)(health_pb2.HealthCheckRequest())
    assert getattr(await watch.read(), "status", None) == SERVING
    stream = pb_grpc.CompletionServiceStub(channel).StreamComplete(
        pb.StreamCompleteRequest(messages=[user(LONG)]), metadata=auth(key)
    )
    assert isinstance(await stream.read(), pb.StreamCompleteResponse)
    began = time.monotonic()
    terminate()
    assert getattr(await watch.read(), "status", None) == NOT_SERVING
    watch.cancel()
    check_sequence(await probe_until_refused(channel, began, key=key), delay_s)
    rest = await rest_of(stream)
    assert await stream.code() is grpc.StatusCode.OK
    assert rest[-1].HasField("end")
