"""``session_id`` through a real gateway and the simulator: sent to OpenRouter as given on every
chat RPC (a corrective re-ask in the same session), not sent when empty, and refused above
OpenRouter's 256 characters before anything goes upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, drain
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.test_stream_structured import collect

SESSION = "conversation-8f2c41"


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


def sessions(gw: Harness) -> list[str | None]:
    return [r.body.get("session_id") for r in chat_requests(gw.sim)]


async def test_every_chat_rpc_sends_the_session(gw: Harness) -> None:
    await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Hi")], session_id=SESSION), metadata=auth()
    )
    streamed = await drain(
        gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi")], session_id=SESSION), metadata=auth()
        )
    )
    assert streamed.error is None
    await gw.stub.CompleteStructured(
        pb.CompleteStructuredRequest(
            schema_name="chat_reply_v1",
            messages=[user("Hi [[sim:json=wrong-once]]")],
            session_id=SESSION,
        ),
        metadata=auth(),
    )
    _, error = await collect(
        gw.stub.StreamCompleteStructured(
            pb.StreamCompleteStructuredRequest(
                schema_name="chat_reply_v1", messages=[user("Hi")], session_id=SESSION
            ),
            metadata=auth(),
        )
    )
    assert error is None
    # Complete, StreamComplete, CompleteStructured and its re-ask, StreamCompleteStructured.
    assert sessions(gw) == [SESSION] * 5
    await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
    assert sessions(gw)[-1] is None


async def test_a_session_id_above_256_characters_is_refused_before_upstream(gw: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Hi")], session_id="s" * 257), metadata=auth()
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in error.detail(error_details_pb2.BadRequest).field_violations]
    assert fields == ["session_id"]
    assert "s" * 257 not in error.message
    assert chat_requests(gw.sim) == []
    await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Hi")], session_id="s" * 256), metadata=auth()
    )
    assert sessions(gw) == ["s" * 256]
