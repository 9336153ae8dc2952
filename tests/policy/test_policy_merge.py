"""Each policy rule against a request that leaves it open (the policy's value is sent), one
that narrows it (the request's value is sent) and one that widens it (PERMISSION_DENIED /
POLICY_VIOLATION naming the rule and the field, nothing sent upstream).

Through a real gateway whose callers come from a callers file, and the simulator, which
routes by the merged ``provider`` object: each case also checks who served.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.support import chat_requests
from tests.content.support import image, text, user_parts
from tests.harness import Harness, rich_error, start_gateway
from tests.policy.support import as_caller, ask, callers, sent_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

LLAMA = "meta-llama/llama-3.1-8b-instruct"
GPT5 = "openai/gpt-5-mini"
IMAGER = "google/gemini-2.5-flash-image"
P = pb.ProviderPreferences
R = pb.ReasoningConfig
S = pb.SamplingParams
SEARCH = pb.WebSearchOptions


@dataclass(frozen=True)
class Sent:
    """The case passes: this ``provider`` object went upstream (None: none) and this provider
    served; ``body`` holds other keys of the upstream body to check (None: absent)."""

    provider: dict[str, Any] | None
    served_by: str
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    rule: str
    field: str


POLICIES = {
    "data": 'data_collection = "deny"',
    "zdr": "zdr = true",
    "allowed": 'allowed_providers = ["openai", "azure"]',
    "forbidden": 'forbidden_providers = ["openai"]',
    "quant": 'allowed_quantizations = ["fp16", "bf16"]',
    "price": 'max_price = { prompt = "0.02", completion = "0.05" }',
    "nofallback": "provider_fallbacks = false",
    "fallbacks": 'fallback_models = ["openai/*"]',
    "plugins": 'allowed_plugins = ["file-parser"]',
    "noplugins": "allowed_plugins = []",
    "websearch": 'allowed_plugins = ["web"]\nallowed_server_tools = []',
    "searchtool": 'allowed_server_tools = ["openrouter:web_search"]',
    "textonly": 'allowed_input_modalities = ["text"]',
    "effort": 'max_reasoning_effort = "low"',
    "textout": 'allowed_output_modalities = ["text"]',
    "open": "",
}

CASES: list[Any] = [
    # data_collection = "deny"
    pytest.param("data", ask(), Sent({"data_collection": "deny"}, "OpenAI"), id="data-silent"),
    pytest.param(
        "data",
        ask(provider=P(data_collection=pb.DATA_COLLECTION_DENY)),
        Sent({"data_collection": "deny"}, "OpenAI"),
        id="data-narrows",
    ),
    pytest.param(
        "data",
        ask(provider=P(data_collection=pb.DATA_COLLECTION_ALLOW)),
        Refused("data_collection", "provider.data_collection"),
        id="data-widens",
    ),
    # zdr = true: of gpt-4o-mini's providers only Azure retains nothing.
    pytest.param("zdr", ask(), Sent({"zdr": True}, "Azure"), id="zdr-silent"),
    pytest.param("zdr", ask(provider=P(zdr=True)), Sent({"zdr": True}, "Azure"), id="zdr-narrows"),
    pytest.param(
        "zdr", ask(provider=P(zdr=False)), Refused("zdr", "provider.zdr"), id="zdr-widens"
    ),
    # allowed_providers
    pytest.param(
        "allowed", ask(), Sent({"only": ["openai", "azure"]}, "OpenAI"), id="allowed-silent"
    ),
    pytest.param(
        "allowed",
        ask(provider=P(only=["azure"])),
        Sent({"only": ["azure"]}, "Azure"),
        id="allowed-narrows",
    ),
    pytest.param(
        "allowed",
        ask(provider=P(only=["openai", "anthropic"])),
        Refused("allowed_providers", "provider.only[1]"),
        id="allowed-widens-only",
    ),
    pytest.param(
        "allowed",
        ask(provider=P(order=["deepinfra"])),
        Refused("allowed_providers", "provider.order[0]"),
        id="allowed-widens-order",
    ),
    # forbidden_providers
    pytest.param("forbidden", ask(), Sent({"ignore": ["openai"]}, "Azure"), id="forbidden-silent"),
    pytest.param(
        "forbidden",
        ask(provider=P(ignore=["deepinfra"])),
        Sent({"ignore": ["deepinfra", "openai"]}, "Azure"),
        id="forbidden-narrows",
    ),
    pytest.param(
        "forbidden",
        ask(provider=P(only=["openai"])),
        Refused("forbidden_providers", "provider.only[0]"),
        id="forbidden-widens",
    ),
    # allowed_quantizations (llama: DeepInfra bf16 first, Groq fp16, the others fp8)
    pytest.param(
        "quant",
        ask(model=LLAMA),
        Sent({"quantizations": ["fp16", "bf16"]}, "DeepInfra"),
        id="quant-silent",
    ),
    pytest.param(
        "quant",
        ask(model=LLAMA, provider=P(quantizations=[pb.QUANTIZATION_FP16])),
        Sent({"quantizations": ["fp16"]}, "Groq"),
        id="quant-narrows",
    ),
    pytest.param(
        "quant",
        ask(model=LLAMA, provider=P(quantizations=[pb.QUANTIZATION_FP8])),
        Refused("allowed_quantizations", "provider.quantizations[0]"),
        id="quant-widens",
    ),
    # max_price, per million tokens (llama's DeepInfra: 0.02 / 0.03)
    pytest.param(
        "price",
        ask(model=LLAMA),
        Sent({"max_price": {"prompt": 0.02, "completion": 0.05}}, "DeepInfra"),
        id="price-silent",
    ),
    pytest.param(
        "price",
        ask(model=LLAMA, provider=P(max_price=pb.MaxPrice(prompt="0.01"))),
        Sent({"max_price": {"prompt": 0.01, "completion": 0.05}}, "Chutes"),
        id="price-narrows",
    ),
    pytest.param(
        "price",
        ask(model=LLAMA, provider=P(max_price=pb.MaxPrice(completion="0.5"))),
        Refused("max_price", "provider.max_price.completion"),
        id="price-widens",
    ),
    # provider_fallbacks = false
    pytest.param(
        "nofallback", ask(), Sent({"allow_fallbacks": False}, "OpenAI"), id="nofallback-silent"
    ),
    pytest.param(
        "nofallback",
        ask(provider=P(order=["azure"], allow_fallbacks=False)),
        Sent({"order": ["azure"], "allow_fallbacks": False}, "Azure"),
        id="nofallback-narrows",
    ),
    pytest.param(
        "nofallback",
        ask(provider=P(allow_fallbacks=True)),
        Refused("provider_fallbacks", "provider.allow_fallbacks"),
        id="nofallback-widens",
    ),
    # fallback_models = ["openai/*"]
    pytest.param("fallbacks", ask(), Sent(None, "OpenAI"), id="fallbacks-silent"),
    pytest.param(
        "fallbacks",
        ask(fallback_models=["openai/gpt-5-mini"]),
        Sent(None, "OpenAI"),
        id="fallbacks-narrows",
    ),
    pytest.param(
        "fallbacks",
        ask(fallback_models=["openai/gpt-5-mini", "anthropic/claude-3.5-haiku"]),
        Refused("fallback_models", "fallback_models[1]"),
        id="fallbacks-widens",
    ),
    # allowed_plugins: a `:online` model is web search, whatever it is called.
    pytest.param("plugins", ask(), Sent(None, "OpenAI"), id="plugins-silent"),
    pytest.param(
        "plugins",
        ask(file_parser=pb.FileParserOptions(pdf_engine=pb.PDF_ENGINE_CLOUDFLARE_AI)),
        Sent(None, "OpenAI"),
        id="plugins-narrows",
    ),
    pytest.param(
        "plugins",
        ask(model="openai/gpt-4o-mini:online"),
        Refused("allowed_plugins", "model"),
        id="plugins-widens-online",
    ),
    pytest.param(
        "noplugins",
        ask(file_parser=pb.FileParserOptions(pdf_engine=pb.PDF_ENGINE_MISTRAL_OCR)),
        Refused("allowed_plugins", "file_parser"),
        id="plugins-widens-file-parser",
    ),
    pytest.param(
        "noplugins",
        ask(model="openai/gpt-4o-mini", fallback_models=["openai/gpt-5-mini:online"]),
        Refused("allowed_plugins", "fallback_models[0]"),
        id="plugins-widens-online-fallback",
    ),
    # Web search costs money: as the `web` plugin it is allowed_plugins', as the
    # `openrouter:web_search` server tool allowed_server_tools'.
    pytest.param(
        "websearch", ask(), Sent(None, "OpenAI", {"plugins": None}), id="web-plugin-silent"
    ),
    pytest.param(
        "websearch",
        ask(web_search=SEARCH(max_results=3, max_uses=1)),
        Sent(None, "OpenAI", {"plugins": [{"id": "web", "max_results": 3, "max_uses": 1}]}),
        id="web-plugin-narrows",
    ),
    pytest.param(
        "noplugins",
        ask(web_search=SEARCH()),
        Refused("allowed_plugins", "web_search.mode"),
        id="web-plugin-widens",
    ),
    pytest.param(
        "searchtool", ask(), Sent(None, "OpenAI", {"tools": None}), id="server-tools-silent"
    ),
    pytest.param(
        "searchtool",
        ask(web_search=SEARCH(mode=pb.WEB_SEARCH_MODE_TOOL, max_results=3, max_uses=1)),
        Sent(
            None,
            "OpenAI",
            {
                "tools": [
                    {
                        "type": "openrouter:web_search",
                        "parameters": {"max_results": 3, "max_uses": 1},
                    }
                ]
            },
        ),
        id="server-tools-narrows",
    ),
    pytest.param(
        "websearch",
        ask(web_search=SEARCH(mode=pb.WEB_SEARCH_MODE_TOOL)),
        Refused("allowed_server_tools", "web_search.mode"),
        id="server-tools-widens",
    ),
    # allowed_input_modalities = ["text"]
    pytest.param("textonly", ask(), Sent(None, "OpenAI"), id="modalities-silent"),
    pytest.param(
        "textonly",
        pb.CompleteRequest(messages=[user_parts(text("look"), text("closer"))]),
        Sent(None, "OpenAI"),
        id="modalities-narrows",
    ),
    pytest.param(
        "textonly",
        pb.CompleteRequest(messages=[user_parts(text("look"), image())]),
        Refused("allowed_input_modalities", "messages[0].parts[1]"),
        id="modalities-widens",
    ),
    # max_reasoning_effort = "low": a reasoning model left to itself spends medium effort.
    pytest.param(
        "effort",
        ask(model=GPT5),
        Sent(None, "OpenAI", {"reasoning": {"effort": "low"}}),
        id="effort-silent-reasoning-model",
    ),
    pytest.param(
        "effort", ask(), Sent(None, "OpenAI", {"reasoning": None}), id="effort-silent-plain-model"
    ),
    pytest.param(
        "effort",
        # The cap goes out for the reasoning model; the fallback that cannot reason ignores it
        # (the caller did not ask for reasoning, so no capability check refuses it).
        ask(model="openai/gpt-4o-mini", fallback_models=[GPT5]),
        Sent(
            None, "OpenAI", {"reasoning": {"effort": "low"}, "models": ["openai/gpt-4o-mini", GPT5]}
        ),
        id="effort-silent-mixed-candidates",
    ),
    pytest.param(
        "effort",
        ask(model=GPT5, reasoning=R(effort=pb.REASONING_EFFORT_MINIMAL, exclude=True)),
        Sent(None, "OpenAI", {"reasoning": {"effort": "minimal", "exclude": True}}),
        id="effort-narrows",
    ),
    pytest.param(
        "effort",
        ask(model=GPT5, reasoning=R(enabled=False)),
        Sent(None, "OpenAI", {"reasoning": {"enabled": False}}),
        id="effort-narrows-off",
    ),
    pytest.param(
        "effort",
        ask(model=GPT5, sampling=S(max_tokens=4000), reasoning=R(max_tokens=1024)),
        Sent(None, "OpenAI", {"reasoning": {"max_tokens": 1024}}),
        id="effort-narrows-budget",
    ),
    pytest.param(
        "effort",
        ask(model=GPT5, reasoning=R(effort=pb.REASONING_EFFORT_HIGH)),
        Refused("max_reasoning_effort", "reasoning.effort"),
        id="effort-widens",
    ),
    pytest.param(
        "effort",
        ask(model=GPT5, reasoning=R(enabled=True)),
        Refused("max_reasoning_effort", "reasoning.enabled"),
        id="effort-widens-enabled",
    ),
    pytest.param(
        "effort",
        # low is 20 % of max_tokens (at least 1,024): 800 here, so 1,024 at most.
        ask(model=GPT5, sampling=S(max_tokens=4000), reasoning=R(max_tokens=2000)),
        Refused("max_reasoning_effort", "reasoning.max_tokens"),
        id="effort-widens-budget",
    ),
    pytest.param(
        "effort",
        ask(model="anthropic/claude-sonnet-4.5:thinking"),
        Refused("max_reasoning_effort", "model"),
        id="effort-widens-thinking",
    ),
    # allowed_output_modalities = ["text"]
    pytest.param(
        "textout", ask(model=IMAGER), Sent(None, "Google", {"modalities": None}), id="out-silent"
    ),
    pytest.param(
        "textout",
        ask(model=IMAGER, output_modalities=[pb.MODALITY_TEXT]),
        Sent(None, "Google", {"modalities": ["text"]}),
        id="out-narrows",
    ),
    pytest.param(
        "textout",
        ask(model=IMAGER, output_modalities=[pb.MODALITY_TEXT, pb.MODALITY_IMAGE]),
        Refused("allowed_output_modalities", "output_modalities[1]"),
        id="out-widens",
    ),
    # No policy: the request's preferences go upstream as they are.
    pytest.param("open", ask(), Sent(None, "OpenAI"), id="open-silent"),
    pytest.param(
        "open",
        ask(
            model=LLAMA,
            provider=P(
                order=["together", "groq"],
                ignore=["chutes"],
                allow_fallbacks=False,
                sort=pb.PROVIDER_SORT_PRICE,
                quantizations=[pb.QUANTIZATION_FP8, pb.QUANTIZATION_FP16],
                max_price=pb.MaxPrice(prompt="0.5", completion="1.25", image="0", request="0"),
                require_parameters=True,
                data_collection=pb.DATA_COLLECTION_DENY,
                zdr=False,
            ),
        ),
        Sent(
            {
                "order": ["together", "groq"],
                "ignore": ["chutes"],
                "allow_fallbacks": False,
                "sort": "price",
                "quantizations": ["fp8", "fp16"],
                "max_price": {"prompt": 0.5, "completion": 1.25, "image": 0, "request": 0},
                "require_parameters": True,
                "data_collection": "deny",
                "zdr": False,
            },
            "Together",
        ),
        id="open-every-field",
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(callers=callers(POLICIES)) as harness:
        yield harness


@pytest.mark.parametrize(("caller", "request_", "expected"), CASES)
async def test_merge(
    gw: Harness,
    caller: str,
    request_: pb.CompleteRequest,
    expected: Sent | Refused,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    before = len(chat_requests(gw.sim))
    if isinstance(expected, Refused):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(request_, metadata=as_caller(caller))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.info.reason == "POLICY_VIOLATION"
        assert error.info.metadata["rule"] == expected.rule
        assert error.info.metadata["field"] == expected.field
        assert error.info.metadata["policy_id"].startswith("p-")
        assert expected.field in error.message
        assert len(chat_requests(gw.sim)) == before, "a refused request went upstream"
        # The operator's log line names the rule and the field too.
        [line] = [r.__dict__ for r in caplog.records if r.getMessage() == "rpc finished"]
        assert (line["reason"], line["rule"]) == ("POLICY_VIOLATION", expected.rule)
        assert line["policy_field"] == expected.field
        return
    reply = await gw.stub.Complete(request_, metadata=as_caller(caller))
    assert len(chat_requests(gw.sim)) == before + 1
    assert sent_provider(gw.sim) == expected.provider
    assert reply.provider == expected.served_by
    body = chat_requests(gw.sim)[-1].body
    for key, value in expected.body.items():
        assert body.get(key) == value, key
