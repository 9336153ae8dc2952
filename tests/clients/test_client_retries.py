"""The recommended channel's retry policy against a real gateway: an UNAVAILABLE the gateway
returned (its upstream failed before anything was generated) is retried by the client, and
succeeds once the upstream recovers; other codes and streams already under way are not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from llmgateway.client import channel_options, connect_async, error_details, service_config
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub

from tests.api.support import chat_requests
from tests.harness import ALPHA_KEY, Harness, start_gateway


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    # No upstream retries in the gateway, so each failed upstream attempt is one UNAVAILABLE.
    async with start_gateway(openrouter={"max_retries": 0}) as harness:
        yield harness


def _channel(gw: Harness, attempts: int) -> grpc.aio.Channel:
    config = service_config(max_attempts=attempts, initial_backoff_s=0.01, max_backoff_s=0.05)
    return connect_async(
        f"dns:///{gw.server.address}",
        ALPHA_KEY,
        transport="local",
        options=channel_options(config=config),
    )


def _ask(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content=text)])


async def test_an_unavailable_gateway_answer_is_retried_until_it_succeeds(gw: Harness) -> None:
    async with _channel(gw, attempts=3) as channel:
        reply = await CompletionServiceStub(channel).Complete(
            _ask("Hi [[sim:error=503]] [[sim:fail-times=2]] [[sim:retry-after=0]]"), timeout=20
        )
    assert reply.content
    # Two upstream failures, each returned as UNAVAILABLE and retried, then the answer.
    assert len(chat_requests(gw.sim)) == 3
    codes = [code for record, code in gw.finished if record.rpc == "Complete"]
    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]


async def test_retries_stop_at_max_attempts_with_the_last_error(gw: Harness) -> None:
    async with _channel(gw, attempts=2) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await CompletionServiceStub(channel).Complete(
                _ask("Hi [[sim:error=503]] [[sim:fail-times=5]] [[sim:retry-after=0]]"),
                timeout=20,
            )
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.reason == "UPSTREAM_UNAVAILABLE"
    assert len(chat_requests(gw.sim)) == 2


async def test_other_codes_are_not_retried(gw: Harness) -> None:
    async with _channel(gw, attempts=3) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await CompletionServiceStub(channel).Complete(
                _ask("Hi [[sim:error=429]] [[sim:fail-times=1]] [[sim:retry-after=0]]"),
                timeout=20,
            )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(chat_requests(gw.sim)) == 1


async def test_a_stream_is_not_retried_once_it_has_answered(gw: Harness) -> None:
    # gRPC commits a stream at its first response message: a cut after output is not repeated.
    async with _channel(gw, attempts=3) as channel:
        call = CompletionServiceStub(channel).StreamComplete(
            pb.StreamCompleteRequest(
                messages=[pb.Message(role=pb.ROLE_USER, content="Hi [[sim:mid-stream-error]]")]
            ),
            timeout=20,
        )
        kinds: list[str | None] = []

        async def read() -> None:
            async for message in call:
                kinds.append(message.WhichOneof("event"))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await read()
    assert "delta" in kinds
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(chat_requests(gw.sim)) == 1
