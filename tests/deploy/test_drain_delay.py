"""Rollouts without dropped calls: after SIGTERM, health says NOT_SERVING while calls are still
served for ``GATEWAY_DRAIN_DELAY_S``; then new calls are refused (UNAVAILABLE,
``SERVICE_UNAVAILABLE``) while the calls in flight finish within the grace.

The tests poll health and call through the whole sequence, in-process and through a real
``python -m service`` process sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import (
    PYTHON,
    ROOT,
    StreamCall,
    health_check,
    health_watch,
    service_env,
)
from tests.harness import auth, rich_error, start_gateway, user

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DELAY_S = 0.6
# Longer than the delay: the stream is in flight when calls start being refused.
LONG = "Long one [[sim:pace=40]] [[sim:tokens=40]]"
MAX_PROBES = 2_000


async def _rest(stream: StreamCall) -> list[pb.StreamCompleteResponse]:
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


async def _probe_until_refused(
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


def _check_sequence(probes: list[Probe], delay_s: float) -> None:
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


async def test_calls_are_served_through_the_delay_then_refused_while_streams_finish() -> None:
    async with start_gateway(gateway={"drain_delay_s": DELAY_S, "shutdown_grace_s": 10}) as gw:
        stream = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(LONG)]), metadata=auth()
        )
        first = await stream.read()
        assert isinstance(first, pb.StreamCompleteResponse)

        watch = health_watch(gw.channel)(health_pb2.HealthCheckRequest())
        assert getattr(await watch.read(), "status", None) == SERVING
        began = time.monotonic()
        stopping = asyncio.create_task(gw.server.stop())
        assert getattr(await watch.read(), "status", None) == NOT_SERVING
        watch.cancel()

        probes = await _probe_until_refused(gw.channel, began, key="key-alpha-CALLERSECRET")
        _check_sequence(probes, DELAY_S)
        assert not stopping.done()  # the stream in flight holds the drain open

        rest = await _rest(stream)
        assert await stream.code() is grpc.StatusCode.OK
        assert rest[-1].HasField("end")
        assert sum(m.HasField("delta") for m in [first, *rest]) == 40
        await stopping
        assert gw.sim.state.disconnects == []


async def test_a_stop_without_a_delay_refuses_at_once() -> None:
    async with start_gateway(gateway={"drain_delay_s": DELAY_S}) as gw:
        began = time.monotonic()
        stopping = asyncio.create_task(gw.server.stop(delay_s=0))
        # The idle server finishes its drain at once: no delay was asked for.
        async with asyncio.timeout(DELAY_S):
            await stopping
        assert time.monotonic() - began < DELAY_S


async def _serving_address(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while not lines or "serving on" not in lines[-1]:
            lines.append((await process.stderr.readline()).decode())
            assert lines[-1], f"exited before serving: {lines}"
    found = re.search(r"serving on (\S+)", lines[-1])
    assert found is not None
    return found.group(1)


async def test_sigterm_keeps_serving_for_the_delay_then_refuses_then_exits_0() -> None:
    delay_s = 1.0
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        cwd=ROOT,
        env=service_env(GATEWAY_DRAIN_DELAY_S=str(delay_s), GATEWAY_SHUTDOWN_GRACE_S="10"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        address = await _serving_address(process)
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_watch(channel)(health_pb2.HealthCheckRequest())
            assert getattr(await watch.read(), "status", None) == SERVING
            stream = pb_grpc.CompletionServiceStub(channel).StreamComplete(
                pb.StreamCompleteRequest(messages=[user(LONG)]), metadata=auth("demo-key")
            )
            assert isinstance(await stream.read(), pb.StreamCompleteResponse)
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert getattr(await watch.read(), "status", None) == NOT_SERVING
            watch.cancel()
            probes = await _probe_until_refused(channel, began, key="demo-key")
            _check_sequence(probes, delay_s)
            rest = await _rest(stream)
            assert await stream.code() is grpc.StatusCode.OK
            assert rest[-1].HasField("end")
        assert process.stderr is not None
        async with asyncio.timeout(15):
            output = (await process.stderr.read()).decode()
            assert await process.wait() == 0
        assert "draining… (serving for 1 s more, then refusing new calls)" in output
        assert "Traceback" not in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_signal_cuts_the_delay_short() -> None:
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        cwd=ROOT,
        env=service_env(GATEWAY_DRAIN_DELAY_S="60"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        address = await _serving_address(process)
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_watch(channel)(health_pb2.HealthCheckRequest())
            assert getattr(await watch.read(), "status", None) == SERVING
            process.send_signal(signal.SIGTERM)
            assert getattr(await watch.read(), "status", None) == NOT_SERVING
            watch.cancel()
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
        assert time.monotonic() - began < 10  # not the 60 s delay
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
