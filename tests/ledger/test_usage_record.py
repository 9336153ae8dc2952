"""The usage record's own rules, free of any store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from service.domain.ports import GenerationStats
from service.domain.usage import cost_from_stats
from tests.ledger.records import make_record


def test_time_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_record(time=datetime(2026, 11, 22, 12, 0))
    paris = timezone(timedelta(hours=1))
    record = make_record(time=datetime(2026, 11, 22, 13, 0, tzinfo=paris))
    assert record.time == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert record.time.tzinfo is UTC


@pytest.mark.parametrize(
    "field", ["prompt_tokens", "completion_tokens", "cached_tokens", "latency_ms", "ttft_ms"]
)
def test_counts_must_not_be_negative(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_record(**{field: -1})


def test_cost_must_be_a_finite_non_negative_amount() -> None:
    for bad in (Decimal("-0.01"), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(ValueError, match="cost_usd"):
            make_record(cost_usd=bad)


@pytest.mark.parametrize(
    ("changes", "needs"),
    [
        ({}, False),  # complete and priced
        ({"cancelled": True}, True),  # a cancelled stream's cost is partial at best
        ({"cost_usd": None}, True),
        ({"cancelled": True, "generation_id": ""}, False),  # nothing to look up
        ({"cancelled": True, "reconciled": True}, False),
    ],
)
def test_needs_reconciliation(changes: dict[str, Any], needs: bool) -> None:
    assert make_record(**changes).needs_reconciliation is needs


def test_cost_from_stats_keeps_the_decimal_openrouter_sent() -> None:
    stats = GenerationStats("gen-1", "m", 0.0000015, 1, 1, 0, 0, False, "stop")
    assert cost_from_stats(stats) == Decimal("0.0000015")
    with pytest.raises(ValueError, match="invalid total cost"):
        cost_from_stats(GenerationStats("gen-1", "m", float("nan"), 1, 1, 0, 0, False, "stop"))
