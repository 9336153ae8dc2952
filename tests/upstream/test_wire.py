"""Request bodies and response parsing against the shapes in the research notes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from service.domain.completion import (
    CompletionRequest,
    FinishReason,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolDefinition,
    Usage,
)
from service.domain.models import ModelPricing
from service.errors import (
    UpstreamBadRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)
from service.upstream import wire

from . import samples

HELLO = (Message(Role.USER, "hi"),)


def test_minimal_body_sends_no_unset_sampling_params() -> None:
    body = wire.build_body(
        CompletionRequest(model="openai/gpt-4o-mini", messages=HELLO), stream=False
    )
    assert body == {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_full_body() -> None:
    request = CompletionRequest(
        model="openai/gpt-4o",
        messages=(
            Message(Role.SYSTEM, "be brief"),
            Message(Role.USER, "divide", name="alice"),
            Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "divide", '{"a":1}'),)),
            Message(Role.TOOL, "0.5", tool_call_id="c1"),
        ),
        sampling=SamplingParams(
            temperature=0.0, top_p=0.9, max_tokens=64, seed=7, stop=("END",), top_k=40
        ),
        fallback_models=("anthropic/claude-3.5-haiku", "openai/gpt-4o"),
        tools=(ToolDefinition("divide", "Divide", {"type": "object"}, strict=True),),
        tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "divide"),
        user="u-hash",
        response_format=ResponseFormat(
            ResponseFormatKind.JSON_SCHEMA, "reply", {"type": "object"}, strict=True
        ),
        require_parameters=True,
        plugins=("response-healing",),
        trace_headers={"traceparent": "00-abc-def-01"},
    )
    body = wire.build_body(request, stream=True)
    assert body["stream"] is True
    assert body["models"] == ["openai/gpt-4o", "anthropic/claude-3.5-haiku"]
    assert body["temperature"] == 0.0  # zero is set, not "unset"
    assert body["max_tokens"] == 64
    assert body["top_k"] == 40
    assert body["seed"] == 7
    assert body["stop"] == ["END"]
    assert "frequency_penalty" not in body
    assert "presence_penalty" not in body
    assert body["messages"][1] == {"role": "user", "content": "divide", "name": "alice"}
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "divide", "arguments": '{"a":1}'}}
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": "0.5", "tool_call_id": "c1"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "divide",
                "parameters": {"type": "object"},
                "description": "Divide",
                "strict": True,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "divide"}}
    assert body["user"] == "u-hash"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "strict": True, "schema": {"type": "object"}},
    }
    assert body["provider"] == {"require_parameters": True}
    assert body["plugins"] == [{"id": "response-healing"}]
    for deprecated in ("stream_options", "usage", "transforms", "route", "include_reasoning"):
        assert deprecated not in body
    # Trace context goes in headers, never in the body.
    assert "traceparent" not in orjson.dumps(body).decode()


def test_json_object_and_simple_tool_choice() -> None:
    request = CompletionRequest(
        model="m",
        messages=HELLO,
        tool_choice=ToolChoice(ToolChoiceMode.REQUIRED),
        response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT),
    )
    body = wire.build_body(request, stream=False)
    assert body["tool_choice"] == "required"
    assert body["response_format"] == {"type": "json_object"}
    assert "models" not in body
    assert "provider" not in body
    assert "plugins" not in body


def test_tool_call_capture() -> None:
    completion = wire.parse_completion(samples.TOOL_CALL_BODY)
    assert completion.content == ""
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert completion.native_finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall(
            "3sniiMddS",
            "divide",
            '{"numerator": 123, "denominator": 456, "on_inf": "infinity"}',
        ),
    )
    assert completion.provider == "Mistral"
    assert completion.id == "gen-1762047030-dJUcJW4ildNGqK4UV6iJ"
    assert completion.usage == Usage(prompt_tokens=134, completion_tokens=43, total_tokens=177)
    assert completion.usage.cost_usd is None


def test_reasoning_answer_with_cost_and_native_finish() -> None:
    completion = wire.parse_completion(samples.REASONING_BODY)
    assert completion.content == "Paris."
    assert completion.reasoning == "The capital of France is Paris."
    assert completion.finish_reason is FinishReason.STOP
    assert completion.native_finish_reason == "completed"
    assert completion.usage.cost_usd == pytest.approx(0.00353025)
    assert completion.usage.reasoning_tokens == 192
    assert completion.created == 1770000000


def test_provider_missing_and_content_null() -> None:
    body = {
        "id": "gen-1",
        "model": "m",
        "choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": None}],
    }
    completion = wire.parse_completion(body)
    assert completion.provider == ""
    assert completion.content == ""
    assert completion.finish_reason is FinishReason.UNSPECIFIED
    assert completion.usage == Usage()


def test_choice_error_is_raised_as_mapped_error() -> None:
    with pytest.raises(UpstreamUnavailableError) as info:
        wire.parse_completion(samples.CHOICE_ERROR_BODY)
    assert info.value.status == 502
    assert info.value.metadata["error_type"] == "provider_unavailable"
    assert "partial output" not in info.value.message


def test_unreadable_answers_are_protocol_errors() -> None:
    with pytest.raises(UpstreamProtocolError):
        wire.parse_completion({"id": "x", "choices": []})
    with pytest.raises(UpstreamProtocolError):
        wire.load_object(b"<html>oops</html>", "the answer")
    with pytest.raises(UpstreamProtocolError):
        wire.load_object(b"[1, 2]", "the answer")
    with pytest.raises(UpstreamProtocolError):
        wire.parse_chunk('{"id": "gen-1", "choices": [')


def test_usage_details() -> None:
    usage = wire.parse_usage(samples.GROK_USAGE)
    assert usage == Usage(
        prompt_tokens=687,
        completion_tokens=254,
        total_tokens=941,
        reasoning_tokens=184,
        cached_tokens=686,
        cost_usd=0.0043275,
    )
    assert wire.parse_usage(None) is None
    assert wire.parse_usage({"prompt_tokens": 2, "completion_tokens": 3}) == Usage(2, 3, 5)


def test_stream_chunks() -> None:
    first = wire.parse_chunk(orjson.dumps(samples.GROK_CHUNKS[0]))
    assert (first.id, first.provider, first.model) == (samples.GROK_ID, "xAI", "x-ai/grok-4")
    assert first.content == ""
    assert first.finish_reason is None
    assert first.usage is None
    finish = wire.parse_chunk(orjson.dumps(samples.GROK_CHUNKS[4]))
    assert (finish.finish_reason, finish.native_finish_reason) == ("stop", "completed")
    usage = wire.parse_chunk(orjson.dumps(samples.GROK_CHUNKS[5]))
    assert usage.finish_reason is None
    assert usage.usage is not None
    shapes: list[dict[str, Any]] = [{"choices": []}, {}]
    for choices in shapes:
        chunk = wire.parse_chunk(orjson.dumps({"id": "g", **choices, "usage": samples.GROK_USAGE}))
        assert chunk.usage == wire.parse_usage(samples.GROK_USAGE)


def test_stream_tool_call_and_reasoning_deltas() -> None:
    start = {
        "id": "g",
        "choices": [
            {
                "delta": {
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "divide", "arguments": ""},
                        }
                    ],
                }
            }
        ],
    }
    more = {
        "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a'}}]}}]
    }
    assert wire.parse_chunk(orjson.dumps(start)).tool_calls == (
        ToolCallDelta(0, "call_1", "divide", ""),
    )
    assert wire.parse_chunk(orjson.dumps(more)).tool_calls == (ToolCallDelta(0, None, None, '{"a'),)
    reasoning = {
        "choices": [
            {
                "delta": {
                    "content": "",
                    "reasoning": "think",
                    "reasoning_details": [{"type": "reasoning.text", "text": "think"}],
                }
            }
        ]
    }
    assert wire.parse_chunk(orjson.dumps(reasoning)).reasoning == "think"
    pieces = [
        {"type": "reasoning.text", "text": "a"},
        {"type": "reasoning.summary", "summary": "b"},
    ]
    details_only = {"choices": [{"delta": {"reasoning_details": pieces}}]}
    assert wire.parse_chunk(orjson.dumps(details_only)).reasoning == "ab"


def test_stream_error_chunks() -> None:
    documented = wire.parse_chunk(orjson.dumps(samples.DOCUMENTED_ERROR_CHUNK))
    assert isinstance(documented.error, UpstreamRateLimitError)
    assert documented.error.metadata["error_type"] == "rate_limit_exceeded"
    minimax = wire.parse_chunk(orjson.dumps(samples.MINIMAX_CHUNKS[-1]))
    assert isinstance(minimax.error, UpstreamBadRequestError)
    assert minimax.usage == Usage(43, 10, 53, cost_usd=0.0)
    string_code = wire.parse_chunk(
        orjson.dumps({"id": "g", "error": {"code": "server_error", "message": "x"}, "choices": []})
    )
    assert isinstance(string_code.error, UpstreamUnavailableError)
    assert string_code.error.status == 500


def test_models() -> None:
    models = wire.parse_models(samples.MODELS_BODY)
    assert [m.id for m in models] == ["openai/gpt-4o", "openrouter/auto"]
    gpt = models[0]
    assert gpt.pricing == ModelPricing(
        prompt=Decimal("0.0000025"), completion=Decimal("0.00001"), request=Decimal(0)
    )
    assert gpt.pricing.cost(1000, 100) == Decimal("0.0035")
    assert gpt.context_length == 128000
    assert gpt.max_completion_tokens == 16384
    assert gpt.supports_structured_outputs
    assert gpt.supports_response_format
    assert not gpt.supports_tools
    auto = models[1]
    # "-1" (variable price) must not produce a negative cost, nor pass as free.
    assert auto.pricing == ModelPricing(variable=True)
    assert auto.max_completion_tokens is None
    with pytest.raises(UpstreamProtocolError):
        wire.parse_models({"models": []})


def test_generation() -> None:
    stats = wire.parse_generation(samples.GENERATION_BODY)
    assert stats.id == "gen-123"
    assert stats.model == "openai/gpt-4o"
    assert stats.total_cost_usd == pytest.approx(0.0015)
    assert (stats.prompt_tokens, stats.completion_tokens) == (11, 26)
    assert (stats.reasoning_tokens, stats.cached_tokens) == (5, 3)
    assert stats.cancelled is False
    assert stats.finish_reason == "stop"
    with pytest.raises(UpstreamProtocolError):
        wire.parse_generation({"data": None})
