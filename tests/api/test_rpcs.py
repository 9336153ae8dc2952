"""Every RPC through a real server against the simulator: what comes back, and its metadata."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator.generate import seed_for, text_pieces
from service.simulator.scenarios import strip_directives
from tests.api.support import PROMPT, assert_whole_tokens, chat_requests, drain, stream
from tests.harness import BETA_KEY, auth, rich_error, start_gateway, user


def expected_text(prompt: str, tokens: int) -> str:
    """What the simulator writes for this prompt: deterministic words seeded by the text."""
    return "".join(text_pieces(seed_for(strip_directives(prompt)), tokens))


def expected_reasoning(prompt: str, tokens: int) -> str:
    return "".join(text_pieces(seed_for(strip_directives(prompt)) + 1, tokens))


def weather_tool() -> pb.Tool:
    parameters = struct_pb2.Struct()
    parameters.update(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        }
    )
    return pb.Tool(name="get_weather", description="Forecast for a city", parameters=parameters)


# --- Complete --------------------------------------------------------------------------


async def test_complete_returns_the_simulators_answer_with_usage_and_ids() -> None:
    prompt = f"{PROMPT} [[sim:tokens=7]]"
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user(prompt)]), metadata=auth())

        generation = await gw.sim.state.wait_for_generation(reply.id)
        assert reply.content == expected_text(prompt, 7)
        assert re.fullmatch(r"gen-\d+-\w{20}", reply.id)
        assert reply.model == "openai/gpt-4o-mini"
        assert reply.provider == "OpenAI"
        assert reply.finish_reason == pb.FINISH_REASON_STOP
        assert reply.native_finish_reason == "stop"
        assert reply.usage.completion_tokens == 7
        assert reply.usage.prompt_tokens == generation.tokens_prompt > 0
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7
        assert reply.usage.cost_usd == pytest.approx(generation.total_cost)
        assert reply.usage.cost_usd > 0
        assert not reply.tool_calls
        assert reply.reasoning == ""


async def test_complete_reports_the_serving_provider_and_its_native_finish_reason() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                model="anthropic/claude-3.5-haiku", messages=[user("Hi [[sim:tokens=3]]")]
            ),
            metadata=auth(),
        )
        assert reply.model == "anthropic/claude-3.5-haiku"
        assert reply.provider == "Anthropic"
        assert reply.finish_reason == pb.FINISH_REASON_STOP
        assert reply.native_finish_reason == "end_turn"


async def test_complete_cut_by_max_tokens_finishes_with_length() -> None:
    prompt = "Long one [[sim:tokens=50]]"
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user(prompt)], sampling=pb.SamplingParams(max_tokens=5)),
            metadata=auth(),
        )
        assert reply.finish_reason == pb.FINISH_REASON_LENGTH
        assert reply.usage.completion_tokens == 5
        assert reply.content == expected_text(prompt, 50)[: len(reply.content)]


async def test_complete_returns_tool_calls_when_the_model_calls_a_tool() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(
                messages=[user("Weather in Oslo? [[sim:tool-call]]")], tools=[weather_tool()]
            ),
            metadata=auth(),
        )
        assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        assert reply.content == ""
        [call] = reply.tool_calls
        assert call.name == "get_weather"
        assert re.fullmatch(r"call_\w{24}", call.id)
        arguments = json.loads(call.arguments_json)
        assert isinstance(arguments["city"], str)
        assert isinstance(arguments["days"], int)
        assert reply.usage.completion_tokens > 0


async def test_complete_returns_reasoning_and_counts_its_tokens() -> None:
    prompt = "Think first [[sim:reasoning=5]] [[sim:tokens=3]]"
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user(prompt)]), metadata=auth())
        assert reply.reasoning == expected_reasoning(prompt, 5)
        assert reply.content == expected_text(prompt, 3)
        assert reply.usage.reasoning_tokens == 5
        assert reply.usage.completion_tokens == 8


# --- StreamComplete ----------------------------------------------------------------------


async def test_stream_is_start_then_ordered_deltas_then_exactly_one_end() -> None:
    prompt = f"{PROMPT} [[sim:tokens=12]]"
    async with start_gateway() as gw:
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))

        assert outcome.error is None
        assert outcome.shape == ["start", "delta", "end"]
        start = outcome.messages[0].start
        [upstream] = chat_requests(gw.sim)
        assert start.id == upstream.generation_id
        assert start.model == "openai/gpt-4o-mini"
        assert start.provider == "OpenAI"
        pieces = [m.delta.content for m in outcome.messages[1:-1]]
        assert_whole_tokens(pieces, text_pieces(seed_for(strip_directives(prompt)), 12))
        assert outcome.content == expected_text(prompt, 12)
        end = outcome.messages[-1].end
        assert end.finish_reason == pb.FINISH_REASON_STOP
        assert end.native_finish_reason == "stop"
        generation = await gw.sim.state.wait_for_generation(start.id)
        assert end.usage.completion_tokens == 12
        assert end.usage.prompt_tokens == generation.tokens_prompt
        assert end.usage.total_tokens == end.usage.prompt_tokens + 12
        assert end.usage.cost_usd == pytest.approx(generation.total_cost)


async def test_stream_and_complete_agree_on_the_answer() -> None:
    prompt = "Same question [[sim:tokens=9]]"
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user(prompt)]), metadata=auth())
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))
        assert outcome.content == reply.content
        assert outcome.messages[-1].end.usage.completion_tokens == reply.usage.completion_tokens


async def test_stream_relays_tool_call_deltas() -> None:
    async with start_gateway() as gw:
        outcome = await stream(
            gw,
            pb.StreamCompleteRequest(
                messages=[user("Weather in Oslo? [[sim:tool-call=get_weather]]")],
                tools=[weather_tool()],
            ),
        )
        assert outcome.error is None
        assert outcome.kinds[0] == "start"
        assert outcome.kinds[-1] == "end"
        pieces = [p for m in outcome.messages if m.HasField("delta") for p in m.delta.tool_calls]
        # The pieces of one call (merged, when they arrived together, into fewer pieces).
        first, *rest = pieces
        assert first.index == 0
        assert first.name == "get_weather"
        assert re.fullmatch(r"call_\w{24}", first.id)
        assert all(p.index == 0 and p.id == "" and p.name == "" for p in rest)
        arguments = json.loads("".join(p.arguments for p in pieces))
        assert isinstance(arguments["city"], str)
        assert outcome.content == ""
        assert outcome.messages[-1].end.finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_stream_relays_reasoning_before_the_answer() -> None:
    prompt = "Think first [[sim:reasoning=4]] [[sim:tokens=3]]"
    async with start_gateway() as gw:
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))
        deltas = [m.delta for m in outcome.messages if m.HasField("delta")]
        # Reasoning deltas, then answer deltas, never one delta with both (merging keeps
        # kinds apart, so the order between them stays visible).
        kinds = [(bool(d.reasoning), bool(d.content)) for d in deltas]
        assert (True, True) not in kinds
        assert kinds == sorted(kinds, key=lambda kind: kind[1])
        assert kinds[0] == (True, False)
        assert kinds[-1] == (False, True)
        assert outcome.reasoning == expected_reasoning(prompt, 4)
        assert outcome.content == expected_text(prompt, 3)
        assert outcome.messages[-1].end.usage.reasoning_tokens == 4


# --- ListModels --------------------------------------------------------------------------


async def _simulator_models(base_url: str) -> dict[str, dict[str, Any]]:
    # Every kind of model, as the gateway asks (embedding models too).
    url = f"{base_url}/models?output_modalities=all"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        listing = await resp.json()
    return {entry["id"]: entry for entry in listing["data"]}


async def test_list_models_gives_alpha_every_model_sorted_with_prices_and_capabilities() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
        upstream = await _simulator_models(gw.sim.base_url)

        assert [m.id for m in reply.models] == sorted(upstream)
        assert reply.default_model == "openai/gpt-4o-mini"
        for model in reply.models:
            entry = upstream[model.id]
            params = set(entry["supported_parameters"])
            assert model.name == entry["name"]
            assert model.context_length == entry["context_length"]
            assert model.max_completion_tokens == entry["top_provider"]["max_completion_tokens"]
            prices = entry["pricing"]
            if prices["prompt"] == "-1":
                # Variable (a router): no amount at all, never "0".
                assert model.pricing == pb.ModelPricing(variable=True)
            else:
                assert not model.pricing.variable
                assert model.pricing.prompt_usd_per_token == prices["prompt"]
                assert model.pricing.completion_usd_per_token == prices["completion"]
                assert model.pricing.request_usd == prices["request"]
                # Kinds the listing lacks are empty (does not apply), not "0".
                for kind, field in (
                    ("web_search", "web_search_usd"),
                    ("input_cache_read", "cache_read_usd_per_token"),
                    ("input_cache_write", "cache_write_usd_per_token"),
                    ("input_cache_write_1h", "cache_write_1h_usd_per_token"),
                    ("internal_reasoning", "internal_reasoning_usd_per_token"),
                    ("input_audio_cache", "audio_cache_usd_per_token"),
                ):
                    assert getattr(model.pricing, field) == prices.get(kind, "")
            assert model.supports_reasoning == bool({"reasoning", "include_reasoning"} & params)
            assert model.supports_structured_outputs == ("structured_outputs" in params)
            assert model.supports_response_format == ("response_format" in params)
            assert model.supports_tools == ("tools" in params)
        mini = next(m for m in reply.models if m.id == "openai/gpt-4o-mini")
        assert mini.pricing.prompt_usd_per_token == "0.00000015"
        assert (mini.supports_tools, mini.supports_structured_outputs) == (True, True)
        llama = next(m for m in reply.models if m.id == "meta-llama/llama-3.1-8b-instruct")
        assert (llama.supports_tools, llama.supports_structured_outputs) == (False, False)


async def test_list_models_shows_beta_only_its_allowed_models() -> None:
    async with start_gateway() as gw:
        reply = await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth(BETA_KEY))
        upstream = await _simulator_models(gw.sim.base_url)
        assert [m.id for m in reply.models] == sorted(
            i for i in upstream if i.startswith("openai/")
        )
        assert reply.models


# --- x-request-id --------------------------------------------------------------------------


async def test_the_request_id_sent_is_echoed_by_every_rpc() -> None:
    metadata = (*auth(), ("x-request-id", "req-echo-42"))
    async with start_gateway() as gw:
        unary = gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=metadata)
        await unary
        listing = gw.stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        await listing
        streamed = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=2]]")]), metadata=metadata
        )
        async for _ in streamed:
            pass
        for call in (unary, listing, streamed):
            assert dict(await call.trailing_metadata() or ())["x-request-id"] == "req-echo-42"
        assert [r.request_id for r, _ in await gw.wait_finished(3)] == ["req-echo-42"] * 3


async def test_a_stream_gives_its_request_id_in_the_headers_before_the_first_message() -> None:
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=3]]")]),
            metadata=(*auth(), ("x-request-id", "req-early-1")),
        )
        assert dict(await call.initial_metadata() or ())["x-request-id"] == "req-early-1"
        outcome = await drain(call)
        assert outcome.shape == ["start", "delta", "end"]
        assert outcome.trailing["x-request-id"] == "req-early-1"


@pytest.mark.parametrize("sent", [None, "x" * 129], ids=["absent", "too-long"])
async def test_a_request_id_is_generated_when_none_usable_is_sent(sent: str | None) -> None:
    metadata = auth() if sent is None else (*auth(), ("x-request-id", sent))
    async with start_gateway() as gw:
        ids = []
        for _ in range(2):
            call = gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=metadata)
            await call
            request_id = dict(await call.trailing_metadata() or ())["x-request-id"]
            assert isinstance(request_id, str)
            ids.append(request_id)
        assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
        assert ids[0] != ids[1]
        assert [r.request_id for r, _ in await gw.wait_finished(2)] == ids


async def test_an_error_carries_the_request_id_in_trailers_and_error_info() -> None:
    metadata = (*auth(), ("x-request-id", "req-error-7"))
    async with start_gateway(openrouter={"max_retries": 0}) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hi [[sim:error=502]]")]), metadata=metadata
            )
        assert dict(caught.value.trailing_metadata() or ())["x-request-id"] == "req-error-7"
        assert rich_error(caught.value).info.metadata["request_id"] == "req-error-7"
