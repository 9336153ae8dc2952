"""Deadlines and cancellation: the upstream request ends with the call, within 100 ms.

The simulator stamps requests and disconnects with ``time.monotonic()``, so the tests take
their own timestamps from the same clock.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.raw_http2 import call_then_reset, frame
from tests.api.support import PROMPT, chat_requests, complete_error, stream, wait_for_chat
from tests.harness import auth, rich_error, start_gateway, user

CANCEL_BUDGET_S = 0.1


async def test_a_client_deadline_ends_a_hanging_call_and_its_upstream_request() -> None:
    async with start_gateway() as gw:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:hang]]")]),
                metadata=auth(),
                timeout=0.3,
            )
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        disconnect = await gw.sim.state.wait_for_disconnect()
        assert disconnect.phase == "hang"
        # The gateway gives up a margin (10 %, at most 50 ms) before the caller's deadline, so
        # that its own DEADLINE_EXCEEDED (with ErrorInfo) reaches the caller first.
        assert 0.3 * 0.9 <= disconnect.time - started < 0.3 + CANCEL_BUDGET_S
        [(_, code)] = await gw.wait_finished()
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_client_deadline_ends_a_hanging_stream() -> None:
    async with start_gateway() as gw:
        started = time.monotonic()
        outcome = await stream(
            gw, pb.StreamCompleteRequest(messages=[user("Wait [[sim:hang]]")]), timeout=0.3
        )
        assert outcome.error is not None
        assert outcome.error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "end" not in outcome.kinds
        disconnect = await gw.sim.state.wait_for_disconnect()
        assert disconnect.time - started < 0.3 + CANCEL_BUDGET_S
        [(_, code)] = await gw.wait_finished()
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_reset_that_races_the_deadline_is_booked_as_the_deadline() -> None:
    """The race both sides of a deadline run (grpc-java #6328, grpc/grpc #27216).

    A client whose deadline fires resets the stream with CANCEL, a moment before the server's
    own deadline (which counts from arrival, a transit time later). When the gateway's loop
    is busy past its own give-up point, that reset can be handled first, and the servicer
    double-checked against the server's deadline, which had not quite passed: it booked about
    one call in thirty CANCELLED. It now double-checks against its give-up point (the deadline
    less its margin): a reset after that is the deadline. Here the client announces 1 s and
    resets at 960 ms, while the loop is held from 900 to 970 ms: past the gateway's give-up
    point (950 ms), short of the server's deadline. Times count from the upstream request,
    which leaves a moment after the call arrived.
    """
    async with start_gateway() as gw:
        request = pb.CompleteRequest(messages=[user("Wait [[sim:hang]]")])
        reset_at: queue.Queue[float] = queue.Queue()
        client = threading.Thread(
            target=call_then_reset,
            args=(
                gw.server.address,
                "/llmgateway.v1.CompletionService/Complete",
                frame(request.SerializeToString()),
                (*auth(), ("grpc-timeout", "1000m")),
            ),
            kwargs={"reset_at": reset_at},
        )
        client.start()
        arrived = (await wait_for_chat(gw.sim)).time
        reset_at.put(arrived + 0.96)
        loop = asyncio.get_running_loop()
        loop.call_at(arrived + 0.90, time.sleep, 0.07)  # the loop is busy elsewhere
        [(_, code)] = await gw.wait_finished()
        await asyncio.to_thread(client.join)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_without_a_client_deadline_the_upstream_timeout_bounds_a_call() -> None:
    async with start_gateway(openrouter={"timeout_ms": 300}) as gw:
        started = time.monotonic()
        error = await complete_error(gw, pb.CompleteRequest(messages=[user("Wait [[sim:hang]]")]))
        elapsed = time.monotonic() - started
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
        )
        assert error.info.domain == "llmgateway.v1"
        assert 0.3 <= elapsed < 0.3 + CANCEL_BUDGET_S
        disconnect = await gw.sim.state.wait_for_disconnect()
        assert disconnect.time - started < 0.3 + CANCEL_BUDGET_S
        finished = await gw.wait_finished()
        assert [code for _, code in finished] == [grpc.StatusCode.DEADLINE_EXCEEDED]


async def test_the_upstream_timeout_spans_retries() -> None:
    # Every attempt waits 200 ms for its headers and then fails: the second retry would end
    # past the 500 ms budget, so the call stops with the deadline instead of a third attempt.
    async with start_gateway(openrouter={"timeout_ms": 500, "max_retries": 5}) as gw:
        started = time.monotonic()
        error = await complete_error(
            gw, pb.CompleteRequest(messages=[user("Slow [[sim:delay=200]] [[sim:error=502]]")])
        )
        elapsed = time.monotonic() - started
        assert error.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert elapsed < 0.5 + CANCEL_BUDGET_S
        assert len(chat_requests(gw.sim)) <= 3


async def test_a_retry_that_would_cross_the_deadline_is_not_attempted() -> None:
    # Retry-After (1 s) is longer than the caller's deadline: the caller learns the real cause
    # at once, with its RetryInfo, instead of a DEADLINE_EXCEEDED after a pointless wait.
    async with start_gateway() as gw:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Busy [[sim:error=429]] [[sim:retry-after=1]]")]),
                metadata=auth(),
                timeout=0.5,
            )
        error = rich_error(caught.value)
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_RATE_LIMITED",
        )
        assert time.monotonic() - started < CANCEL_BUDGET_S
        assert len(chat_requests(gw.sim)) == 1


async def test_the_upstream_timeout_bounds_a_stream_that_never_starts() -> None:
    # read_timeout_ms is longer than the timeout, so the test tells which of the two fired.
    async with start_gateway(openrouter={"timeout_ms": 300, "read_timeout_ms": 800}) as gw:
        started = time.monotonic()
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user("Wait [[sim:hang]]")]))
        elapsed = time.monotonic() - started
        assert outcome.error is not None
        error = rich_error(outcome.error)
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
        )
        assert elapsed < 0.3 + CANCEL_BUDGET_S


# --- cancellation ----------------------------------------------------------------------


async def test_cancelling_a_unary_call_closes_its_upstream_request_at_once() -> None:
    async with start_gateway() as gw:
        call = gw.stub.Complete(
            pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:hang]]")]), metadata=auth()
        )
        await wait_for_chat(gw.sim)
        cancelled_at = time.monotonic()
        assert call.cancel()
        disconnect = await gw.sim.state.wait_for_disconnect()

        assert disconnect.time - cancelled_at < CANCEL_BUDGET_S
        assert disconnect.phase == "hang"
        with pytest.raises(asyncio.CancelledError):
            await call
        assert [code for _, code in await gw.wait_finished()] == [grpc.StatusCode.CANCELLED]


async def test_cancelling_a_stream_closes_its_upstream_request_at_once() -> None:
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Go on [[sim:pace=50]] [[sim:tokens=40]]")]),
            metadata=auth(),
        )
        message = await call.read()
        while not isinstance(message, pb.StreamCompleteResponse) or not message.HasField("delta"):
            message = await call.read()
        cancelled_at = time.monotonic()
        assert call.cancel()
        disconnect = await gw.sim.state.wait_for_disconnect()

        assert disconnect.time - cancelled_at < CANCEL_BUDGET_S
        assert disconnect.phase == "stream"
        assert disconnect.streamed
        assert disconnect.tokens_sent < 40
        generation = await gw.sim.state.wait_for_generation(disconnect.generation_id or "")
        assert generation.cancelled
        assert [code for _, code in await gw.wait_finished()] == [grpc.StatusCode.CANCELLED]
