"""Structured output: conforming JSON by default, and each `json=` fault, over HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import jsonschema_rs
import orjson
import pytest

from service.simulator import RunningSimulator
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "rating", "tags", "verdict", "author"],
    "properties": {
        "title": {"type": "string", "minLength": 12},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "verdict": {"enum": ["buy", "skip"]},
        "author": {"$ref": "#/$defs/person"},
        "notes": {"type": "string"},
    },
    "$defs": {
        "person": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "email", "score"],
            "properties": {
                "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "email": {"type": "string", "format": "email"},
                "score": {"type": ["number", "null"], "exclusiveMinimum": 0},
            },
        }
    },
}


def _json_schema_body(content: str, **fields: Any) -> dict[str, Any]:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "review", "strict": True, "schema": SCHEMA},
    }
    return chat_body(content, response_format=response_format, **fields)


async def _content(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[str, str]:
    async with session.post(CHAT, json=body) as resp:
        assert resp.status == 200
        choice = (await resp.json())["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def _conforms(text: str, schema: dict[str, Any] = SCHEMA) -> bool:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return bool(jsonschema_rs.validator_for(schema).is_valid(document))


async def test_json_schema_reply_conforms(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, finish = await _content(session, _json_schema_body("review it"))
    assert finish == "stop"
    assert _conforms(content)


async def test_streamed_json_schema_reply_conforms(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.post(CHAT, json=_json_schema_body("review it", stream=True)) as resp:
        frames = parse_sse(await resp.read())
    chunks = [f.json() for f in frames if f.data not in (None, "[DONE]")]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c.get("choices"))
    assert _conforms(text)


async def test_json_invalid_is_not_json(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, _ = await _content(session, _json_schema_body("x [[sim:json=invalid]]"))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content)


async def test_json_fenced_wraps_conforming_json_in_prose(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, _ = await _content(session, _json_schema_body("x [[sim:json=fenced]]"))
    prose, _, rest = content.partition("```json\n")
    assert prose.strip()
    inner, _, _ = rest.partition("```")
    assert _conforms(inner)
    assert not _conforms(content)


async def test_response_healing_strips_fences_but_not_truncation(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    healing = [{"id": "response-healing"}]
    content, _ = await _content(
        session, _json_schema_body("x [[sim:json=fenced]]", plugins=healing)
    )
    assert _conforms(content)
    content, finish = await _content(
        session, _json_schema_body("y [[sim:json=truncated]]", plugins=healing)
    )
    assert finish == "length"
    assert not _conforms(content)


async def test_json_wrong_shape_is_valid_json_violating_the_schema(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, _ = await _content(session, _json_schema_body("x [[sim:json=wrong-shape]]"))
    assert isinstance(orjson.loads(content), dict)
    assert not _conforms(content)


async def test_json_truncated_finishes_with_length(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, finish = await _content(session, _json_schema_body("x [[sim:json=truncated]]"))
    assert finish == "length"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content)


async def test_json_wrong_once_conforms_after_a_corrective_reask(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = _json_schema_body("review [[sim:json=wrong-once]]")
    first, _ = await _content(session, body)
    assert not _conforms(first)
    identical_retry, _ = await _content(session, body)
    assert not _conforms(identical_retry)

    body["messages"] += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": "That did not match the schema. Try again."},
    ]
    corrected, _ = await _content(session, body)
    assert _conforms(corrected)


SYSTEM_SCHEMA = {
    "type": "object",
    "required": ["city", "celsius"],
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
}


@pytest.mark.parametrize(
    "instruction",
    [
        "Reply with JSON matching this schema:\n```json\n{schema}\n```",
        "Answer only in JSON. JSON Schema: {schema}\nNo prose.",
    ],
)
async def test_json_object_follows_schema_in_system_prompt(
    sim: RunningSimulator, session: aiohttp.ClientSession, instruction: str
) -> None:
    system = instruction.format(schema=orjson.dumps(SYSTEM_SCHEMA).decode())
    body = {
        "model": "meta-llama/llama-3.1-8b-instruct",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Paris?"}],
        "response_format": {"type": "json_object"},
    }
    content, _ = await _content(session, body)
    assert _conforms(content, SYSTEM_SCHEMA)


async def test_json_object_without_schema_is_generic_json(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    content, _ = await _content(session, chat_body("hi", response_format={"type": "json_object"}))
    assert isinstance(orjson.loads(content)["answer"], str)


async def test_unsupported_json_schema_is_ignored_like_openrouter(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    # mistral-7b lists neither structured_outputs nor response_format: plain text comes back.
    content, _ = await _content(
        session, _json_schema_body("hi", model="mistralai/mistral-7b-instruct")
    )
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content)
    # llama lists response_format only: json_schema degrades to JSON mode.
    content, _ = await _content(
        session, _json_schema_body("hi", model="meta-llama/llama-3.1-8b-instruct")
    )
    assert "answer" in orjson.loads(content)


async def test_instruction_fallback_works_without_response_format(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    system = f"Respond with JSON only.\nJSON Schema: {orjson.dumps(SYSTEM_SCHEMA).decode()}"
    body = {
        "model": "mistralai/mistral-7b-instruct",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Oslo?"}],
    }
    content, _ = await _content(session, body)
    assert _conforms(content, SYSTEM_SCHEMA)
