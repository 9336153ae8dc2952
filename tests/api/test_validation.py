"""Bad requests: INVALID_ARGUMENT with a BadRequest naming each wrong field, nothing sent upstream.

Size limits are made small through the gateway settings so the requests stay small.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.support import chat_requests, complete_error, stream_error
from tests.harness import Harness, RichError, auth, start_gateway, user

LIMITS = {
    "max_messages": 3,
    "max_message_chars": 20,
    "max_total_chars": 50,
    "max_tokens_cap": 2000,
}


def msg(role: pb.Role.ValueType, content: str = "hello", **fields: Any) -> pb.Message:
    return pb.Message(role=role, content=content, **fields)


def tool(name: str) -> pb.Tool:
    return pb.Tool(name=name)


def sampling(**fields: Any) -> dict[str, Any]:
    return {"sampling": pb.SamplingParams(**fields)}


OK_MESSAGES = [user("hello")]

# (request fields, the one field the BadRequest must name)
CASES: list[Any] = [
    pytest.param({"messages": []}, "messages", id="no-messages"),
    pytest.param({"messages": [msg(pb.ROLE_UNSPECIFIED)]}, "messages[0].role", id="role-unset"),
    pytest.param({"messages": [user("")]}, "messages[0].content", id="empty-content"),
    pytest.param({"messages": [user("a")] * 4}, "messages", id="too-many-messages"),
    pytest.param({"messages": [user("x" * 21)]}, "messages[0].content", id="message-too-long"),
    pytest.param({"messages": [user("x" * 20)] * 3}, "messages", id="total-too-long"),
    pytest.param(
        {"messages": [user("a"), msg(pb.ROLE_TOOL, "42")]},
        "messages[1].tool_call_id",
        id="tool-message-without-call-id",
    ),
    pytest.param(
        {"messages": [msg(pb.ROLE_USER, tool_call_id="call_1")]},
        "messages[0].tool_call_id",
        id="call-id-on-user-message",
    ),
    pytest.param(
        {"messages": [msg(pb.ROLE_USER, tool_calls=[pb.ToolCall(id="c", name="f")])]},
        "messages[0].tool_calls",
        id="tool-calls-on-user-message",
    ),
    pytest.param(
        {"messages": [user("a"), msg(pb.ROLE_ASSISTANT, "", tool_calls=[pb.ToolCall(id="c")])]},
        "messages[1].tool_calls[0]",
        id="tool-call-without-name",
    ),
    pytest.param({"messages": [msg(pb.ROLE_USER, name="n" * 65)]}, "messages[0].name", id="name"),
    pytest.param(sampling(temperature=-0.1), "sampling.temperature", id="temperature-low"),
    pytest.param(sampling(temperature=2.01), "sampling.temperature", id="temperature-high"),
    pytest.param(sampling(temperature=math.nan), "sampling.temperature", id="temperature-nan"),
    pytest.param(sampling(top_p=0.0), "sampling.top_p", id="top-p-zero"),
    pytest.param(sampling(top_p=1.01), "sampling.top_p", id="top-p-high"),
    pytest.param(sampling(top_k=-1), "sampling.top_k", id="top-k-negative"),
    pytest.param(sampling(top_k=1001), "sampling.top_k", id="top-k-high"),
    pytest.param(sampling(max_tokens=0), "sampling.max_tokens", id="max-tokens-zero"),
    pytest.param(sampling(max_tokens=2001), "sampling.max_tokens", id="max-tokens-above-cap"),
    pytest.param(sampling(frequency_penalty=2.5), "sampling.frequency_penalty", id="freq-high"),
    pytest.param(sampling(frequency_penalty=-2.5), "sampling.frequency_penalty", id="freq-low"),
    pytest.param(sampling(presence_penalty=2.5), "sampling.presence_penalty", id="presence-high"),
    pytest.param(sampling(presence_penalty=-2.5), "sampling.presence_penalty", id="presence-low"),
    pytest.param(
        sampling(repetition_penalty=0.0), "sampling.repetition_penalty", id="repetition-zero"
    ),
    pytest.param(
        sampling(repetition_penalty=2.5), "sampling.repetition_penalty", id="repetition-high"
    ),
    pytest.param(sampling(stop=["a", "b", "c", "d", "e"]), "sampling.stop", id="five-stops"),
    pytest.param(sampling(stop=["ok", ""]), "sampling.stop[1]", id="empty-stop"),
    pytest.param(sampling(stop=["s" * 257]), "sampling.stop[0]", id="long-stop"),
    pytest.param({"tools": [tool("bad name!")]}, "tools[0].name", id="tool-name-invalid"),
    pytest.param({"tools": [tool("")]}, "tools[0].name", id="tool-name-empty"),
    pytest.param({"tools": [tool("t" * 65)]}, "tools[0].name", id="tool-name-too-long"),
    pytest.param({"tools": [tool("f"), tool("f")]}, "tools[1].name", id="tool-name-twice"),
    pytest.param({"tools": [tool(f"f{i}") for i in range(65)]}, "tools", id="too-many-tools"),
    pytest.param(
        {"tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO)},
        "tool_choice",
        id="tool-choice-without-tools",
    ),
    pytest.param(
        {"tools": [tool("f")], "tool_choice": pb.ToolChoice(function_name="g")},
        "tool_choice.function_name",
        id="tool-choice-unknown-tool",
    ),
    pytest.param(
        {"tools": [tool("f")], "tool_choice": pb.ToolChoice()},
        "tool_choice",
        id="tool-choice-empty",
    ),
    pytest.param(
        {"fallback_models": ["openai/gpt-4o-mini"] * 4}, "fallback_models", id="four-fallbacks"
    ),
    pytest.param({"fallback_models": [""]}, "fallback_models[0]", id="empty-fallback"),
    pytest.param({"end_user_id": "u" * 129}, "end_user_id", id="end-user-id-too-long"),
    pytest.param({"model": "nobody/no-such-model"}, "model", id="unknown-model"),
    pytest.param(
        {"fallback_models": ["nobody/no-such-model"]}, "fallback_models[0]", id="unknown-fallback"
    ),
]


def violations(error: RichError) -> list[str]:
    bad_request: error_details_pb2.BadRequest = error.detail(error_details_pb2.BadRequest)
    return [v.field for v in bad_request.field_violations]


def assert_invalid(error: RichError, gw: Harness) -> None:
    assert (error.code, error.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.info.domain == "llmgateway.v1"
    assert error.info.metadata["request_id"]
    bad_request: error_details_pb2.BadRequest = error.detail(error_details_pb2.BadRequest)
    assert all(v.description for v in bad_request.field_violations)
    # Nothing reached OpenRouter for a rejected request.
    assert chat_requests(gw.sim) == []


@pytest.mark.parametrize(("fields", "field"), CASES)
async def test_complete_rejects_a_bad_request_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    async with start_gateway(gateway=LIMITS) as gw:
        request = pb.CompleteRequest(**{"messages": OK_MESSAGES, **fields})
        error = await complete_error(gw, request)
        assert_invalid(error, gw)
        assert violations(error) == [field]
        assert error.message.startswith(f"{field}: ")
        finished = await gw.wait_finished()
        assert [code for _, code in finished] == [grpc.StatusCode.INVALID_ARGUMENT]


# The checks are shared; a sample proves StreamComplete runs them before opening a stream.
STREAM_CASES = [
    case
    for case in CASES
    if case.id
    in {
        "no-messages",
        "role-unset",
        "message-too-long",
        "temperature-high",
        "tool-choice-unknown-tool",
        "four-fallbacks",
        "end-user-id-too-long",
        "unknown-model",
    }
]


@pytest.mark.parametrize(("fields", "field"), STREAM_CASES)
async def test_stream_rejects_a_bad_request_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    async with start_gateway(gateway=LIMITS) as gw:
        request = pb.StreamCompleteRequest(**{"messages": OK_MESSAGES, **fields})
        error = await stream_error(gw, request)
        assert_invalid(error, gw)
        assert violations(error) == [field]


async def test_every_violation_of_a_request_is_listed_at_once() -> None:
    async with start_gateway(gateway=LIMITS) as gw:
        error = await complete_error(
            gw,
            pb.CompleteRequest(
                messages=[user(""), msg(pb.ROLE_TOOL, "42")],
                sampling=pb.SamplingParams(temperature=3, top_p=0, max_tokens=0, stop=[""]),
                tools=[tool("bad name!")],
                fallback_models=[""],
                end_user_id="u" * 129,
            ),
        )
        assert_invalid(error, gw)
        assert violations(error) == [
            "messages[0].content",
            "messages[1].tool_call_id",
            "sampling.temperature",
            "sampling.top_p",
            "sampling.max_tokens",
            "sampling.stop[0]",
            "tools[0].name",
            "fallback_models[0]",
            "end_user_id",
        ]
        assert error.message.endswith("(and 8 more)")


async def test_an_unset_role_is_listed_with_the_other_violations() -> None:
    async with start_gateway(gateway=LIMITS) as gw:
        error = await complete_error(
            gw,
            pb.CompleteRequest(
                messages=[msg(pb.ROLE_UNSPECIFIED), user("")],
                sampling=pb.SamplingParams(temperature=3),
            ),
        )
        assert_invalid(error, gw)
        assert violations(error) == [
            "messages[0].role",
            "messages[1].content",
            "sampling.temperature",
        ]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(sampling(temperature=0.0, top_p=1.0, top_k=0), id="range-lows-and-highs"),
        pytest.param(sampling(temperature=2.0, top_k=1000, max_tokens=2000), id="range-highs"),
        pytest.param(
            sampling(frequency_penalty=-2, presence_penalty=2, repetition_penalty=2),
            id="penalty-edges",
        ),
        pytest.param(sampling(stop=["a", "b", "c", "d" * 256]), id="four-stops"),
        pytest.param({"messages": [user("x" * 20), user("y" * 20), user("z" * 10)]}, id="sizes"),
        pytest.param({"fallback_models": ["openai/gpt-4o-mini:nitro"] * 3}, id="three-fallbacks"),
        pytest.param({"end_user_id": "u" * 128}, id="end-user-id"),
        pytest.param({"tools": [tool("A-z_0" + "9" * 59)]}, id="tool-name-64"),
    ],
)
async def test_values_at_the_edge_of_each_range_are_accepted(fields: dict[str, Any]) -> None:
    async with start_gateway(gateway=LIMITS) as gw:
        request = pb.CompleteRequest(**{"messages": OK_MESSAGES, **fields})
        reply = await gw.stub.Complete(request, metadata=auth())
        assert reply.id
        assert len(chat_requests(gw.sim)) == 1
