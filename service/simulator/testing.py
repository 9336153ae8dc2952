"""Helpers for tests that talk to the simulator directly: request bodies and raw SSE frames.

The parser here is deliberately literal (it keeps comments and the raw data text) so tests
can assert on framing; it is not the gateway's SSE decoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_EVENT_SEPARATOR = re.compile(rb"\r\n\r\n|\r\r|\n\n")
_LINE_SEPARATOR = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseFrame:
    """One SSE event: `comment` text, or the `data` text (not yet JSON-decoded)."""

    comment: str | None = None
    data: str | None = None

    def json(self) -> Any:
        assert self.data is not None, "a comment frame has no data"
        return orjson.loads(self.data)


def parse_sse(raw: bytes) -> list[SseFrame]:
    """Split a complete SSE body into frames (LF, CRLF or CR line endings)."""
    frames: list[SseFrame] = []
    for block in _EVENT_SEPARATOR.split(raw):
        if not block:
            continue
        data: list[str] = []
        for line in _LINE_SEPARATOR.split(block):
            text = line.decode()
            if text.startswith(":"):
                frames.append(SseFrame(comment=text[1:].strip()))
            elif text.startswith("data:"):
                data.append(text[5:].removeprefix(" "))
        if data:
            frames.append(SseFrame(data="\n".join(data)))
    return frames


def chat_body(
    content: str, *, model: str = "openai/gpt-4o-mini", stream: bool = False, **fields: Any
) -> dict[str, Any]:
    """A minimal chat completion request with one user message."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    body.update(fields)
    return body
