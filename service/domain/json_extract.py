"""Reading JSON out of a model's reply: strictly first, then tolerantly (fences, leading prose).

Models asked for "only JSON" still wrap it in ```json fences or open with a sentence; the
tolerant pass recovers the first balanced JSON object or array, which counts as a local repair.
Problems are described without quoting the reply, so they can go into errors and logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

MAX_START_CANDIDATES = 16
"""How many opening brackets the tolerant pass tries; bounds the work on a long prose reply."""

# A fenced block: ```json ... ``` (or a bare ```); the body is tried before any bracket scan
# because prose around it may contain brackets of its own ("[1]", "{name}").
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_OPENERS = re.compile(r"[\[{]")
# Inside the scan only these characters matter; jumping between them keeps it fast in Python.
_SCAN_TOKENS = re.compile(r'[\\"{}\[\]]')
_CLOSER_OF = {"{": "}", "[": "]"}


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """A reply read as JSON.

    ``ok`` says whether a JSON value was found; ``extracted`` that it took the tolerant pass.
    ``problem`` (when not ok) is content-free, e.g. "not valid JSON (…) at line 1 column 7".
    ``truncated`` means an object or array was opened and never closed: the reply was cut off.
    """

    ok: bool
    value: Any = None
    extracted: bool = False
    problem: str = ""
    truncated: bool = False


def parse_strict(text: str) -> tuple[bool, Any, str]:
    """``(ok, value, problem)`` for the whole text as one JSON document."""
    try:
        return True, orjson.loads(text), ""
    except orjson.JSONDecodeError as exc:
        # orjson's messages are fixed phrases ("unexpected character"), never input text.
        return False, None, f"not valid JSON ({exc.msg}) at line {exc.lineno} column {exc.colno}"


def parse_reply(text: str) -> ParsedReply:
    """The JSON value in ``text``: the whole text if it parses, else the first embedded one."""
    if not text.strip():
        return ParsedReply(ok=False, problem="the reply was empty")
    ok, value, problem = parse_strict(text)
    if ok:
        return ParsedReply(ok=True, value=value)
    found, value, truncated = _extract(text)
    if found:
        return ParsedReply(ok=True, value=value, extracted=True)
    if truncated:
        problem = "the JSON is incomplete: an object or array was never closed"
    return ParsedReply(ok=False, problem=problem, truncated=truncated)


def _extract(text: str) -> tuple[bool, Any, bool]:
    """``(found, value, truncated)`` for the first fenced or bracketed JSON in ``text``."""
    for match in _FENCE.finditer(text):
        ok, value, _ = parse_strict(match.group(1))
        if ok:
            return True, value, False
    position = 0
    for _ in range(MAX_START_CANDIDATES):
        opener = _OPENERS.search(text, position)
        if opener is None:
            return False, None, False
        start = opener.start()
        end = _balanced_end(text, start)
        if end is None:
            # Everything after this bracket is inside it, so no later candidate can close either.
            return False, None, True
        if end < 0:
            position = start + 1
            continue
        ok, value, _ = parse_strict(text[start:end])
        if ok:
            return True, value, False
        # A balanced span that is not JSON (e.g. "[citation]"): look after it, not inside it,
        # so a fragment of a broken object is never mistaken for the answer.
        position = end
    return False, None, False


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket closing ``text[start]``; None if never closed, -1 on a
    mismatched closer. Brackets inside JSON strings are skipped."""
    stack: list[str] = []
    in_string = False
    escaped_at = -2
    for token in _SCAN_TOKENS.finditer(text, start):
        char = token.group()
        index = token.start()
        if in_string:
            if char == "\\" and escaped_at != index - 1:
                escaped_at = index
            elif char == '"' and escaped_at != index - 1:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in _CLOSER_OF:
            stack.append(_CLOSER_OF[char])
        elif char in "}]":
            if not stack or stack[-1] != char:
                return -1
            stack.pop()
            if not stack:
                return index + 1
    return None
