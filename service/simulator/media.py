"""Media parts of a chat request: checked like OpenRouter checks them, and counted.

Each part type maps to the modality the model must take (``image_url`` → image, ``file`` →
file, ``input_audio`` → audio, ``video_url`` → video). Files go to any model, as on
OpenRouter: a model that cannot read them gets the document parsed to text (and the reply
carries a ``file`` annotation), unless the request asks for the ``native`` PDF engine.

Token counts are deterministic and small: an image is 85 tokens at ``detail: low`` and 258
otherwise (Gemini's fixed size), audio and video one token per 64 bytes, a parsed file 20
tokens plus one per 16 bytes. A file's pages (what ``mistral-ocr`` bills) are its
``/Type /Page`` objects (at least one); a file by URL, never fetched, has 10.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

_PART_MODALITY = {
    "text": "text",
    "image_url": "image",
    "file": "file",
    "input_audio": "audio",
    "video_url": "video",
}
_URL_TOKENS = 500
"""A fetched file or video: the simulator never fetches, so it assumes a middling size."""
_URL_PAGES = 10
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


class MediaError(ValueError):
    """A malformed part: the request gets HTTP 400 with this message."""


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """A document the file-parser read: what its annotation reports."""

    name: str
    hash: str
    size: int
    pages: int = 1


@dataclass(slots=True)
class PromptMedia:
    """The media of a prompt, counted; tokens are part of the prompt tokens."""

    images: int = 0
    image_tokens: int = 0
    audio_tokens: int = 0
    video_tokens: int = 0
    file_tokens: int = 0
    modalities: set[str] = field(default_factory=set)
    files: list[ParsedFile] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.image_tokens + self.audio_tokens + self.video_tokens + self.file_tokens


def _decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what} is not valid base64") from None


def _media_url(url: Any, what: str) -> bytes | None:
    """The bytes of a data URL, None for an http(s) URL; anything else is an error."""
    if not isinstance(url, str) or not url:
        raise MediaError(f"{what} needs a url")
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64") or "/" not in header:
            raise MediaError(f"{what} is not a base64 data URL")
        return _decode(payload, what)
    if url.startswith(("https://", "http://")):
        return None
    raise MediaError(f"{what} must be an http(s) or data URL")


def read_parts(messages: list[Any]) -> PromptMedia:
    """Count the media of every message; raises MediaError for a malformed part."""
    media = PromptMedia()
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            _read_part(part, media)
    return media


def _read_part(part: Any, media: PromptMedia) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    modality = _PART_MODALITY.get(kind) if isinstance(kind, str) else None
    if modality is None:
        raise MediaError(f"Invalid content part type: {kind!r}")
    body = part.get(kind) if kind != "text" else part
    if not isinstance(body, dict):
        raise MediaError(f"{kind} part needs a {kind} object")
    if modality == "text":
        if not isinstance(part.get("text"), str):
            raise MediaError("text part needs text")
        return
    media.modalities.add(modality)
    if modality == "image":
        _media_url(body.get("url"), "image_url")
        media.images += 1
        media.image_tokens += 85 if body.get("detail") == "low" else 258
    elif modality == "video":
        data = _media_url(body.get("url"), "video_url")
        media.video_tokens += _URL_TOKENS if data is None else len(data) // 64 + 1
    elif modality == "audio":
        raw, fmt = body.get("data"), body.get("format")
        if not isinstance(raw, str) or not isinstance(fmt, str) or not fmt:
            raise MediaError("input_audio needs data and format")
        media.audio_tokens += len(_decode(raw, "input_audio.data")) // 64 + 1
    else:
        name = body.get("filename")
        data = _media_url(body.get("file_data"), "file.file_data")
        if not isinstance(name, str) or not name:
            raise MediaError("file needs a filename")
        size = _URL_TOKENS * 16 if data is None else len(data)
        digest = hashlib.sha256(data if data is not None else name.encode()).hexdigest()
        media.file_tokens += 20 + size // 16
        pages = _URL_PAGES if data is None else max(1, len(_PAGE_OBJECT.findall(data)))
        media.files.append(ParsedFile(name, digest, size, pages))


def pdf_engine(body: dict[str, Any]) -> str | None:
    """The engine a request's ``file-parser`` plugin asks for, if any."""
    plugins = body.get("plugins")
    for plugin in plugins if isinstance(plugins, list) else ():
        if isinstance(plugin, dict) and plugin.get("id") == "file-parser":
            pdf = plugin.get("pdf")
            engine = pdf.get("engine") if isinstance(pdf, dict) else None
            return engine if isinstance(engine, str) else None
    return None
