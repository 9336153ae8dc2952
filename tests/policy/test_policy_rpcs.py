"""The policy binds every RPC that reaches OpenRouter alike: a request that leaves a rule open
is sent the policy's value, one that widens it is PERMISSION_DENIED / POLICY_VIOLATION with
nothing sent upstream - for Complete, StreamComplete, CompleteStructured,
StreamCompleteStructured and Embed.

(test_policy_merge.py has every rule and merge case through Complete.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.support import chat_requests
from tests.harness import Harness, rich_error, start_gateway
from tests.policy.support import as_caller, callers
from tests.surface.support import EMBED_MODEL, embed_requests

pytestmark = pytest.mark.asyncio(loop_scope="module")

P = pb.ProviderPreferences
MESSAGES = [pb.Message(role=pb.ROLE_USER, content="Hi")]
SVC = as_caller("svc")

Call = Callable[[Harness, P | None], Awaitable[str]]
"""Makes one call with these preferences; returns the provider that served it."""


async def complete(gw: Harness, provider: P | None) -> str:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=MESSAGES, provider=provider), metadata=SVC
    )
    return reply.provider


async def stream(gw: Harness, provider: P | None) -> str:
    call = gw.stub.StreamComplete(
        pb.StreamCompleteRequest(messages=MESSAGES, provider=provider), metadata=SVC
    )
    started, *_ = [m async for m in call]
    return started.start.provider


async def structured(gw: Harness, provider: P | None) -> str:
    reply = await gw.stub.CompleteStructured(
        pb.CompleteStructuredRequest(
            schema_name="chat_reply_v1", messages=MESSAGES, provider=provider
        ),
        metadata=SVC,
    )
    return reply.provider


async def stream_structured(gw: Harness, provider: P | None) -> str:
    call = gw.stub.StreamCompleteStructured(
        pb.StreamCompleteStructuredRequest(
            schema_name="chat_reply_v1", messages=MESSAGES, provider=provider
        ),
        metadata=SVC,
    )
    started, *_ = [m async for m in call]
    return started.start.provider


async def embed(gw: Harness, provider: P | None) -> str:
    reply = await gw.stub.Embed(
        pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbedInput(text="a")], provider=provider),
        metadata=SVC,
    )
    return reply.provider


def chat_sent(gw: Harness) -> list[dict[str, Any]]:
    return [r.body for r in chat_requests(gw.sim)]


def embed_sent(gw: Harness) -> list[dict[str, Any]]:
    return [r.body for r in embed_requests(gw.sim)]


RPCS = [
    pytest.param(complete, chat_sent, id="Complete"),
    pytest.param(stream, chat_sent, id="StreamComplete"),
    pytest.param(structured, chat_sent, id="CompleteStructured"),
    pytest.param(stream_structured, chat_sent, id="StreamCompleteStructured"),
    pytest.param(embed, embed_sent, id="Embed"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(
        callers=callers({"svc": 'zdr = true\nforbidden_providers = ["openai"]'})
    ) as harness:
        yield harness


@pytest.mark.parametrize(("call", "sent"), RPCS)
async def test_silent_gets_the_policy_narrower_is_kept_wider_is_refused(
    gw: Harness, call: Call, sent: Callable[[Harness], list[dict[str, Any]]]
) -> None:
    # Silent: the policy's values go upstream, and only a ZDR endpoint that is not OpenAI's
    # serves (of gpt-4o-mini's and the embedding model's endpoints: Azure).
    assert await call(gw, None) == "Azure"
    provider = sent(gw)[-1]["provider"]
    assert (provider["zdr"], provider["ignore"]) == (True, ["openai"])

    # Narrower: the request's own choice within the policy is kept.
    assert await call(gw, P(only=["azure"], zdr=True)) == "Azure"
    provider = sent(gw)[-1]["provider"]
    assert (provider["only"], provider["zdr"], provider["ignore"]) == (["azure"], True, ["openai"])

    # Wider: refused, naming the rule and the field; nothing sent.
    before = len(sent(gw))
    for wider, rule, field in (
        (P(zdr=False), "zdr", "provider.zdr"),
        (P(order=["openai"]), "forbidden_providers", "provider.order[0]"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(gw, wider)
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.info.reason == "POLICY_VIOLATION"
        assert (error.info.metadata["rule"], error.info.metadata["field"]) == (rule, field)
    assert len(sent(gw)) == before
