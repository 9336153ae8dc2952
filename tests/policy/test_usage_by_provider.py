"""GetUsage splits the caller's own usage by the provider that served each call."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import start_gateway
from tests.policy.support import as_caller, ask, callers

LLAMA = "meta-llama/llama-3.1-8b-instruct"


async def test_usage_is_split_by_provider_and_adds_up() -> None:
    async with start_gateway(callers=callers({"svc": "", "other": ""})) as gw:
        svc = as_caller("svc")
        azure = pb.ProviderPreferences(only=["azure"])
        replies = [
            await gw.stub.Complete(ask(), metadata=svc),
            await gw.stub.Complete(ask("Again"), metadata=svc),
            await gw.stub.Complete(ask(provider=azure), metadata=svc),
            await gw.stub.Complete(
                ask(model=LLAMA, provider=pb.ProviderPreferences(sort=pb.PROVIDER_SORT_PRICE)),
                metadata=svc,
            ),
        ]
        with pytest.raises(grpc.aio.AioRpcError):  # refused before any provider
            await gw.stub.Complete(
                ask(provider=pb.ProviderPreferences(only=["Bad!"])), metadata=svc
            )
        await gw.stub.Complete(ask(), metadata=as_caller("other"))  # not svc's
        await gw.wait_finished(6)
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=svc)

    assert [r.provider for r in replies] == ["OpenAI", "OpenAI", "Azure", "Chutes"]
    by_provider = {p.provider: p for p in usage.providers}
    assert list(by_provider) == ["", "Azure", "Chutes", "OpenAI"]  # sorted
    assert by_provider[""].request_count == 1
    assert by_provider[""].cost_usd == 0
    openai = by_provider["OpenAI"]
    assert openai.request_count == 2
    assert openai.prompt_tokens == replies[0].usage.prompt_tokens + replies[1].usage.prompt_tokens
    assert openai.cost_usd == pytest.approx(replies[0].usage.cost_usd + replies[1].usage.cost_usd)
    assert by_provider["Chutes"].cost_usd == pytest.approx(replies[3].usage.cost_usd)
    assert by_provider["Azure"].completion_tokens == replies[2].usage.completion_tokens
    # The split adds up to the caller's totals.
    assert sum(p.request_count for p in usage.providers) == usage.request_count == 5
    assert sum(p.prompt_tokens for p in usage.providers) == usage.prompt_tokens
    assert sum(p.cost_usd for p in usage.providers) == pytest.approx(usage.cost_usd)
