"""The client's channels against a real gateway: the key travels as call credentials on a
loopback channel and through the interceptor on a plaintext one, sync and asyncio alike."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmgateway.client import Transport, connect, connect_async, error_details
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub

from tests.harness import ALPHA_KEY, delta_runs, start_gateway


def _list_models_sync(target: str, key: str, transport: Transport) -> str:
    with connect(target, key, transport=transport) as channel:
        return (
            CompletionServiceStub(channel)
            .ListModels(pb.ListModelsRequest(), timeout=10)
            .default_model
        )


@pytest.mark.parametrize("transport", ["local", "plaintext"])
async def test_the_key_reaches_the_gateway_on_every_transport(transport: Transport) -> None:
    async with start_gateway() as gw:
        target = f"dns:///{gw.server.address}"
        async with connect_async(target, ALPHA_KEY, transport=transport) as channel:
            listing = await CompletionServiceStub(channel).ListModels(pb.ListModelsRequest())
            streamed = [
                m.WhichOneof("event")
                async for m in CompletionServiceStub(channel).StreamComplete(
                    pb.StreamCompleteRequest(
                        messages=[pb.Message(role=pb.ROLE_USER, content="Hi [[sim:tokens=2]]")]
                    )
                )
            ]
        # The sync channel blocks: off the loop that serves the gateway.
        sync_default = await asyncio.to_thread(_list_models_sync, target, ALPHA_KEY, transport)
    assert listing.default_model == "openai/gpt-4o-mini"
    assert sync_default == "openai/gpt-4o-mini"
    assert delta_runs(streamed) == ["start", "delta", "end"]


@pytest.mark.parametrize("transport", ["local", "plaintext"])
async def test_a_wrong_key_is_refused_with_its_reason(transport: Transport) -> None:
    async with start_gateway() as gw:
        target = f"dns:///{gw.server.address}"
        async with connect_async(target, "not-a-key", transport=transport) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await CompletionServiceStub(channel).ListModels(pb.ListModelsRequest())
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.UNAUTHENTICATED
    assert details.reason == "API_KEY_INVALID"
