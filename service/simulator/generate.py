"""What the simulated model "says": pseudo-text, JSON and tool calls, cut into tokens.

One piece is one token: the stream sends one piece per chunk, and usage counts pieces, so
streamed and unary replies to the same request agree on completion_tokens.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson

from .catalog import IMAGE_TOKENS, ModelInfo
from .extras import BYOK_FEE, Extras
from .media import PromptMedia

# A prime number of words, so the stride below visits them all before repeating.
_WORD_TEXT = """
the quick simulated model writes steady plain words for every test that needs a reply while
gateways stream tokens across loopback sockets and measure latency cost usage retries errors
budgets schemas tools reasoning chunks events frames buffers clients servers requests
responses deadlines backoff jitter limits quotas credits providers routes fallbacks health
probes metrics traces spans logs alerts dashboards queues workers pools threads tasks
futures loops signals handlers
"""
_WORDS = tuple(_WORD_TEXT.split())
_STRIDE = 7

_JSON_PIECE_CHARS = 4
_ALPHANUMERIC = string.ascii_letters + string.digits


@lru_cache(maxsize=256)
def text_pieces(seed: int, count: int) -> tuple[str, ...]:
    """`count` deterministic words; every piece after the first keeps its leading space."""
    size = len(_WORDS)
    words = [_WORDS[(seed + i * _STRIDE) % size] for i in range(count)]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return (words[0], *(" " + word for word in words[1:]))


def json_pieces(text: str) -> tuple[str, ...]:
    """JSON text split into fixed-width fragments (about one token each)."""
    return tuple(text[i : i + _JSON_PIECE_CHARS] for i in range(0, len(text), _JSON_PIECE_CHARS))


def seed_for(text: str) -> int:
    return zlib.crc32(text.encode())


_LEAD_BYTES = bytes(range(0xC0, 0x100))
_LEAD_BYTES_4 = bytes(range(0xF0, 0x100))


def estimate_tokens(text: str) -> int:
    """Roughly what common tokenizers (cl100k-like) make of ``text``: one token per four
    ASCII characters, one per other character below U+10000 (CJK, Cyrillic, ...) and two per
    character above it (emoji), so dense scripts cost what they would upstream."""
    if text.isascii():
        return max(1, (len(text) + 3) // 4)
    data = text.encode("utf-8", "surrogatepass")
    # Counted on the bytes in C: each non-ASCII character has one lead byte (>= 0xC0), and
    # those of characters above U+FFFF are >= 0xF0.
    others = len(data) - len(data.translate(None, _LEAD_BYTES))
    astral = len(data) - len(data.translate(None, _LEAD_BYTES_4))
    ascii_chars = len(text) - others
    return max(1, (ascii_chars + 3) // 4 + others + astral)


def prompt_tokens(messages: Sequence[Any], extra: Any = None) -> int:
    """A cheap deterministic prompt size: content estimate plus per-message overhead.

    `extra` (tools, response_format) is counted by its JSON size, as providers serialize
    those into the prompt too.
    """
    total = 3
    for message in messages:
        total += 4
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_tokens(content)
        elif isinstance(content, list):
            # Media parts are counted by media.read_parts; only text parts here.
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += estimate_tokens(text)
        if message.get("tool_calls"):
            total += estimate_tokens(orjson.dumps(message["tool_calls"]).decode())
    if extra:
        total += estimate_tokens(orjson.dumps(extra).decode())
    return total


def random_id(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(_ALPHANUMERIC, k=length))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def to_json(self, *, index: int = 0) -> dict[str, Any]:
        return {
            "id": self.id,
            "index": index,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply cut into tokens, plus why it ended.

    `content` / `reasoning` / `arguments` are the per-token pieces; only `tool_call` has
    arguments. `finish_reason` is the normalized value (stop, length, tool_calls).
    """

    content: tuple[str, ...]
    reasoning: tuple[str, ...] = ()
    tool_call: ToolCall | None = None
    arguments: tuple[str, ...] = ()
    finish_reason: str = "stop"
    reasoning_hidden: bool = False
    """``reasoning.exclude``: the model reasons (and bills it) but the reply shows none."""
    refusal: tuple[str, ...] = ()
    """The model refused: these pieces are ``refusal``, and ``content`` is empty."""
    images: int = 0
    """Generated images; each is IMAGE_TOKENS completion tokens, outside ``max_tokens``."""

    @property
    def text_tokens(self) -> int:
        return len(self.content) + len(self.reasoning) + len(self.arguments) + len(self.refusal)

    @property
    def completion_tokens(self) -> int:
        return self.text_tokens + self.images * IMAGE_TOKENS

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning) if self.reasoning else None


def cap_reply(reply: Reply, limit: int | None) -> Reply:
    """Cut a reply at `limit` completion tokens (reasoning first, like real models)."""
    if limit is None or reply.text_tokens <= limit:
        return reply
    reasoning = reply.reasoning[:limit]
    remaining = limit - len(reasoning)
    if reply.tool_call is not None:
        arguments = reply.arguments[:remaining]
        call = ToolCall(reply.tool_call.id, reply.tool_call.name, "".join(arguments))
        return replace(
            reply, reasoning=reasoning, tool_call=call, arguments=arguments, finish_reason="length"
        )
    return replace(
        reply,
        content=reply.content[:remaining],
        reasoning=reasoning,
        refusal=reply.refusal[:remaining],
        finish_reason="length",
    )


def usage_json(
    model: ModelInfo,
    prompt: int,
    completion: int,
    reasoning: int,
    *,
    media: PromptMedia | None = None,
    images: int = 0,
    charged: bool = True,
    extras: Extras | None = None,
) -> dict[str, Any]:
    """The `usage` object; `charged=False` applies zero-completion insurance (cost 0)."""
    extras = extras or Extras()
    prompt_cost = completion_cost = fee = Decimal(0)
    if charged:
        prompt_cost = model.prompt_cost(prompt, media) + extras.prompt_cost_change(model)
        completion_cost = model.completion_cost(completion, images)
        fee = extras.fees
    inference = prompt_cost + completion_cost
    # With the organisation's own key (BYOK) the provider bills the inference; OpenRouter's
    # cost is its fee on it, plus its own tools' fees, which no key of the caller's pays.
    billed = inference * BYOK_FEE if extras.byok else inference
    total = float(billed + fee)
    prompt_details: dict[str, int] = {
        "cached_tokens": extras.cache.read,
        "cache_write_tokens": extras.cache.written,
    }
    if media is not None and media.tokens:
        prompt_details["audio_tokens"] = media.audio_tokens
        prompt_details["video_tokens"] = media.video_tokens
        # Not in chat captures (only in embeddings'), but the gateway reads it where sent.
        prompt_details["image_tokens"] = media.image_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": total,
        "is_byok": extras.byok,
        "prompt_tokens_details": prompt_details,
        "cost_details": {
            # The provider's part: OpenRouter's search and OCR fees are in cost, not here.
            "upstream_inference_cost": float(inference),
            "upstream_inference_prompt_cost": float(prompt_cost),
            "upstream_inference_completions_cost": float(completion_cost),
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "image_tokens": images * IMAGE_TOKENS,
        },
    }
    if extras.web is not None:
        usage["server_tool_use_details"] = extras.web.usage_details()
    return usage
