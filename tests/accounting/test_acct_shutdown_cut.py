"""Shutdown past the grace: every call still running ends with its status and keeps its row.

Issue #12's figures: ``GATEWAY_SHUTDOWN_GRACE_S=3`` with 50 long streams and 30 long unary
calls in flight at SIGTERM. Before, all 80 ended UNAVAILABLE without ErrorInfo or trailers
and the log said "80 usage record(s) were dropped". Now each ends UNAVAILABLE /
SERVICE_UNAVAILABLE with ErrorInfo and RetryInfo (streams in their trailers), and the ledger
the process leaves behind holds all 80 rows, the streams' marked for reconciliation.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections import Counter
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.accounting.support import by_request_id, sqlite_rows
from tests.api.support import PYTHON, ROOT, chat_requests, service_env
from tests.harness import UPSTREAM_KEY, rich_error, user
from tests.servers import free_port

STREAMS = 50
UNARY = 30
GRACE_S = 3
DEMO_KEY = "demo-key"


def metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Bearer demo-key"), ("x-request-id", request_id))


async def test_calls_cut_at_the_end_of_the_grace_end_with_status_and_row(tmp_path: Path) -> None:
    async with run_simulator(SimulatorConfig(keepalive_comments=0)) as sim:
        errors, ledger, log = await cut_at_shutdown(sim, tmp_path)
        # Every upstream request was closed when its call was cut.
        await sim.state.wait_for_disconnect(lambda _: len(sim.state.disconnects) == len(errors))

    assert len(errors) == STREAMS + UNARY
    for error in errors.values():
        rich = rich_error(error)
        assert (rich.code, rich.info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        )
        assert rich.info.metadata["cause"] == "shutdown"
        assert rich.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 1
    text = log.read_text()
    assert "dropped" not in text
    assert "Traceback" not in text
    rows = by_request_id(r for r in sqlite_rows(ledger) if r["request_id"] != "probe")
    assert set(rows) == set(errors)
    kinds = Counter(
        (r["rpc"], r["status"], bool(r["generation_id"]), r["cancelled"]) for r in rows.values()
    )
    # Streams know their generation, and are marked for reconciliation from /generation;
    # a unary call learns its generation id only with the answer it never got.
    assert kinds == {
        ("StreamComplete", "UNAVAILABLE", True, 1): STREAMS,
        ("Complete", "UNAVAILABLE", False, 1): UNARY,
    }


async def cut_at_shutdown(
    sim: RunningSimulator, tmp_path: Path
) -> tuple[dict[str, grpc.aio.AioRpcError], Path, Path]:
    """STREAMS streams and UNARY unary calls in flight upstream, then SIGTERM; returns each
    call's error, the ledger and the gateway's log."""
    port = free_port()
    ledger = tmp_path / "usage.db"
    callers = tmp_path / "callers.toml"
    digest = hashlib.sha256(DEMO_KEY.encode()).hexdigest()
    callers.write_text(f'[[callers]]\nid = "demo"\nkey_sha256 = "{digest}"\n')
    env = service_env(
        simulator=False,
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        GATEWAY_LEDGER_PATH=str(ledger),
        GATEWAY_SHUTDOWN_GRACE_S=str(GRACE_S),
        GATEWAY_CALLERS_FILE=str(callers),
        OPENROUTER_API_KEY=UPSTREAM_KEY,
        OPENROUTER_BASE_URL=sim.base_url,
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "service", cwd=ROOT, env=env, stdout=output, stderr=output
        )
    errors: dict[str, grpc.aio.AioRpcError] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = pb_grpc.CompletionServiceStub(channel)
            streams = {
                f"stream-{i}": stub.StreamComplete(
                    pb.StreamCompleteRequest(
                        messages=[user("Long [[sim:pace=100]] [[sim:tokens=2000]]")]
                    ),
                    metadata=metadata(f"stream-{i}"),
                )
                for i in range(STREAMS)
            }
            for stream in streams.values():  # every stream has started upstream
                first = await stream.read()
                assert isinstance(first, pb.StreamCompleteResponse)
                assert first.HasField("start")
            unary = {
                f"unary-{i}": stub.Complete(
                    pb.CompleteRequest(messages=[user("Long [[sim:delay=60000]]")]),
                    metadata=metadata(f"unary-{i}"),
                )
                for i in range(UNARY)
            }
            # Every call is in flight upstream before the signal.
            await sim.state.wait_for_request(
                lambda _: len(chat_requests(sim)) == STREAMS + UNARY, timeout=20
            )
            process.send_signal(signal.SIGTERM)
            for request_id, stream in streams.items():
                try:
                    while (await stream.read()) is not grpc.aio.EOF:
                        pass
                except grpc.aio.AioRpcError as exc:
                    errors[request_id] = exc
            for request_id, pending in unary.items():
                try:
                    await pending
                except grpc.aio.AioRpcError as exc:
                    errors[request_id] = exc
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return errors, ledger, log
