"""Accounting of one RPC: what it may cost before the call, what it did cost after.

Before the call the worst case is reserved against the caller's quotas (a prompt estimate
plus ``max_tokens`` at the dearest candidate model's price), so concurrent requests cannot
overshoot a budget; afterwards the reservation is settled with the real usage and the RPC
becomes one ledger row.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from service.domain.completion import CallStats, CompletionRequest, Usage
from service.domain.models import ModelInfo
from service.domain.usage import UsageRecord

# The prompt estimate is an upper bound, not a guess: a reservation that under-counts lets
# concurrent calls overshoot a budget. Without running the provider's tokenizer, the bound
# is the UTF-8 size. A token always stands for at least one byte of the text it was cut from:
# byte-level BPE (OpenAI's, Llama 3's, Qwen's, DeepSeek's) maps each token to one or more
# bytes, and SentencePiece with byte fallback (Llama 2, Mistral, Gemma) to one or more
# characters, or to one byte of a character outside its vocabulary. So bytes bound tokens in
# every script: English runs ~4 bytes a token, a CJK character (3 bytes) is 1-2 tokens, an
# emoji (4 bytes) 1-3, and a digit 1 byte for 1 token (Llama splits digits one a token),
# where the bound is tight. Anything lower would need the tokenizer.
# Normalisation can lengthen text before it is cut: Qwen's tokenizer applies NFC, and NFC
# turns some characters into two (U+0958 is 3 bytes, 6 in NFC), so text not in NFC counts
# as its NFC form. NFKC, which lengthens far more (U+FDFA: 3 bytes, 33), is not used by
# chat models: it is lossy (full-width CJK punctuation becomes ASCII), and a model must be
# able to write every character it reads.
_TOKENS_PER_MESSAGE = 8
"""The chat template's role markers and separators around each message (4-7 tokens in
OpenAI's, Llama 3's and Gemma's templates), and SentencePiece's dummy prefix."""
_TOKENS_PER_REQUEST = 8
"""Begin-of-text and the assistant header that opens the answer."""
_TOKENS_FOR_TOOLS = 512
"""The tool-use instructions a provider adds to the prompt when tools are offered (Anthropic
documents ~350 tokens for its current models), counted on top of the tools' own text."""


@dataclass(slots=True)
class CallRecord:
    """What one RPC did, filled in as it goes; becomes a ledger row and log line at the end."""

    call_id: str
    """The gateway's own id of this RPC: the key of its ledger row."""
    request_id: str
    """The caller's ``x-request-id`` (or ``call_id`` when it sent none): correlation only."""
    rpc: str
    started_at: float
    """``loop.time()`` at the start, for durations."""
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    caller_id: str = ""
    end_user_id: str = ""
    requested_model: str = ""
    stats: CallStats = field(default_factory=CallStats)
    fallback_used: bool = False
    repair_used: bool = False
    finished: bool = False
    """Set once the RPC's outcome is accounted, so it is accounted exactly once."""


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """At least as many tokens as any provider's tokenizer makes of the prompt (see above)."""
    tokens = _TOKENS_PER_REQUEST + _TOKENS_PER_MESSAGE * len(request.messages)
    for message in request.messages:
        tokens += _utf8_bound(message.content)
        tokens += _utf8_bound(message.name or "") + _utf8_bound(message.tool_call_id or "")
        for call in message.tool_calls:
            tokens += _utf8_bound(call.id) + _utf8_bound(call.name) + _utf8_bound(call.arguments)
    if request.tools:
        tokens += _TOKENS_FOR_TOOLS
    for tool in request.tools:
        tokens += _utf8_bound(tool.name) + _utf8_bound(tool.description)
        tokens += _utf8_bound(_json_text(tool.parameters))
    if request.response_format is not None and request.response_format.schema is not None:
        tokens += _utf8_bound(request.response_format.name)
        tokens += _utf8_bound(_json_text(request.response_format.schema))
    return tokens


def _utf8_bound(text: str) -> int:
    """UTF-8 bytes of ``text``, or of its NFC form where that is longer."""
    if text.isascii():  # most prompts: no encoding, no normalisation to pay for
        return len(text)
    size = len(text.encode("utf-8", "surrogatepass"))
    if not unicodedata.is_normalized("NFC", text):
        size = max(size, len(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")))
    return size


def _json_text(value: Mapping[str, Any]) -> str:
    # JSON as a provider renders it into the prompt: control characters escaped in 6 bytes
    # (repr() uses 4), each character at its UTF-8 size (ensure_ascii=False), and a space
    # after each separator, where templates that indent put their whitespace.
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    tokens: int
    usd: Decimal


def worst_case(request: CompletionRequest, candidates: list[ModelInfo]) -> CostEstimate:
    """The most this request can cost: every candidate model might serve it."""
    prompt = estimate_prompt_tokens(request)
    completion = request.sampling.max_tokens or 0
    usd = max((m.pricing.cost(prompt, completion) for m in candidates), default=Decimal(0))
    return CostEstimate(tokens=prompt + completion, usd=usd)


def usage_cost(usage: Usage, model: ModelInfo | None) -> Decimal:
    """OpenRouter's reported cost, exact; priced from the catalog when it reported none."""
    if usage.cost_usd is not None and math.isfinite(usage.cost_usd) and usage.cost_usd >= 0:
        # repr gives back the decimal OpenRouter wrote; Decimal(float) would not.
        return Decimal(repr(usage.cost_usd))
    if model is None:
        return Decimal(0)
    return model.pricing.cost(usage.prompt_tokens, usage.completion_tokens)


def usage_record(record: CallRecord, status: str, ended_at: float) -> UsageRecord:
    stats = record.stats
    usage = stats.usage
    cost: Decimal | None = None
    if usage is not None and usage.cost_usd is not None:
        cost = usage_cost(usage, None)
    ttft_ms = None
    if stats.first_token_at is not None:
        ttft_ms = max(0, round((stats.first_token_at - record.started_at) * 1000))
    return UsageRecord(
        call_id=record.call_id,
        request_id=record.request_id,
        time=record.started_wall,
        caller_id=record.caller_id,
        rpc=record.rpc,
        requested_model=record.requested_model,
        status=status,
        end_user_id=record.end_user_id,
        served_model=stats.served_model,
        provider=stats.provider,
        generation_id=stats.generation_id,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        cached_tokens=usage.cached_tokens if usage else 0,
        cost_usd=cost,
        latency_ms=max(0, round((ended_at - record.started_at) * 1000)),
        ttft_ms=ttft_ms,
        retries=stats.retries,
        fallback_used=record.fallback_used,
        repair_used=record.repair_used,
        cancelled=status in ("CANCELLED", "DEADLINE_EXCEEDED") and usage is None,
    )
