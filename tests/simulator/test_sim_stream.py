"""Streaming chat completions: SSE framing, chunk order, usage shapes and stream faults."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from service.simulator import RunningSimulator
from service.simulator.testing import SseFrame, chat_body, parse_sse

CHAT = "/api/v1/chat/completions"


async def _stream(session: aiohttp.ClientSession, content: str, **fields: Any) -> bytes:
    async with session.post(CHAT, json=chat_body(content, stream=True, **fields)) as resp:
        assert resp.status == 200
        return await resp.read()


async def _read_into(resp: aiohttp.ClientResponse, received: bytearray) -> None:
    """Read the body into `received`, so what arrived survives a read that raises."""
    while chunk := await resp.content.readany():
        received += chunk


def _chunks(frames: list[SseFrame]) -> list[dict[str, Any]]:
    return [frame.json() for frame in frames if frame.data not in (None, "[DONE]")]


async def test_stream_framing_and_chunk_order(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("Stream please [[sim:tokens=5]]", stream=True)
    async with session.post(CHAT, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        generation_id = resp.headers["X-Generation-Id"]
        raw = await resp.read()

    frames = parse_sse(raw)
    assert [f.comment for f in frames[:3]] == ["OPENROUTER PROCESSING"] * 3
    assert frames[-1].data == "[DONE]"
    chunks = _chunks(frames[3:-1])
    assert all(c["id"] == generation_id for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["provider"] == "OpenAI" and c["model"] == "openai/gpt-4o-mini" for c in chunks)

    first, *content, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in content]
    assert len(pieces) == 5
    assert all(piece.startswith(" ") for piece in pieces[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["native_finish_reason"] == "stop"
    assert "usage" not in finish
    assert usage["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
            "native_finish_reason": None,
            "logprobs": None,
        }
    ]
    assert usage["usage"]["completion_tokens"] == 5

    # The stream says exactly what the unary reply to the same request says.
    async with session.post(CHAT, json=chat_body("Stream please [[sim:tokens=5]]")) as resp:
        unary = await resp.json()
    assert "".join(pieces) == unary["choices"][0]["message"]["content"]
    assert usage["usage"]["cost"] == unary["usage"]["cost"]


@pytest.mark.parametrize(
    ("directive", "has_choices", "choices"),
    [
        ("usage-shape=empty", True, []),
        ("usage-shape-empty", True, []),
        ("usage-shape=missing", False, None),
    ],
)
async def test_usage_chunk_shapes(
    sim: RunningSimulator,
    session: aiohttp.ClientSession,
    directive: str,
    has_choices: bool,
    choices: Any,
) -> None:
    chunks = _chunks(parse_sse(await _stream(session, f"hi [[sim:{directive}]]")))
    usage = chunks[-1]
    assert "usage" in usage
    assert ("choices" in usage) is has_choices
    if has_choices:
        assert usage["choices"] == choices


async def test_usage_shape_none_and_no_finish(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    frames = parse_sse(
        await _stream(session, "hi [[sim:usage-shape=none]] [[sim:no-finish]] [[sim:tokens=2]]")
    )
    chunks = _chunks(frames)
    assert frames[-1].data == "[DONE]"
    assert len(chunks) == 3
    assert all("usage" not in c and c["choices"][0]["finish_reason"] is None for c in chunks)


@pytest.mark.parametrize(("directive", "separator"), [("crlf", b"\r\n\r\n"), ("cr", b"\r\r")])
async def test_line_endings(
    sim: RunningSimulator, session: aiohttp.ClientSession, directive: str, separator: bytes
) -> None:
    raw = await _stream(session, f"hi [[sim:{directive}]] [[sim:tokens=2]]")
    assert raw.endswith(b"data: [DONE]" + separator)
    assert b"\n\n" not in raw.replace(b"\r\n", b"")
    frames = parse_sse(raw)
    assert frames[0].comment == "OPENROUTER PROCESSING"
    assert frames[-1].data == "[DONE]"


@pytest.mark.parametrize("count", [0, 5])
async def test_keepalive_directive_sets_comment_count(
    sim: RunningSimulator, session: aiohttp.ClientSession, count: int
) -> None:
    frames = parse_sse(await _stream(session, f"hi [[sim:keepalive={count}]]"))
    comments = [f for f in frames if f.comment is not None]
    assert len(comments) == count
    assert all(f.comment is None for f in frames[count:])


async def test_reasoning_deltas_come_before_content(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    chunks = _chunks(parse_sse(await _stream(session, "hi [[sim:reasoning=3]] [[sim:tokens=2]]")))
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-2]]
    assert [bool(d.get("reasoning")) for d in deltas] == [True, True, True, False, False]
    assert deltas[0]["reasoning_details"][0]["text"] == deltas[0]["reasoning"]
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    assert chunks[-1]["usage"]["completion_tokens"] == 5


async def test_max_tokens_in_stream_finishes_with_length(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    chunks = _chunks(parse_sse(await _stream(session, "hi", max_tokens=3)))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_malformed_stream_has_one_broken_data_line(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    frames = parse_sse(await _stream(session, "hi [[sim:malformed]] [[sim:tokens=4]]"))
    broken = []
    for frame in frames:
        if frame.data is None or frame.data == "[DONE]":
            continue
        try:
            frame.json()
        except orjson.JSONDecodeError:
            broken.append(frame)
    assert len(broken) == 1
    assert frames[-1].data == "[DONE]"


async def test_mid_stream_error_documented_shape(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    frames = parse_sse(await _stream(session, "hi [[sim:mid-stream-error]]"))
    assert frames[-1].data != "[DONE]"
    *chunks, error = _chunks(frames)
    assert len(chunks) == 4  # role chunk and three tokens
    assert error["error"]["code"] == 502
    assert error["error"]["metadata"]["error_type"] == "provider_unavailable"
    assert error["choices"][0]["finish_reason"] == "error"
    generation = await sim.state.wait_for_generation(error["id"])
    assert generation.finish_reason == "error"
    assert generation.total_cost == 0


async def test_mid_stream_error_minimax_variant(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    raw = await _stream(session, "hi [[sim:mid-stream-error=minimax]]", max_completion_tokens=10)
    frames = parse_sse(raw)
    assert frames[-1].data == "[DONE]"
    *_, finish, error = _chunks(frames)
    assert finish["choices"][0]["finish_reason"] == "length"
    assert error["error"] == {"code": 400, "message": "Token limit reached"}
    assert error["choices"][0]["finish_reason"] is None
    assert error["usage"]["completion_tokens"] == 10


async def test_mid_stream_error_string_code_and_empty_choices(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    string_code = _chunks(
        parse_sse(await _stream(session, "a [[sim:mid-stream-error=string-code]]"))
    )
    assert string_code[-1]["error"]["code"] == "server_error"
    assert string_code[-1]["choices"][0]["finish_reason"] == "error"
    empty = _chunks(parse_sse(await _stream(session, "b [[sim:mid-stream-error=empty-choices]]")))
    assert empty[-1]["choices"] == []
    assert empty[-1]["error"]["code"] == 502


async def test_drop_after_ends_the_connection_without_done(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    received = bytearray()
    body = chat_body("hi [[sim:drop-after=4]]", stream=True)
    async with session.post(CHAT, json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await _read_into(resp, received)
    frames = parse_sse(bytes(received))
    assert all(frame.data != "[DONE]" for frame in frames)
    chunks = _chunks(frames)
    assert len(chunks) == 5  # role chunk and four tokens
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    generation = await sim.state.wait_for_generation(chunks[0]["id"])
    assert generation.tokens_completion == 4
    assert generation.native_finish_reason == "network_error"
    assert sim.state.disconnects == []


async def test_pace_and_delay_slow_the_stream(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    await _stream(session, "hi [[sim:delay=30]] [[sim:pace=20]] [[sim:tokens=3]]")
    assert time.monotonic() - started >= 0.09


async def test_pre_stream_error_is_plain_json(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    body = chat_body("hi [[sim:error=502]]", stream=True)
    async with session.post(CHAT, json=body) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"]["message"] == "Provider returned error"
