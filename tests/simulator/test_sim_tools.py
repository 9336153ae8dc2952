"""Tool calls, unary and streamed, with arguments that fit the tool's parameter schema."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import jsonschema_rs
import orjson

from service.simulator import RunningSimulator
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"

DIVIDE = {
    "type": "object",
    "required": ["numerator", "denominator", "on_inf"],
    "properties": {
        "numerator": {"type": "number"},
        "denominator": {"type": "number", "minimum": 1},
        "on_inf": {"type": "string", "enum": ["infinity", "error"]},
    },
}
LOOKUP = {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}}
TOOLS = [
    {"type": "function", "function": {"name": "divide", "parameters": DIVIDE}},
    {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP}},
]


async def _message(session: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(CHAT, json=body) as resp:
        assert resp.status == 200
        choice: dict[str, Any] = (await resp.json())["choices"][0]
    return choice


async def test_unary_tool_call(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    choice = await _message(session, chat_body("divide [[sim:tool-call]]", tools=TOOLS))
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == ""
    [call] = message["tool_calls"]
    assert re.fullmatch(r"call_[A-Za-z0-9]+", call["id"])
    assert call["type"] == "function"
    assert call["function"]["name"] == "divide"
    arguments = orjson.loads(call["function"]["arguments"])
    assert jsonschema_rs.validator_for(DIVIDE).is_valid(arguments)


async def test_named_tool_call_and_forced_tool_choice(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    named = await _message(session, chat_body("[[sim:tool-call=lookup]]", tools=TOOLS))
    assert named["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    forced = {"type": "function", "function": {"name": "lookup"}}
    chosen = await _message(session, chat_body("find it", tools=TOOLS, tool_choice=forced))
    assert chosen["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    required = await _message(session, chat_body("any", tools=TOOLS, tool_choice="required"))
    assert required["finish_reason"] == "tool_calls"


async def test_no_tool_call_after_a_tool_result_or_without_support(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("divide [[sim:tool-call]]", tools=TOOLS)
    body["messages"] += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "divide", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "0.27"},
    ]
    answered = await _message(session, body)
    assert answered["finish_reason"] == "stop"
    assert "tool_calls" not in answered["message"]

    unsupported = chat_body("[[sim:tool-call]]", tools=TOOLS, model="mistralai/mistral-7b-instruct")
    assert (await _message(session, unsupported))["finish_reason"] == "stop"


async def test_unknown_tool_name_is_a_directive_error(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=chat_body("[[sim:tool-call=nope]]", tools=TOOLS)) as resp:
        assert resp.status == 400


async def test_streamed_tool_call(sim: RunningSimulator, session: aiohttp.ClientSession) -> None:
    body = chat_body("divide [[sim:tool-call]]", tools=TOOLS, stream=True)
    async with session.post(CHAT, json=body) as resp:
        frames = parse_sse(await resp.read())
    chunks = [f.json() for f in frames if f.data not in (None, "[DONE]")]
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    start, *fragments = calls
    assert start["index"] == 0
    assert start["type"] == "function"
    assert start["id"].startswith("call_")
    assert start["function"] == {"name": "divide", "arguments": ""}
    assert all(set(f) == {"index", "function"} for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert jsonschema_rs.validator_for(DIVIDE).is_valid(orjson.loads(arguments))
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == len(fragments)
