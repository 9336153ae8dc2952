"""What reaches OpenRouter for a call: the body and headers the simulator recorded."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.support import chat_requests, stream
from tests.harness import ALPHA_KEY, BETA_KEY, UPSTREAM_KEY, Harness, auth, start_gateway, user

SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "stop",
)


async def _body(gw: Harness, request: pb.CompleteRequest, key: str = ALPHA_KEY) -> dict[str, Any]:
    before = len(chat_requests(gw.sim))
    await gw.stub.Complete(request, metadata=auth(key))
    recorded = chat_requests(gw.sim)
    assert len(recorded) == before + 1
    body: dict[str, Any] = recorded[-1].body
    return body


async def test_max_tokens_is_always_sent_and_unset_sampling_is_not() -> None:
    async with start_gateway() as gw:
        body = await _body(gw, pb.CompleteRequest(messages=[user("Hi")]))
        assert body["max_tokens"] == 1024
        assert not set(SAMPLING_KEYS) & set(body)
        assert body["model"] == "openai/gpt-4o-mini"
        assert body["stream"] is False
        assert "models" not in body

        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user("Hi")]))
        assert outcome.error is None
        streamed = chat_requests(gw.sim)[-1].body
        assert streamed["stream"] is True
        assert streamed["max_tokens"] == 1024
        assert not set(SAMPLING_KEYS) & set(streamed)


async def test_the_default_max_tokens_follows_the_setting() -> None:
    async with start_gateway(gateway={"default_max_tokens": 300}) as gw:
        body = await _body(gw, pb.CompleteRequest(messages=[user("Hi")]))
        assert body["max_tokens"] == 300


async def test_sampling_the_caller_set_is_sent_as_given() -> None:
    sampling = pb.SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        max_tokens=77,
        frequency_penalty=-0.5,
        presence_penalty=0.25,
        repetition_penalty=1.1,
        seed=12345678901,
        stop=["\n\n", "END"],
    )
    async with start_gateway() as gw:
        body = await _body(gw, pb.CompleteRequest(messages=[user("Hi")], sampling=sampling))
        assert {k: body[k] for k in (*SAMPLING_KEYS, "max_tokens")} == {
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "max_tokens": 77,
            "frequency_penalty": -0.5,
            "presence_penalty": 0.25,
            "repetition_penalty": 1.1,
            "seed": 12345678901,
            "stop": ["\n\n", "END"],
        }


async def test_a_zero_temperature_is_sent_not_dropped() -> None:
    async with start_gateway() as gw:
        body = await _body(
            gw,
            pb.CompleteRequest(messages=[user("Hi")], sampling=pb.SamplingParams(temperature=0)),
        )
        assert body["temperature"] == 0


async def test_user_is_a_stable_opaque_token_per_caller_and_end_user() -> None:
    async with start_gateway() as gw:

        async def user_field(key: str, end_user: str) -> str:
            body = await _body(
                gw, pb.CompleteRequest(messages=[user("Hi")], end_user_id=end_user), key
            )
            value = body["user"]
            assert isinstance(value, str)
            return value

        first = await user_field(ALPHA_KEY, "end-user-0042")
        again = await user_field(ALPHA_KEY, "end-user-0042")
        other_user = await user_field(ALPHA_KEY, "end-user-0043")
        other_caller = await user_field(BETA_KEY, "end-user-0042")

        assert first == again
        assert len({first, other_user, other_caller}) == 3
        for value in (first, other_user, other_caller):
            assert "0042" not in value
            assert "0043" not in value
            assert "alpha" not in value
            assert "beta" not in value
        generation = gw.sim.state.generations[next(reversed(gw.sim.state.generations))]
        assert generation.external_user == other_caller


async def test_history_is_trimmed_to_the_last_turns_keeping_system_messages() -> None:
    conversation = [
        pb.Message(role=pb.ROLE_SYSTEM, content="sys-1"),
        user("user-1"),
        pb.Message(role=pb.ROLE_ASSISTANT, content="assistant-1"),
        pb.Message(role=pb.ROLE_DEVELOPER, content="dev-1"),
        user("user-2"),
        pb.Message(role=pb.ROLE_ASSISTANT, content="assistant-2"),
        user("user-3"),
    ]
    async with start_gateway(gateway={"max_history_turns": 2}) as gw:
        body = await _body(gw, pb.CompleteRequest(messages=conversation))
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("system", "sys-1"),
            ("developer", "dev-1"),
            ("assistant", "assistant-2"),
            ("user", "user-3"),
        ]


async def test_a_trimmed_history_never_starts_with_an_orphaned_tool_result() -> None:
    call = pb.ToolCall(id="call_1", name="lookup", arguments_json='{"q": "x"}')
    conversation = [
        pb.Message(role=pb.ROLE_SYSTEM, content="sys"),
        user("user-1"),
        pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[call]),
        pb.Message(role=pb.ROLE_TOOL, content="result", tool_call_id="call_1"),
        user("user-2"),
    ]
    async with start_gateway(gateway={"max_history_turns": 2}) as gw:
        body = await _body(gw, pb.CompleteRequest(messages=conversation))
        assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_history_within_the_limit_is_sent_whole_with_tool_turns() -> None:
    call = pb.ToolCall(id="call_1", name="lookup", arguments_json='{"q": "x"}')
    conversation = [
        user("user-1"),
        pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[call]),
        pb.Message(role=pb.ROLE_TOOL, content="result", tool_call_id="call_1"),
    ]
    async with start_gateway() as gw:
        body = await _body(gw, pb.CompleteRequest(messages=conversation))
        assert body["messages"] == [
            {"role": "user", "content": "user-1"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "content": "result", "tool_call_id": "call_1"},
        ]


async def test_the_gateways_key_is_sent_but_never_recorded() -> None:
    async with start_gateway() as gw:
        await _body(gw, pb.CompleteRequest(messages=[user("Hi")]))
        for request in gw.sim.state.requests:
            assert request.has_authorization
            assert "authorization" not in request.headers
            assert UPSTREAM_KEY not in str(request.to_json())
            assert ALPHA_KEY not in str(request.to_json())


async def test_the_callers_key_is_not_forwarded() -> None:
    async with start_gateway() as gw:
        await _body(gw, pb.CompleteRequest(messages=[user("Hi")]))
        [request] = chat_requests(gw.sim)
        assert ALPHA_KEY not in str(request.to_json())
        assert request.headers["content-type"] == "application/json"


async def test_fallbacks_are_sent_as_the_models_list_primary_first() -> None:
    fallbacks = ["google/gemini-2.0-flash-001", "anthropic/claude-3.5-haiku"]
    async with start_gateway() as gw:
        body = await _body(
            gw,
            pb.CompleteRequest(
                model="openai/gpt-4o-mini", fallback_models=fallbacks, messages=[user("Hi")]
            ),
        )
        assert body["model"] == "openai/gpt-4o-mini"
        assert body["models"] == ["openai/gpt-4o-mini", *fallbacks]


@pytest.mark.parametrize("rpc", ["Complete", "StreamComplete"])
async def test_the_model_that_served_is_reported_when_a_fallback_serves(rpc: str) -> None:
    messages = [user("Hi [[sim:fail-primary]] [[sim:tokens=2]]")]
    fallbacks = ["google/gemini-2.0-flash-001"]
    async with start_gateway() as gw:
        if rpc == "Complete":
            reply = await gw.stub.Complete(
                pb.CompleteRequest(messages=messages, fallback_models=fallbacks), metadata=auth()
            )
            served, provider = reply.model, reply.provider
        else:
            outcome = await stream(
                gw, pb.StreamCompleteRequest(messages=messages, fallback_models=fallbacks)
            )
            served, provider = outcome.messages[0].start.model, outcome.messages[0].start.provider
        assert (served, provider) == ("google/gemini-2.0-flash-001", "Google AI Studio")
        [(record, _)] = await gw.wait_finished()
        assert record.fallback_used
        assert record.requested_model == "openai/gpt-4o-mini"


async def test_tools_and_tool_choice_are_sent_in_openrouters_shape() -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}})
    tools = [
        pb.Tool(name="count", description="Counts", parameters=parameters, strict=True),
        pb.Tool(name="noop"),
    ]
    async with start_gateway() as gw:
        body = await _body(
            gw,
            pb.CompleteRequest(
                messages=[user("Hi")], tools=tools, tool_choice=pb.ToolChoice(function_name="count")
            ),
        )
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "count",
                    "description": "Counts",
                    "strict": True,
                    "parameters": {
                        "type": "object",
                        "properties": {"n": {"type": "integer", "minimum": 1}},
                    },
                },
            },
            {"type": "function", "function": {"name": "noop", "parameters": {}}},
        ]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "count"}}

        body = await _body(
            gw,
            pb.CompleteRequest(
                messages=[user("Hi")],
                tools=tools,
                tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED),
            ),
        )
        assert body["tool_choice"] == "required"
