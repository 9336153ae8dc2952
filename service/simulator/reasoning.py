"""Reasoning blocks the way each model family sends them, and the check that they come back
unchanged.

Shapes follow the replay cases: Anthropic signs its ``reasoning.text`` (in a stream: an
empty opening piece, text pieces, then a piece with only the signature); OpenAI sends a
``reasoning.summary`` and an encrypted block with an ``rs_…`` id; Gemini a ``reasoning.text``
and an encrypted block, both at index 0; other models plain text with ``format: unknown``.

Signatures and encrypted data are deterministic (an HMAC over the text, the text itself inside
the "encrypted" data), so a test can send an answer's blocks back and the simulator checks
them byte for byte, as providers do: a changed block is HTTP 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson

from .catalog import ReasoningStyle

_KEY = b"openrouter-simulator-reasoning"
_ENCRYPTED_PREFIX = "gAAAAA"
FORMATS = {
    ReasoningStyle.PLAIN: "unknown",
    ReasoningStyle.ANTHROPIC: "anthropic-claude-v1",
    ReasoningStyle.OPENAI: "openai-responses-v1",
    ReasoningStyle.GOOGLE: "google-gemini-v1",
}


def _mac(kind: bytes, text: str) -> bytes:
    return hmac.new(_KEY, kind + text.encode(), hashlib.sha256).digest()


def signature(text: str) -> str:
    return base64.b64encode(b"\x12\x08sim" + _mac(b"signature:", text)).decode()


def encrypted(text: str) -> str:
    sealed = orjson.dumps({"t": text, "m": _mac(b"encrypted:", text).hex()})
    return _ENCRYPTED_PREFIX + base64.urlsafe_b64encode(sealed).decode()


def item_id(text: str) -> str:
    return "rs_" + hashlib.sha256(text.encode()).hexdigest()[:48]


def _opened(data: str) -> str | None:
    """The text sealed in ``encrypted`` data, or None when the data was changed."""
    if not data.startswith(_ENCRYPTED_PREFIX):
        return None
    try:
        sealed = orjson.loads(base64.urlsafe_b64decode(data[len(_ENCRYPTED_PREFIX) :]))
        text = sealed["t"]
        ok = hmac.compare_digest(sealed["m"], _mac(b"encrypted:", text).hex())
    except (ValueError, KeyError, TypeError):
        return None
    return text if ok else None


def unary_details(style: ReasoningStyle, text: str) -> tuple[str, list[dict[str, Any]]]:
    """(message.reasoning, message.reasoning_details) of a whole answer."""
    fmt = FORMATS[style]
    match style:
        case ReasoningStyle.ANTHROPIC:
            block = {"type": "reasoning.text", "text": text, "signature": signature(text)}
            return text, [{**block, "format": fmt, "index": 0}]
        case ReasoningStyle.OPENAI:
            return text, [
                {"type": "reasoning.summary", "summary": text, "format": fmt, "index": 0},
                _encrypted_block(style, text, with_id=True),
            ]
        case ReasoningStyle.GOOGLE:
            return text, [
                {"type": "reasoning.text", "text": text, "format": fmt, "index": 0},
                _encrypted_block(style, text, with_id=False),
            ]
    return text, [{"type": "reasoning.text", "text": text, "format": fmt, "index": 0}]


def _encrypted_block(style: ReasoningStyle, text: str, *, with_id: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "reasoning.encrypted", "data": encrypted(text)}
    if with_id:
        block["id"] = item_id(text)
    return {**block, "format": FORMATS[style], "index": 0}


def stream_pieces(
    style: ReasoningStyle, pieces: Sequence[str]
) -> list[tuple[str | None, list[dict[str, Any]], int]]:
    """(delta.reasoning, delta.reasoning_details, tokens) for each reasoning chunk."""
    fmt = FORMATS[style]
    text = "".join(pieces)
    kind, key = (
        ("reasoning.summary", "summary")
        if style is ReasoningStyle.OPENAI
        else ("reasoning.text", "text")
    )
    body: list[tuple[str | None, list[dict[str, Any]], int]] = [
        (piece, [{"type": kind, key: piece, "format": fmt, "index": 0}], 1) for piece in pieces
    ]
    match style:
        case ReasoningStyle.ANTHROPIC:
            opening = {"type": kind, "text": "", "signature": "", "format": fmt, "index": 0}
            closing = {"type": kind, "signature": signature(text), "format": fmt, "index": 0}
            return [(None, [opening], 0), *body, (None, [closing], 0)]
        case ReasoningStyle.OPENAI:
            return [*body, (None, [_encrypted_block(style, text, with_id=True)], 0)]
        case ReasoningStyle.GOOGLE:
            return [*body, (None, [_encrypted_block(style, text, with_id=False)], 0)]
    return body


def history_problem(messages: Sequence[Any]) -> str | None:
    """Why the reasoning blocks sent back in a conversation are refused, or None.

    As providers do: a signed text must match its signature, encrypted data must be intact.
    """
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        details = message.get("reasoning_details")
        for detail in details if isinstance(details, list) else ():
            if not isinstance(detail, dict):
                return "reasoning_details entries must be objects"
            kind = detail.get("type")
            sig = detail.get("signature")
            if kind == "reasoning.text" and isinstance(sig, str) and sig:
                text = detail.get("text")
                if not isinstance(text, str) or not hmac.compare_digest(sig, signature(text)):
                    return "Invalid signature in thinking block"
            elif kind == "reasoning.encrypted":
                data = detail.get("data")
                if not isinstance(data, str) or _opened(data) is None:
                    return "Invalid encrypted content in reasoning item"
    return None
