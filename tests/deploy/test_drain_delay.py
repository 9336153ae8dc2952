"""Rollouts without dropped calls: after SIGTERM, health says NOT_SERVING while calls are still
served for ``GATEWAY_DRAIN_DELAY_S``; then new calls are refused (UNAVAILABLE,
``SERVICE_UNAVAILABLE``) while the calls in flight finish within the grace; what still runs
after it is cut with ``SERVICE_UNAVAILABLE`` and RetryInfo.

The tests poll health and call through the whole sequence, in-process and through a real
``python -m service`` process sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.healthcheck import local_address
from tests.api.support import PYTHON, ROOT, health_watch, run_process, service_env
from tests.deploy.drain import (
    LONG,
    PROCESS_TEST_S,
    check_sequence,
    drain_with_a_stream_in_flight,
    probe_until_refused,
    rest_of,
    serving_process,
)
from tests.harness import ALPHA_KEY, auth, rich_error, start_gateway, user

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DELAY_S = 0.6


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

        probes = await probe_until_refused(gw.channel, began, key="key-alpha-CALLERSECRET")
        check_sequence(probes, DELAY_S)
        assert not stopping.done()  # the stream in flight holds the drain open

        rest = await rest_of(stream)
        assert await stream.code() is grpc.StatusCode.OK
        assert rest[-1].HasField("end")
        # Forty tokens (one delta each while the gateway keeps up; merged if it fell behind).
        assert len("".join(m.delta.content for m in [first, *rest]).split()) == 40
        await stopping
        assert gw.sim.state.disconnects == []


async def test_the_whole_sequence_ends_with_the_stream_cut_after_the_grace() -> None:
    """Delay (served), grace (refused, the stream still running), then the stream cut with
    UNAVAILABLE / SERVICE_UNAVAILABLE, ErrorInfo and RetryInfo in its trailers."""
    delay_s, grace_s = 0.5, 0.5
    endless = "Endless [[sim:pace=40]] [[sim:tokens=400]]"  # 16 s: outlives the grace
    settings = {"drain_delay_s": delay_s, "shutdown_grace_s": grace_s}
    async with start_gateway(gateway=settings) as gw:
        stream = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(endless)]), metadata=auth()
        )
        assert isinstance(await stream.read(), pb.StreamCompleteResponse)
        began = time.monotonic()
        stopping = asyncio.create_task(gw.server.stop())
        check_sequence(await probe_until_refused(gw.channel, began, key=ALPHA_KEY), delay_s)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await rest_of(stream)
        cut_at = time.monotonic() - began
        await stopping
    assert cut_at >= delay_s + grace_s - 0.05
    error = rich_error(cut.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE")
    assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds >= 1


async def test_a_stop_during_a_stop_joins_it_cutting_the_delay_and_the_calls_in_flight() -> None:
    """A test that fails while a stop runs has its teardown stop the gateway again: that stop
    joins the first (one sequence, not two closing the ledger at once), ends the delay and,
    after its own grace (0), cuts the stream still running. It used to wait the whole delay
    again beside the first stop. A stop after that returns at once."""
    endless = "Endless [[sim:pace=40]] [[sim:tokens=400]]"
    async with start_gateway(gateway={"drain_delay_s": 30, "shutdown_grace_s": 30}) as gw:
        stream = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(endless)]), metadata=auth()
        )
        assert isinstance(await stream.read(), pb.StreamCompleteResponse)
        watch = health_watch(gw.channel)(health_pb2.HealthCheckRequest())
        assert getattr(await watch.read(), "status", None) == SERVING
        first = asyncio.create_task(gw.server.stop())
        assert getattr(await watch.read(), "status", None) == NOT_SERVING  # in its delay
        watch.cancel()
        began = time.monotonic()
        async with asyncio.timeout(10):
            await gw.server.stop(0)
        assert first.done()
        await first
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await rest_of(stream)
        took = time.monotonic() - began
        again = time.monotonic()
        await gw.server.stop()
        assert time.monotonic() - again < 0.5  # not the 30 s delay once more
    assert took < 10
    error = rich_error(cut.value)
    assert (error.code, error.info.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE")
    assert len(gw.finished) == 1  # the stream, accounted once


async def test_a_stop_without_a_delay_refuses_at_once() -> None:
    async with start_gateway(gateway={"drain_delay_s": DELAY_S}) as gw:
        began = time.monotonic()
        stopping = asyncio.create_task(gw.server.stop(delay_s=0))
        # The idle server finishes its drain at once: no delay was asked for.
        async with asyncio.timeout(DELAY_S):
            await stopping
        assert time.monotonic() - began < DELAY_S


async def test_sigterm_keeps_serving_for_the_delay_then_refuses_then_exits_0() -> None:
    delay_s = 1.0
    env = service_env(GATEWAY_DRAIN_DELAY_S=str(delay_s), GATEWAY_SHUTDOWN_GRACE_S="10")
    async with serving_process(
        PYTHON, "-m", "service", cwd=ROOT, env=env, budget_s=PROCESS_TEST_S
    ) as (process, at):
        async with grpc.aio.insecure_channel(at) as channel:
            await drain_with_a_stream_in_flight(
                channel,
                lambda: process.send_signal(signal.SIGTERM),
                key="demo-key",
                delay_s=delay_s,
            )
        assert process.stderr is not None
        async with asyncio.timeout(15):
            output = (await process.stderr.read()).decode()
            assert await process.wait() == 0
        assert "draining… (serving for 1 s more, then refusing new calls)" in output
        assert "Traceback" not in output


async def test_a_second_signal_cuts_the_delay_short() -> None:
    env = service_env(GATEWAY_DRAIN_DELAY_S="60")
    async with serving_process(
        PYTHON, "-m", "service", cwd=ROOT, env=env, budget_s=PROCESS_TEST_S
    ) as (process, at):
        async with grpc.aio.insecure_channel(at) as channel:
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


@pytest.mark.parametrize(
    ("listen", "asked"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:7000", "[::1]:7000"),
        ("10.1.2.3:9", "10.1.2.3:9"),
        ("unix:/run/gw.sock", "unix:/run/gw.sock"),
    ],
)
def test_the_healthcheck_asks_where_the_gateway_listens(listen: str, asked: str) -> None:
    assert local_address(listen) == asked


async def test_the_healthcheck_command_follows_gateway_listen() -> None:
    async with start_gateway() as gw:
        for state, code in ((None, 0), ("stop", 1)):
            if state == "stop":
                await gw.server.health.enter_graceful_shutdown()
            outcome = await run_process(
                PYTHON,
                "-m",
                "service.healthcheck",
                env=service_env(GATEWAY_LISTEN=f"0.0.0.0:{gw.server.port}"),
            )
            assert outcome.returncode == code, outcome.stderr
