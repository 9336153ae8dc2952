"""Draining: NOT_SERVING at once, new calls refused, in-flight streams finish within the grace
period and are cut after it (UNAVAILABLE with ErrorInfo and RetryInfo, upstream closed, row
kept); ``python -m service`` drains on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import PYTHON, ROOT, StreamCall, health_watch, service_env
from tests.harness import Harness, auth, rich_error, start_gateway, user


def _words(messages: list[pb.StreamCompleteResponse]) -> int:
    """Tokens relayed (one word each): a delta may carry several when the gateway lagged."""
    return len("".join(m.delta.content for m in messages if m.HasField("delta")).split())


SLOW = "Slow one [[sim:pace=20]] [[sim:tokens=30]]"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _first_delta(call: StreamCall) -> list[pb.StreamCompleteResponse]:
    seen: list[pb.StreamCompleteResponse] = []
    while not seen or not seen[-1].HasField("delta"):
        message = await call.read()
        assert isinstance(message, pb.StreamCompleteResponse)
        seen.append(message)
    return seen


async def _rest(call: StreamCall) -> list[pb.StreamCompleteResponse]:
    rest: list[pb.StreamCompleteResponse] = []
    while (message := await call.read()) is not grpc.aio.EOF:
        assert isinstance(message, pb.StreamCompleteResponse)
        rest.append(message)
    return rest


async def _begin_stop(gw: Harness, grace_s: float) -> asyncio.Task[None]:
    """Starts draining and returns once health says NOT_SERVING to a watcher."""
    watch = health_watch(gw.channel)(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == SERVING
    stopping = asyncio.create_task(gw.server.stop(grace_s))
    update = await watch.read()
    assert isinstance(update, health_pb2.HealthCheckResponse)
    assert update.status == NOT_SERVING
    watch.cancel()
    return stopping


async def test_a_graceful_stop_lets_the_stream_in_flight_complete() -> None:
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(SLOW)]), metadata=auth()
        )
        seen = await _first_delta(call)
        stopping = await _begin_stop(gw, grace_s=5.0)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        messages = seen + await _rest(call)
        assert await call.code() is grpc.StatusCode.OK
        assert messages[-1].HasField("end")
        assert messages[-1].end.usage.completion_tokens == 30
        assert _words(messages) == 30
        await stopping
        assert gw.sim.state.disconnects == []
        # The refused call was answered by the draining servicer, so it is accounted too.
        codes = {code for _, code in await gw.wait_finished(2)}
        assert codes == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


async def test_a_stop_after_the_grace_period_cuts_the_stream_with_its_status_and_row() -> None:
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(SLOW)]), metadata=auth()
        )
        await _first_delta(call)
        grace_s = 0.1
        started = time.monotonic()
        stopping = await _begin_stop(gw, grace_s=grace_s)

        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await _rest(call)
        disconnect = await gw.sim.state.wait_for_disconnect()
        assert disconnect.phase == "stream"
        assert disconnect.tokens_sent < 30
        assert disconnect.time - started < grace_s + 0.1
        await stopping
        [(record, code)] = await gw.wait_finished()

    # The stream's trailers say why and when to retry, like any other failure.
    error = rich_error(cut.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    )
    assert error.info.metadata["cause"] == "shutdown"
    assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 1
    # Its row: UNAVAILABLE, and its generation marked for reconciliation from /generation.
    assert code is grpc.StatusCode.UNAVAILABLE
    assert record.interrupted
    assert record.stats.generation_id == disconnect.generation_id


async def test_sigterm_drains_the_stream_in_flight_and_exits_0() -> None:
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        cwd=ROOT,
        env=service_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        banner: list[str] = []
        async with asyncio.timeout(15):
            while not banner or "serving on" not in banner[-1]:
                banner.append((await process.stderr.readline()).decode())
                assert banner[-1], f"exited before serving: {banner}"
        found = re.search(r"serving on (\S+)", banner[-1])
        assert found is not None
        address = found.group(1)

        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.CompletionServiceStub(channel)
            call = stub.StreamComplete(
                pb.StreamCompleteRequest(messages=[user(SLOW)]), metadata=auth("demo-key")
            )
            seen = await _first_delta(call)
            process.send_signal(signal.SIGTERM)
            messages = seen + await _rest(call)
            assert await call.code() is grpc.StatusCode.OK
            assert messages[-1].HasField("end")
            assert _words(messages) == 30

        async with asyncio.timeout(15):
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0
        assert "draining" in rest
        assert "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_call_refused_while_draining_carries_service_unavailable() -> None:
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(SLOW)]), metadata=auth()
        )
        await _first_delta(call)
        stopping = await _begin_stop(gw, grace_s=5.0)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        await _rest(call)
        await stopping
        error = rich_error(refused.value)
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
