"""Small helpers shared by the gRPC API tests: reading streams, errors and what reached upstream."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import RunningSimulator
from service.simulator.state import RecordedRequest
from tests.harness import (
    ALPHA_KEY,
    UPSTREAM_KEY,
    Harness,
    RichError,
    auth,
    delta_runs,
    rich_error,
)

ROOT = Path(__file__).resolve().parents[2]
CHAT_PATH = "/api/v1/chat/completions"
# Recognisable prompt text: it must never come back in a status message or a detail.
PROMPT = "zebra-prompt-7c1f tells about Kilimanjaro"
SECRETS = (UPSTREAM_KEY, ALPHA_KEY, PROMPT)

StreamCall = grpc.aio.UnaryStreamCall[pb.StreamCompleteRequest, pb.StreamCompleteResponse]


def chat_requests(sim: RunningSimulator) -> list[RecordedRequest]:
    """The chat completion requests the simulator received (the catalog fetch left out)."""
    return [r for r in sim.state.requests if r.path == CHAT_PATH]


async def wait_for_chat(sim: RunningSimulator) -> RecordedRequest:
    return await sim.state.wait_for_request(lambda r: r.path == CHAT_PATH)


def assert_nothing_leaks(error: RichError, secrets: Sequence[str] = SECRETS) -> None:
    """Neither keys nor prompt text in the status message or any detail (text and bytes)."""
    for secret in secrets:
        assert secret not in error.message
        for detail in error.details:
            assert secret not in str(detail)
            assert secret.encode() not in detail.SerializeToString()


@dataclass
class StreamOutcome:
    """Everything a stream delivered, and how it ended (None: OK)."""

    messages: list[pb.StreamCompleteResponse]
    error: grpc.aio.AioRpcError | None
    trailing: dict[str, str | bytes]

    @property
    def kinds(self) -> list[str | None]:
        return [m.WhichOneof("event") for m in self.messages]

    @property
    def shape(self) -> list[str | None]:
        """``kinds`` with each run of deltas shown once (``delta_runs``)."""
        return delta_runs(self.kinds)

    @property
    def content(self) -> str:
        return "".join(m.delta.content for m in self.messages if m.HasField("delta"))

    @property
    def reasoning(self) -> str:
        return "".join(m.delta.reasoning for m in self.messages if m.HasField("delta"))


def assert_whole_tokens(received: Sequence[str], sent: Sequence[str]) -> None:
    """``received`` (each delta's text) is ``sent`` (each token's) in order, every delta made
    of whole tokens: merging may join tokens, never split, drop, repeat or reorder them."""
    assert "".join(received) == "".join(sent)
    assert all(received), "an empty delta"
    boundaries = set(itertools.accumulate(len(piece) for piece in sent))
    assert all(end in boundaries for end in itertools.accumulate(len(p) for p in received))


async def drain(call: StreamCall) -> StreamOutcome:
    messages: list[pb.StreamCompleteResponse] = []
    error: grpc.aio.AioRpcError | None = None
    try:
        async for message in call:
            messages.append(message)
    except grpc.aio.AioRpcError as exc:
        error = exc
    trailing = dict(await call.trailing_metadata() or ())
    return StreamOutcome(messages, error, trailing)


async def stream(
    gw: Harness, request: pb.StreamCompleteRequest, *, key: str = ALPHA_KEY, **kwargs: Any
) -> StreamOutcome:
    return await drain(gw.stub.StreamComplete(request, metadata=auth(key), **kwargs))


async def complete_error(
    gw: Harness,
    request: pb.CompleteRequest,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> RichError:
    """The rich error of a Complete call that must fail."""
    try:
        await gw.stub.Complete(request, metadata=auth() if metadata is None else metadata)
    except grpc.aio.AioRpcError as exc:
        return rich_error(exc)
    raise AssertionError("the call succeeded")


async def stream_error(
    gw: Harness,
    request: pb.StreamCompleteRequest,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> RichError:
    """The rich error of a StreamComplete call that must fail (after any number of messages)."""
    call = gw.stub.StreamComplete(request, metadata=auth() if metadata is None else metadata)
    outcome = await drain(call)
    assert outcome.error is not None, f"the stream ended OK: {outcome.kinds}"
    assert "end" not in outcome.kinds
    return rich_error(outcome.error)


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_process(
    *args: str,
    env: dict[str, str] | None = None,
    time_limit: float = 20.0,
    cwd: Path | None = None,
) -> Finished:
    """Runs a child without blocking the event loop (the gateway under test shares it)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd or ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(time_limit):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


def service_env(*, simulator: bool = True, **overrides: str) -> dict[str, str]:
    """The environment for ``python -m service``: no inherited GATEWAY_*/OPENROUTER_* settings;
    demo mode (the simulator, key ``demo-key``) switched on explicitly unless ``simulator`` is
    False."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENROUTER_"))}
    env["GATEWAY_LISTEN"] = "127.0.0.1:0"
    if simulator:
        env["GATEWAY_SIMULATOR"] = "true"
    # Each process its own ledger, never the checkout's var/usage.sqlite3 that `make run` uses.
    env["GATEWAY_LEDGER_PATH"] = str(Path(tempfile.mkdtemp(prefix="llmgw-proc-")) / "usage.sqlite3")
    env.update(overrides)
    return env


PYTHON = sys.executable


# The health and reflection stubs ship without usable types; these multicallables have them.
def health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]:
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def health_watch(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]:
    return channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


async def reflected_services(channel: grpc.aio.Channel) -> list[str]:
    """The service names server reflection lists."""
    info = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return [s.name async for reply in call for s in reply.list_services_response.service]
