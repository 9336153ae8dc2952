"""Embed under the caller's policy: provider preferences merged and sent to /embeddings,
widening refused, media inputs by the modality rules, the serving provider checked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.content.support import image, text
from tests.harness import Harness, rich_error, start_gateway
from tests.policy.support import as_caller, callers
from tests.surface.support import EMBED_MODEL, VL_EMBED_MODEL, embed_requests

POLICIES = {
    "zdr": "zdr = true",
    "textonly": 'allowed_input_modalities = ["text"]',
    "openai": 'allowed_providers = ["openai"]',
    "strict": 'allowed_providers = ["openai"]\nforbidden_provider_answers = "refuse"',
    "open": "",
}


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(callers=callers(POLICIES)) as harness:
        yield harness


def embed(*inputs: pb.EmbedInput, model: str = EMBED_MODEL, **fields: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=model, inputs=list(inputs), **fields)  # type: ignore[arg-type]


async def test_the_policys_value_goes_to_embeddings_and_routes(gw: Harness) -> None:
    reply = await gw.stub.Embed(embed(pb.EmbedInput(text="a")), metadata=as_caller("zdr"))
    assert embed_requests(gw.sim)[-1].body["provider"] == {"zdr": True}
    assert reply.provider == "Azure"  # OpenAI's endpoint retains data; Azure's does not
    reply = await gw.stub.Embed(embed(pb.EmbedInput(text="a")), metadata=as_caller("open"))
    assert "provider" not in embed_requests(gw.sim)[-1].body
    assert reply.provider == "OpenAI"


async def test_a_request_that_widens_the_policy_is_refused(gw: Harness) -> None:
    before = len(embed_requests(gw.sim))
    widened = embed(pb.EmbedInput(text="a"), provider=pb.ProviderPreferences(zdr=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(widened, metadata=as_caller("zdr"))
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "POLICY_VIOLATION",
    )
    assert (error.info.metadata["rule"], error.info.metadata["field"]) == ("zdr", "provider.zdr")
    assert len(embed_requests(gw.sim)) == before


async def test_media_inputs_follow_the_modality_rules(gw: Harness) -> None:
    request = embed(pb.EmbedInput(parts=[text("a cat"), image()]), model=VL_EMBED_MODEL)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(request, metadata=as_caller("textonly"))
    error = rich_error(caught.value)
    assert error.info.metadata["rule"] == "allowed_input_modalities"
    assert error.info.metadata["field"] == "inputs[0].parts[1]"
    reply = await gw.stub.Embed(request, metadata=as_caller("open"))
    assert len(reply.embeddings) == 1


async def test_an_embedding_from_a_forbidden_provider_is_flagged_or_withheld(
    gw: Harness,
) -> None:
    misbehave = embed(pb.EmbedInput(text="hi [[sim:serve-provider=azure]]"))
    reply = await gw.stub.Embed(misbehave, metadata=as_caller("openai"))
    assert reply.provider == "Azure"
    assert embed_requests(gw.sim)[-1].body["provider"] == {"only": ["openai"]}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Embed(misbehave, metadata=as_caller("strict"))
    assert rich_error(caught.value).info.reason == "UPSTREAM_POLICY_BREACH"
    records = [record for record, _ in await gw.wait_finished(2)]
    assert [r.policy_breach for r in records] == ["allowed_providers", "allowed_providers"]
