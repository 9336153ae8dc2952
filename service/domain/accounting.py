"""Accounting of one RPC: what it may cost before the call, what it did cost after.

Before the call the worst case is reserved against the caller's quotas (a prompt estimate
plus ``max_tokens`` at the dearest candidate model's price), so concurrent requests cannot
overshoot a budget; afterwards the reservation is settled with the real usage and the RPC
becomes one ledger row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from service.domain.completion import CallStats, CompletionRequest, Usage
from service.domain.models import ModelInfo
from service.domain.usage import UsageRecord

# Tokenizers average ~4 characters per token for English and fewer for other scripts and
# code; 3 keeps the estimate an over-estimate for most text, as a reservation should be.
_CHARS_PER_TOKEN = 3
_TOKENS_PER_MESSAGE = 8


@dataclass(slots=True)
class CallRecord:
    """What one RPC did, filled in as it goes; becomes a ledger row and log line at the end."""

    request_id: str
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
    chars = 0
    for message in request.messages:
        chars += len(message.content)
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description) + len(str(tool.parameters))
    if request.response_format is not None and request.response_format.schema is not None:
        chars += len(str(request.response_format.schema))
    return math.ceil(chars / _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(request.messages)


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
