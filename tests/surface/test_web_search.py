"""Web search (the web plugin and the web-search server tool) and parallel_tool_calls, through
a real gateway and the simulator: what goes upstream, the citations, the costs in Usage, the
ledger and GetUsage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.policy import Policy
from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, drain
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import exact, ledger_rows

TOOL = pb.WEB_SEARCH_MODE_TOOL


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


async def test_the_plugin_searches_once_cites_and_bills_the_fee(gw: Harness) -> None:
    request = pb.CompleteRequest(
        messages=[user("What is new in Pydantic AI?")], web_search=pb.WebSearchOptions()
    )
    reply = await gw.stub.Complete(request, metadata=auth())
    body = chat_requests(gw.sim)[-1].body
    # gpt-4o-mini has no native search: OpenRouter's choice (Exa); max_uses always sent.
    assert body["plugins"] == [{"id": "web", "max_results": 5, "max_uses": 1}]
    assert "tools" not in body
    citations = [a.url_citation for a in reply.annotations if a.HasField("url_citation")]
    assert len(citations) == 5
    assert all(c.url.startswith("https://") for c in citations)
    usage = reply.usage
    assert usage.web_search_requests == 1
    assert usage.server_tool_calls == 1
    assert usage.HasField("upstream_inference_cost_usd")
    # The cost is the provider's inference plus OpenRouter's $0.007 Exa fee, to the decimal.
    assert exact(usage.cost_usd) == exact(usage.upstream_inference_cost_usd) + Decimal("0.007")
    # The results join the prompt: 5 results of ~400 tokens each.
    assert usage.prompt_tokens > 2000
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert (row["web_search_requests"], row["server_tool_calls"]) == (1, 1)
    assert Decimal(row["cost_usd"]) == exact(usage.cost_usd)
    assert Decimal(row["upstream_cost_usd"]) == exact(usage.upstream_inference_cost_usd)
    assert Decimal(row["tool_cost_usd"]) == Decimal("0.007")
    assert row["byok"] == 0
    totals = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    assert totals.web_search_requests == 1
    assert exact(totals.tool_cost_usd) == Decimal("0.007")
    assert exact(totals.cost_usd) == exact(usage.cost_usd)


async def test_the_server_tool_searches_as_the_model_decides(gw: Harness) -> None:
    options = pb.WebSearchOptions(
        mode=TOOL,
        max_uses=3,
        max_results=12,
        search_context_size=pb.SEARCH_CONTEXT_SIZE_LOW,
        allowed_domains=["arxiv.org", "*.example.org"],
        excluded_domains=["reddit.com"],
    )
    request = pb.CompleteRequest(
        model="openai/gpt-5-mini",
        messages=[user("Find two papers [[sim:searches=2]]")],
        web_search=options,
        parallel_tool_calls=False,
    )
    reply = await gw.stub.Complete(request, metadata=auth())
    body = chat_requests(gw.sim)[-1].body
    assert body["tools"] == [
        {
            "type": "openrouter:web_search",
            "parameters": {
                "max_results": 12,
                "max_uses": 3,
                "search_context_size": "low",
                "allowed_domains": ["arxiv.org", "*.example.org"],
                "excluded_domains": ["reddit.com"],
            },
        }
    ]
    assert body["parallel_tool_calls"] is False
    assert "plugins" not in body
    assert not reply.tool_calls  # server-tool calls are OpenRouter's, never the caller's
    usage = reply.usage
    assert (usage.web_search_requests, usage.server_tool_calls) == (2, 2)
    # gpt-5-mini searches natively at $0.01 a search.
    assert exact(usage.cost_usd) == exact(usage.upstream_inference_cost_usd) + Decimal("0.02")
    assert len(reply.annotations) == 2 * 12


async def test_a_streamed_search_with_two_finish_chunks_ends_once(gw: Harness) -> None:
    request = pb.StreamCompleteRequest(
        model="openai/gpt-5-mini",
        messages=[user("Search, streaming")],
        web_search=pb.WebSearchOptions(mode=TOOL, max_results=3),
    )
    outcome = await drain(gw.stub.StreamComplete(request, metadata=auth()))
    assert outcome.error is None
    assert outcome.kinds.count("end") == 1
    assert outcome.kinds[-1] == "end"
    cited = [a for m in outcome.messages if m.HasField("delta") for a in m.delta.annotations]
    assert len(cited) == 3
    end = outcome.messages[-1].end
    assert end.usage.web_search_requests == 1
    assert exact(end.usage.cost_usd) == exact(end.usage.upstream_inference_cost_usd) + Decimal(
        "0.01"
    )


async def test_plugin_options_and_engines_go_upstream_as_openrouter_names_them(
    gw: Harness,
) -> None:
    options = pb.WebSearchOptions(
        engine=pb.WEB_SEARCH_ENGINE_EXA,
        max_results=12,
        search_prompt="Sources found today:",
        search_context_size=pb.SEARCH_CONTEXT_SIZE_HIGH,
        allowed_domains=["docs.python.org"],
        excluded_domains=["example.com"],
    )
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Python news")], web_search=options), metadata=auth()
    )
    body = chat_requests(gw.sim)[-1].body
    assert body["plugins"] == [
        {
            "id": "web",
            "max_results": 12,
            "engine": "exa",
            "max_uses": 1,
            "search_prompt": "Sources found today:",
            "include_domains": ["docs.python.org"],
            "exclude_domains": ["example.com"],
        }
    ]
    assert body["web_search_options"] == {"search_context_size": "high"}
    # Exa: $0.007 for up to 10 results, then $0.001 a result.
    assert exact(reply.usage.cost_usd) == exact(reply.usage.upstream_inference_cost_usd) + Decimal(
        "0.009"
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (pb.WebSearchOptions(max_results=0), "web_search.max_results"),
        (pb.WebSearchOptions(max_results=26), "web_search.max_results"),
        (pb.WebSearchOptions(max_uses=11), "web_search.max_uses"),
        (pb.WebSearchOptions(mode=TOOL, search_prompt="x"), "web_search.search_prompt"),
        (pb.WebSearchOptions(search_prompt="x" * 4001), "web_search.search_prompt"),
        (pb.WebSearchOptions(allowed_domains=["not a domain"]), "web_search.allowed_domains[0]"),
        (pb.WebSearchOptions(excluded_domains=["x.org"] * 33), "web_search.excluded_domains"),
        (pb.WebSearchOptions(engine=pb.WebSearchEngine.ValueType(9)), "web_search.engine"),
    ],
)
async def test_bad_options_name_the_field(
    gw: Harness, options: pb.WebSearchOptions, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("x")], web_search=options), metadata=auth()
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in error.detail(error_details_pb2.BadRequest).field_violations]
    assert field in fields
    assert chat_requests(gw.sim) == []


async def test_parallel_tool_calls_needs_tools(gw: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("x")], parallel_tool_calls=True), metadata=auth()
        )
    violations = rich_error(caught.value).detail(error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["parallel_tool_calls"]
    tool = pb.Tool(name="lookup")
    await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("x")], tools=[tool], parallel_tool_calls=True),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("mistralai/mistral-7b-instruct", pb.WebSearchOptions(mode=TOOL), "web_search.mode"),
        (
            "openai/gpt-4o-mini",
            pb.WebSearchOptions(engine=pb.WEB_SEARCH_ENGINE_NATIVE),
            "web_search.engine",
        ),
    ],
)
async def test_what_a_model_cannot_do_is_refused_before_upstream(
    gw: Harness, model: str, options: pb.WebSearchOptions, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(
            pb.CompleteRequest(model=model, messages=[user("x")], web_search=options),
            metadata=auth(),
        )
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNSUPPORTED_FEATURE",
    )
    assert error.info.metadata["field"] == field
    assert chat_requests(gw.sim) == []


async def test_native_search_and_structured_output_together(gw: Harness) -> None:
    reply = await gw.stub.CompleteStructured(
        pb.CompleteStructuredRequest(
            model="anthropic/claude-sonnet-4.5",
            schema_name="chat_reply_v1",
            messages=[user("Search and answer")],
            web_search=pb.WebSearchOptions(engine=pb.WEB_SEARCH_ENGINE_NATIVE),
        ),
        metadata=auth(),
    )
    assert reply.json
    assert chat_requests(gw.sim)[-1].body["plugins"][-1]["engine"] == "native"
    assert reply.usage.web_search_requests == 1
    # The sources come back beside the JSON.
    cited = [a.url_citation for a in reply.annotations]
    assert len(cited) == 5
    assert all(c.url.startswith("https://") for c in cited)
    assert exact(reply.usage.cost_usd) == exact(reply.usage.upstream_inference_cost_usd) + Decimal(
        "0.01"
    )


POLICY_KEY = "key-policy-CALLERSECRET"


async def test_the_callers_policy_decides_who_may_search() -> None:
    no_search = Policy(
        allowed_plugins=frozenset({"file-parser"}),
        allowed_server_tools=frozenset({"openrouter:web_search"}),
    )
    callers = [Caller("team", hash_key(POLICY_KEY), ("*",), policy=no_search)]
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=callers
    ) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("x")], web_search=pb.WebSearchOptions()),
                metadata=auth(POLICY_KEY),
            )
        error = rich_error(caught.value)
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "POLICY_VIOLATION",
        )
        assert error.info.metadata["rule"] == "allowed_plugins"
        assert error.info.metadata["field"] == "web_search.mode"
        # The server tool is allowed for this team.
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                model="openai/gpt-5-mini",
                messages=[user("x")],
                web_search=pb.WebSearchOptions(mode=TOOL),
            ),
            metadata=auth(POLICY_KEY),
        )
        assert reply.usage.web_search_requests == 1
        assert chat_requests(gw.sim)[-1].body["tools"][0]["type"] == "openrouter:web_search"


async def test_an_online_model_is_reserved_as_a_web_search() -> None:
    # gpt-4o-mini's plain call reserves well under a cent; a search reserves its Exa fee
    # ($0.015 at most) and 75,000 result tokens on top.
    budget = Caller(
        "budget", hash_key(POLICY_KEY), ("*",), CallerLimits(usd_per_day=Decimal("0.01"))
    )
    async with start_gateway(
        sim_config=SimulatorConfig(keepalive_comments=0), callers=[budget]
    ) as gw:
        await gw.stub.Complete(
            pb.CompleteRequest(model="openai/gpt-4o-mini", messages=[user("x")]),
            metadata=auth(POLICY_KEY),
        )
        for request in (
            pb.CompleteRequest(model="openai/gpt-4o-mini:online", messages=[user("x")]),
            pb.CompleteRequest(messages=[user("x")], web_search=pb.WebSearchOptions()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gw.stub.Complete(request, metadata=auth(POLICY_KEY))
            assert rich_error(caught.value).info.reason == "QUOTA_EXCEEDED"


async def test_a_structured_stream_ends_with_the_searchs_sources(gw: Harness) -> None:
    request = pb.StreamCompleteStructuredRequest(
        model="anthropic/claude-sonnet-4.5",
        schema_name="chat_reply_v1",
        messages=[user("Search and answer, streaming")],
        web_search=pb.WebSearchOptions(max_results=3),
    )
    messages = [m async for m in gw.stub.StreamCompleteStructured(request, metadata=auth())]
    end = messages[-1].end
    assert end.json
    assert [a.WhichOneof("kind") for a in end.annotations] == ["url_citation"] * 3
    assert not end.unsupported_outputs  # citations are carried, not counted as dropped
    assert end.usage.web_search_requests == 1
