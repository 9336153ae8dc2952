"""SIGTERM in the middle of a burst: ``python -m service`` drains and loses no ledger row.

One burst (run once for the module, in a process of its own) feeds several tests: what the
clients saw, the exit code, and the rows the ledger holds afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from service.server import SERVICE_NAME
from tests.accounting.support import Row, by_request_id, sqlite_rows
from tests.api.support import PYTHON, ROOT, service_env
from tests.harness import user
from tests.servers import free_port

DEMO_KEY = "demo-key"
UNARY_CALLS = 200
STREAMS = 10
STREAM_TOKENS = 40
SIGNAL_AFTER = 40
"""Unary calls finished when SIGTERM is sent: well into the burst, far from its end."""


@dataclass(frozen=True)
class Outcome:
    request_id: str
    code: grpc.StatusCode
    reached: bool
    """The servicer saw the call: it echoes ``x-request-id`` in every status it sends."""
    kinds: tuple[str | None, ...] = ()
    """For a stream: the events it delivered."""
    info: bool = False
    """The status carried a rich ``grpc-status-details-bin`` (ErrorInfo)."""


@dataclass(frozen=True)
class Burst:
    returncode: int
    stderr: str
    unary: list[Outcome]
    streams: list[Outcome]
    rows: dict[str, Row]
    streams_running_at_signal: int


def metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {DEMO_KEY}"), ("x-request-id", request_id))


def outcome(
    request_id: str,
    code: grpc.StatusCode,
    trailing: grpc.aio.Metadata | None,
    kinds: tuple[str | None, ...] = (),
) -> Outcome:
    found = dict(trailing or ())
    return Outcome(
        request_id,
        code,
        reached=found.get("x-request-id") == request_id,
        kinds=kinds,
        info="grpc-status-details-bin" in found,
    )


async def burst_then_sigterm(
    stub: pb_grpc.CompletionServiceAsyncStub, stop: asyncio.Event
) -> tuple[list[Outcome], list[Outcome], int]:
    """Paced streams in flight plus a burst of unary calls; ``stop`` is set mid-burst.

    Returns the unary and stream outcomes and how many streams were still running then.
    """
    streams = [
        stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user(f"Stream {i} [[sim:tokens={STREAM_TOKENS}]] [[sim:pace=40]]")]
            ),
            metadata=metadata(f"stream-{i}"),
        )
        for i in range(STREAMS)
    ]
    for call in streams:  # every stream is in flight before the signal
        first = await call.read()
        assert isinstance(first, pb.StreamCompleteResponse)
        assert first.HasField("start")

    finished = 0
    in_flight = 0

    async def unary(i: int) -> Outcome:
        nonlocal finished, in_flight
        request_id = f"unary-{i}"
        call = stub.Complete(
            pb.CompleteRequest(messages=[user(f"Burst {i} [[sim:tokens=3]]")]),
            metadata=metadata(request_id),
        )
        code = grpc.StatusCode.OK
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        finished += 1
        if finished == SIGNAL_AFTER:
            in_flight = sum(not call.done() for call in streams)
            stop.set()
        return outcome(request_id, code, await call.trailing_metadata())

    unary_outcomes = await asyncio.gather(*(unary(i) for i in range(UNARY_CALLS)))
    stream_outcomes = []
    for i, call in enumerate(streams):
        kinds: list[str | None] = ["start"]  # read before the burst
        while (message := await call.read()) is not grpc.aio.EOF:
            assert isinstance(message, pb.StreamCompleteResponse)
            kinds.append(message.WhichOneof("event"))
        stream_outcomes.append(
            outcome(f"stream-{i}", await call.code(), await call.trailing_metadata(), tuple(kinds))
        )
    return list(unary_outcomes), stream_outcomes, in_flight


async def run_burst(tmp_path: Path) -> Burst:
    port = free_port()
    ledger = tmp_path / "usage.db"
    log = tmp_path / "gateway.log"
    # No OPENROUTER_API_KEY (service_env drops every OPENROUTER_*): the built-in simulator and
    # the demo caller.
    env = service_env(GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_LEDGER_PATH=str(ledger))
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "service", cwd=ROOT, env=env, stdout=output, stderr=output
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            # Called by its path: the health stubs' type hints lack HealthStub.Check.
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            health = await check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                wait_for_ready=True,
                timeout=20,
            )
            assert isinstance(health, health_pb2.HealthCheckResponse)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stop = asyncio.Event()
            work = asyncio.ensure_future(
                burst_then_sigterm(pb_grpc.CompletionServiceStub(channel), stop)
            )
            signalled = asyncio.ensure_future(stop.wait())
            await asyncio.wait({work, signalled}, return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            process.send_signal(signal.SIGTERM)
            unary, streams, running = await work
        async with asyncio.timeout(30):
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    rows = by_request_id(sqlite_rows(ledger))
    return Burst(returncode, log.read_text(), unary, streams, rows, running)


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Burst:
    # Its own event loop: the burst runs once for all the tests below.
    return asyncio.run(run_burst(tmp_path_factory.mktemp("sigterm")))


def test_the_gateway_exits_0_after_letting_the_streams_in_flight_finish(burst: Burst) -> None:
    assert burst.returncode == 0, burst.stderr
    assert "draining" in burst.stderr
    assert burst.streams_running_at_signal == STREAMS
    for stream in burst.streams:
        assert (stream.code, stream.reached) == (grpc.StatusCode.OK, True), stream
        assert stream.kinds[-1] == "end"
        row = burst.rows[stream.request_id]
        assert (row["status"], row["rpc"]) == ("OK", "StreamComplete")
        assert row["completion_tokens"] == STREAM_TOKENS


def test_every_call_that_reached_the_servicer_has_exactly_its_row(burst: Burst) -> None:
    calls = burst.unary + burst.streams
    reached = {c.request_id for c in calls if c.reached}
    ok = {c.request_id for c in calls if c.code == grpc.StatusCode.OK}
    assert len(ok) >= SIGNAL_AFTER + STREAMS
    assert ok <= reached
    # by_request_id already refused duplicates; no row for a call that never reached the
    # servicer, and none missing for one that did, whatever its outcome.
    assert set(burst.rows) == reached
    for call in calls:
        if call.reached:
            assert burst.rows[call.request_id]["status"] == call.code.name
            assert burst.rows[call.request_id]["caller_id"] == "demo"


def test_calls_refused_while_draining_are_unavailable_with_error_info(burst: Burst) -> None:
    refused = [c for c in burst.unary if c.code != grpc.StatusCode.OK]
    assert refused, "every call succeeded: the signal came too late to tell"
    # Refused by the draining servicer (so accounted, with a request id and ErrorInfo), not
    # cut by the transport.
    assert {c.code for c in refused} == {grpc.StatusCode.UNAVAILABLE}
    assert all(c.reached and c.info for c in refused)
    assert {burst.rows[c.request_id]["status"] for c in refused} == {"UNAVAILABLE"}
