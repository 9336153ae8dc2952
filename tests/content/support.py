"""Helpers for the content tests: parts, recognisable media and what reached the simulator."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import RunningSimulator
from tests.api.support import chat_requests

# Recognisable bytes: a test can prove they never reach a log line, span or ledger row.
MARKER = b"MEDIA-MARKER-9f3e51"


def png(seed: int = 0) -> bytes:
    """A small valid PNG (8x8, one colour from ``seed``) with MARKER in a text chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    colour = bytes(((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    rows = b"".join(b"\x00" + colour * 8 for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"tEXt", b"Comment\x00" + MARKER)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def image(
    data: bytes | None = None, *, url: str = "", mime: str = "image/png", **kw: Any
) -> pb.Part:
    if url:
        return pb.Part(image=pb.ImagePart(url=url, **kw))
    blob = pb.Blob(mime_type=mime, data=png() if data is None else data)
    return pb.Part(image=pb.ImagePart(inline_data=blob, **kw))


def pdf(data: bytes = b"%PDF-1.4 " + MARKER, *, name: str = "report.pdf", url: str = "") -> pb.Part:
    if url:
        return pb.Part(file=pb.FilePart(filename=name, url=url))
    blob = pb.Blob(mime_type="application/pdf", data=data)
    return pb.Part(file=pb.FilePart(filename=name, inline_data=blob))


def audio(data: bytes = b"RIFF" + MARKER, fmt: str = "wav") -> pb.Part:
    return pb.Part(audio=pb.AudioPart(data=data, format=fmt))


def video(*, url: str = "", data: bytes = b"", mime: str = "video/mp4") -> pb.Part:
    if url:
        return pb.Part(video=pb.VideoPart(url=url))
    return pb.Part(video=pb.VideoPart(inline_data=pb.Blob(mime_type=mime, data=data)))


def user_parts(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def sent_content(sim: RunningSimulator, index: int = -1) -> Any:
    """``messages[index].content`` of the last chat request the simulator received."""
    return chat_requests(sim)[-1].body["messages"][index]["content"]


def data_url_bytes(url: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix) :], validate=True)
