"""The shortest end-to-end path: a real gateway answers Complete and StreamComplete."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import auth, rich_error, start_gateway, user


async def test_complete_and_stream_through_a_real_server() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Hello [[sim:tokens=7]]")]), metadata=auth()
        )
        assert reply.id.startswith("gen-")
        assert reply.model == "openai/gpt-4o-mini"
        assert reply.usage.completion_tokens == 7
        assert reply.finish_reason == pb.FINISH_REASON_STOP

        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=4]]")]), metadata=auth()
        )
        messages = [message async for message in call]
        kinds = [message.WhichOneof("event") for message in messages]
        # Tokens that arrive together may share a delta.
        assert kinds[0] == "start"
        assert kinds[-1] == "end"
        assert set(kinds[1:-1]) == {"delta"}
        text = "".join(message.delta.content for message in messages)
        assert len(text.split()) == 4


async def test_unknown_key_is_unauthenticated() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hello")]), metadata=auth("wrong")
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.UNAUTHENTICATED
        assert error.info.reason == "API_KEY_INVALID"
