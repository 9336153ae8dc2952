"""Provider preferences and model suffixes in requests: checked, and sent as OpenRouter takes
them (no policy involved: see test_policy_merge for that)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.support import chat_requests
from tests.harness import rich_error, start_gateway
from tests.policy.support import as_caller, ask, callers, sent_provider

P = pb.ProviderPreferences

BAD: list[Any] = [
    pytest.param(P(only=["OpenAI"]), "provider.only[0]", id="slug-upper-case"),
    pytest.param(P(order=["ok", "a b"]), "provider.order[1]", id="slug-space"),
    pytest.param(P(ignore=["x" * 65]), "provider.ignore[0]", id="slug-too-long"),
    pytest.param(P(only=[f"p{i}" for i in range(33)]), "provider.only", id="too-many"),
    pytest.param(P(quantizations=[pb.QUANTIZATION_UNSPECIFIED]), "provider.quantizations[0]"),
    pytest.param(P(max_price=pb.MaxPrice(prompt="cheap")), "provider.max_price.prompt"),
    pytest.param(P(max_price=pb.MaxPrice(image="-1")), "provider.max_price.image", id="negative"),
    pytest.param(P(max_price=pb.MaxPrice(request="NaN")), "provider.max_price.request", id="nan"),
    pytest.param(P(max_price=pb.MaxPrice(audio="1e7")), "provider.max_price.audio", id="huge"),
]


@pytest.mark.parametrize(("provider", "field"), BAD)
async def test_malformed_preferences_are_invalid_argument(provider: P, field: str) -> None:
    async with start_gateway(callers=callers({"svc": ""})) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(ask(provider=provider), metadata=as_caller("svc"))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        bad = error.detail(error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]
        assert chat_requests(gw.sim) == []


async def test_an_unknown_model_suffix_is_refused_and_known_ones_are_sent() -> None:
    async with start_gateway(callers=callers({"svc": ""})) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(ask(model="openai/gpt-4o-mini:turbo"), metadata=as_caller("svc"))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.detail(error_details_pb2.BadRequest).field_violations[0].field == "model"
        assert "':turbo'" in error.message

        reply = await gw.stub.Complete(
            ask(model="meta-llama/llama-3.1-8b-instruct:free:nitro"), metadata=as_caller("svc")
        )
        body = chat_requests(gw.sim)[-1].body
        assert body["model"] == "meta-llama/llama-3.1-8b-instruct:free:nitro"
        assert "provider" not in body
        assert reply.provider == "Groq"  # :nitro sorts by throughput


async def test_no_provider_object_without_preferences_or_policy() -> None:
    async with start_gateway(callers=callers({"svc": ""})) as gw:
        await gw.stub.Complete(ask(provider=P()), metadata=as_caller("svc"))
        assert sent_provider(gw.sim) is None


async def test_preferences_reach_upstream_from_stream_and_structured_calls() -> None:
    prefs = P(only=["azure"], zdr=True)
    async with start_gateway(callers=callers({"svc": ""})) as gw:
        messages = [pb.Message(role=pb.ROLE_USER, content="Hi")]
        stream = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=messages, provider=prefs), metadata=as_caller("svc")
        )
        started, *_ = [m async for m in stream]
        assert started.start.provider == "Azure"
        assert sent_provider(gw.sim) == {"only": ["azure"], "zdr": True}

        structured = await gw.stub.CompleteStructured(
            pb.CompleteStructuredRequest(
                schema_name="chat_reply_v1", messages=messages, provider=prefs
            ),
            metadata=as_caller("svc"),
        )
        assert structured.provider == "Azure"
        # The gateway's own require_parameters (a native schema) joins the caller's.
        assert sent_provider(gw.sim) == {"only": ["azure"], "zdr": True, "require_parameters": True}
