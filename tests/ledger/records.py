"""Usage records for ledger tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from service.domain.usage import LedgerStore, UsageRecord

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def make_record(n: int = 0, **changes: Any) -> UsageRecord:
    """A plausible finished unary call; ``n`` makes its call id (and request id) unique."""
    fields: dict[str, Any] = {
        "call_id": f"call-{n:06d}",
        "request_id": f"req-{n:06d}",
        "time": T0 + timedelta(milliseconds=n),
        "caller_id": "billing",
        "rpc": "Complete",
        "requested_model": "openai/gpt-4o-mini",
        "status": "OK",
        "end_user_id": "user-1",
        "served_model": "openai/gpt-4o-mini",
        "provider": "OpenAI",
        "generation_id": f"gen-{n:06d}",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "reasoning_tokens": 1,
        "cached_tokens": 2,
        "cost_usd": Decimal("0.0000015"),
        "latency_ms": 420,
        "ttft_ms": 120,
        "retries": 1,
        "fallback_used": True,
        "repair_used": False,
    }
    fields.update(changes)
    return UsageRecord(**fields)


async def count_rows(open_store: Callable[..., LedgerStore]) -> int:
    """Rows of caller "billing" written so far, read through a fresh store."""
    store = open_store()
    await store.start()
    try:
        return (await store.totals("billing", T0 - HOUR, T0 + HOUR)).requests
    finally:
        await store.close()
