"""Server-sent-event framing for chat completion chunks, with cached serialization.

Every chunk of one stream shares id/provider/model/object/created, so those are serialized
once per stream; the per-token `choices` fragments are cached across streams because the
word list is small. That keeps the simulator cheap enough to benchmark a gateway against.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

KEEPALIVE_COMMENT = "OPENROUTER PROCESSING"
DONE = b"[DONE]"


class ChunkEncoder:
    """Builds `chat.completion.chunk` JSON for one stream."""

    def __init__(self, generation_id: str, provider: str, model: str, created: int) -> None:
        common = orjson.dumps(
            {
                "id": generation_id,
                "provider": provider,
                "model": model,
                "object": "chat.completion.chunk",
                "created": created,
            }
        )
        self._head = common[:-1] + b","

    def chunk(self, fields: bytes) -> bytes:
        """`fields` is the rest of the object, e.g. b'"choices":[...]'."""
        return self._head + fields + b"}"

    def choices(self, choices: bytes, **extra: Any) -> bytes:
        tail = b"".join(b',"' + key.encode() + b'":' + orjson.dumps(v) for key, v in extra.items())
        return self.chunk(b'"choices":' + choices + tail)


def _choice(
    delta: dict[str, Any],
    finish_reason: str | None,
    native: str | None,
    logprobs: dict[str, Any] | None = None,
) -> bytes:
    return orjson.dumps(
        [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason,
                "native_finish_reason": native,
                "logprobs": logprobs,
            }
        ]
    )


@lru_cache(maxsize=4096)
def content_choices(piece: str) -> bytes:
    return _choice({"role": "assistant", "content": piece}, None, None)


@lru_cache(maxsize=4096)
def reasoning_choices(piece: str) -> bytes:
    details = [{"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}]
    delta = {"role": "assistant", "content": "", "reasoning": piece, "reasoning_details": details}
    return _choice(delta, None, None)


def stamped_content_choices(piece: str) -> bytes:
    """Like ``content_choices``, for a piece that is never repeated (not cached)."""
    return _choice({"role": "assistant", "content": piece}, None, None)


def content_logprob_choices(piece: str, entry: dict[str, Any]) -> bytes:
    return _choice({"role": "assistant", "content": piece}, None, None, {"content": [entry]})


def refusal_choices(piece: str) -> bytes:
    return _choice({"role": "assistant", "content": "", "refusal": piece}, None, None)


def annotation_choices(annotation: dict[str, Any]) -> bytes:
    return _choice({"content": "", "role": "assistant", "annotations": [annotation]}, None, None)


def image_choices(images: list[dict[str, Any]], finish_reason: str, native: str | None) -> bytes:
    delta = {"role": "assistant", "content": "", "images": images}
    return _choice(delta, finish_reason, native)


def delta_choices(fields: dict[str, Any]) -> bytes:
    return _choice({"role": "assistant", "content": "", **fields}, None, None)


def reasoning_detail_choices(text: str | None, details: list[dict[str, Any]]) -> bytes:
    delta = {"role": "assistant", "content": "", "reasoning": text, "reasoning_details": details}
    return _choice(delta, None, None)


@lru_cache(maxsize=64)
def finish_choices(finish_reason: str | None, native: str | None) -> bytes:
    return _choice({"role": "assistant", "content": ""}, finish_reason, native)


def tool_call_start_choices(call_id: str, name: str) -> bytes:
    call = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return _choice({"role": "assistant", "content": "", "tool_calls": [call]}, None, None)


@lru_cache(maxsize=4096)
def tool_arguments_choices(piece: str) -> bytes:
    call = {"index": 0, "function": {"arguments": piece}}
    return _choice({"role": "assistant", "content": "", "tool_calls": [call]}, None, None)


ROLE_CHOICES = finish_choices(None, None)


class SseWriter:
    """Writes SSE frames; with `coalesce` they are buffered until `flush()` (fast mode)."""

    def __init__(
        self,
        response: web.StreamResponse,
        line_ending: str,
        *,
        coalesce: bool,
        split: int | None = None,
    ) -> None:
        self._response = response
        self._eol = line_ending.encode()
        self._coalesce = coalesce
        self._split = split
        self._buffer: list[bytes] = []

    async def comment(self, text: str) -> None:
        await self._send(b": " + text.encode() + self._eol + self._eol)

    async def data(self, payload: bytes) -> None:
        await self._send(b"data: " + payload + self._eol + self._eol)

    async def flush(self) -> None:
        if self._buffer:
            joined = b"".join(self._buffer)
            self._buffer.clear()
            await self._response.write(joined)

    async def _send(self, frame: bytes) -> None:
        if self._coalesce:
            self._buffer.append(frame)
        elif self._split is not None:
            step = self._split
            for at in range(0, len(frame), step):
                await self._response.write(frame[at : at + step])
        else:
            await self._response.write(frame)
