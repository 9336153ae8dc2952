"""What the simulated model answers beyond text: images, citations, parsed-file notes,
refusals, log probabilities, and (on request) output kinds the gateway's contract lacks.

Shapes follow the replay cases: images as base64 PNG data URLs in ``message.images`` (in a
stream, ``delta.images`` in the chunk that carries the finish reason); citations as nested
``url_citation`` annotations (in a stream, each in its own chunk with empty content, before
the finish); file annotations ``{hash, name, content: [text parts]}``. Everything is
deterministic: the same request gets the same bytes.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from .media import ParsedFile

REFUSAL = ("I'm", " sorry,", " but", " I", " can't", " help", " with", " that.")


def png(seed: int, size: int = 16) -> bytes:
    """A valid ``size``×``size`` RGB PNG: a two-colour checkerboard chosen by ``seed``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    one = bytes(((seed * 67) % 256, (seed * 29 + 90) % 256, (seed * 113 + 40) % 256))
    two = bytes(255 - b for b in one)
    rows = b"".join(
        b"\x00" + b"".join(one if (x // 4 + y // 4) % 2 == 0 else two for x in range(size))
        for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def image_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(seed)).decode("ascii")


def image_entries(seed: int, count: int, *, indexed: bool) -> list[dict[str, Any]]:
    entries = []
    for i in range(count):
        entry: dict[str, Any] = {"type": "image_url", "image_url": {"url": image_url(seed + i)}}
        if indexed:
            entry["index"] = i
        entries.append(entry)
    return entries


def citations(text: str, count: int) -> list[dict[str, Any]]:
    """``count`` citations, each spanning one word of ``text`` (in order, wrapping)."""
    spans: list[tuple[int, int]] = []
    position = 0
    for word in text.split(" "):
        if word:
            spans.append((position, position + len(word)))
        position += len(word) + 1
    out = []
    for i in range(count):
        start, end = spans[i % len(spans)] if spans else (0, 0)
        out.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "url": f"https://docs.example.org/sim/source-{i + 1}",
                    "title": f"Simulated source {i + 1}" if i % 2 == 0 else "",
                    "content": f"Excerpt {i + 1} of a simulated web page.",
                    "start_index": start,
                    "end_index": end,
                },
            }
        )
    return out


def file_annotations(files: Sequence[ParsedFile]) -> list[dict[str, Any]]:
    return [
        {
            "type": "file",
            "file": {
                "hash": parsed.hash,
                "name": parsed.name,
                "content": [
                    {"type": "text", "text": f'<file name="{parsed.name}">'},
                    {"type": "text", "text": f"Simulated text of a {parsed.size}-byte document."},
                    {"type": "text", "text": "</file>"},
                ],
            },
        }
        for parsed in files
    ]


def logprob_entry(token: str, top: int) -> dict[str, Any]:
    value = -((zlib.crc32(token.encode()) % 2000) / 1000)
    entry: dict[str, Any] = {"token": token, "logprob": value, "bytes": list(token.encode())}
    entry["top_logprobs"] = [
        {"token": token if i == 0 else f"{token}~{i}", "logprob": value - i, "bytes": None}
        for i in range(top)
    ]
    return entry


def unknown_message_fields(kinds: frozenset[str]) -> dict[str, Any]:
    """Output the gateway's contract does not carry: OpenAI's audio answer."""
    if "audio" not in kinds:
        return {}
    data = base64.b64encode(b"RIFF" + bytes(32)).decode("ascii")
    return {
        "audio": {
            "id": "audio_sim",
            "data": data,
            "transcript": "Hello.",
            "expires_at": 1_900_000_000,
        }
    }


def unknown_annotations(kinds: frozenset[str]) -> list[dict[str, Any]]:
    if "annotation" not in kinds:
        return []
    # The older shape the ai-sdk provider still parses.
    return [{"type": "file_annotation", "file_annotation": {"file_id": "file-sim", "quote": "x"}}]


def unknown_reasoning(kinds: frozenset[str]) -> list[dict[str, Any]]:
    if "reasoning" not in kinds:
        return []
    return [
        {
            "type": "reasoning.server_tool_call",
            "tool_name": "openrouter:datetime",
            "arguments": "{}",
            "result": "2026-12-01",
            "index": 1,
        }
    ]
