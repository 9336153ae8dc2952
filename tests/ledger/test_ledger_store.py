"""Ledger stores, each body run against SQLite and PostgreSQL (see conftest.ledger_target)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from service.domain.cost_kinds import CostKind, CostSplit
from service.domain.ports import GenerationStats
from service.domain.usage import LedgerStore, ProviderTotals, ToolTotals, UsageTotals
from tests.ledger.records import HOUR, T0, count_rows, make_record


async def test_record_flush_totals(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, cost_usd=Decimal("0.0015"), prompt_tokens=100))
    ledger.record(make_record(2, cost_usd=Decimal("0.000002"), completion_tokens=7))
    ledger.record(make_record(3, cost_usd=None))
    ledger.record(make_record(4, time=T0 + 2 * HOUR))  # outside the range
    ledger.record(make_record(5, caller_id="search"))  # another caller
    await ledger.flush()

    totals = await ledger.totals("billing", T0, T0 + HOUR)

    # Records made without a split keep their costs whole, unattributed.
    unsplit = CostSplit.of({CostKind.OTHER: Decimal("0.001502")})
    assert totals == UsageTotals(
        requests=3,
        prompt_tokens=100 + 10 + 10,
        completion_tokens=5 + 7 + 5,
        cost_usd=Decimal("0.001502"),  # exact: no float rounding on the way
        unknown_cost_requests=1,
        tools=ToolTotals(cache_read_tokens=2 * 3),
        by_provider=(ProviderTotals("OpenAI", 3, 120, 17, Decimal("0.001502"), unsplit),),
        costs=unsplit,
    )
    assert await ledger.totals("nobody", T0, T0 + HOUR) == UsageTotals()
    assert ledger.counters().written == 5


async def test_cache_and_tool_use_round_trip_and_sum_exactly(ledger: LedgerStore) -> None:
    searched = make_record(
        1,
        cost_usd=Decimal("0.007637029"),
        cache_write_tokens=1200,
        web_search_requests=1,
        server_tool_calls=1,
        upstream_cost_usd=Decimal("0.000637029"),
        tool_cost_usd=Decimal("0.007"),
    )
    byok = make_record(2, cost_usd=Decimal("0.0001"), byok=True, upstream_cost_usd=Decimal("0.002"))
    ledger.record(searched)
    ledger.record(byok)
    unknown = make_record(3, cost_usd=None, web_search_requests=2, byok=True)
    ledger.record(unknown)
    await ledger.flush()
    totals = await ledger.totals("billing", T0, T0 + HOUR)
    assert totals.tools == ToolTotals(
        cache_read_tokens=6,
        cache_write_tokens=1200,
        web_search_requests=3,
        server_tool_calls=1,
        tool_cost_usd=Decimal("0.007"),
    )
    assert totals.cost_usd == Decimal("0.007637029") + Decimal("0.0001")
    # Read back as written (the record without a cost awaits reconciliation).
    assert await ledger.unreconciled(10) == [unknown]


async def test_totals_are_split_by_provider(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, provider="OpenAI", cost_usd=Decimal("0.25")))
    ledger.record(make_record(2, provider="Azure", cost_usd=Decimal("0.5"), prompt_tokens=7))
    ledger.record(make_record(3, provider="OpenAI", cost_usd=None, completion_tokens=1))
    ledger.record(make_record(4, provider="", status="PERMISSION_DENIED", prompt_tokens=0))
    ledger.record(make_record(5, provider="Azure", caller_id="search"))  # another caller
    await ledger.flush()

    totals = await ledger.totals("billing", T0, T0 + HOUR)

    def unsplit(usd: str) -> CostSplit:
        return CostSplit.of({CostKind.OTHER: Decimal(usd)})

    assert totals.by_provider == (
        ProviderTotals("", 1, 0, 5, Decimal("0.0000015"), unsplit("0.0000015")),
        ProviderTotals("Azure", 1, 7, 5, Decimal("0.5"), unsplit("0.5")),
        ProviderTotals("OpenAI", 2, 20, 6, Decimal("0.25"), unsplit("0.25")),
    )
    # The split adds up to the totals.
    assert sum(p.requests for p in totals.by_provider) == totals.requests
    assert sum(p.cost_usd for p in totals.by_provider) == totals.cost_usd


async def test_range_is_half_open(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, time=T0))
    ledger.record(make_record(2, time=T0 + HOUR))
    await ledger.flush()

    assert (await ledger.totals("billing", T0, T0 + HOUR)).requests == 1


async def test_a_record_reads_back_field_for_field(ledger: LedgerStore) -> None:
    record = make_record(
        7,
        status="CANCELLED",
        cancelled=True,
        cost_usd=None,
        ttft_ms=None,
        fallback_used=False,
        repair_used=True,
        time=T0 + timedelta(microseconds=123_456),
    )
    ledger.record(record)
    await ledger.flush()

    assert await ledger.unreconciled(10) == [record]


async def test_bad_row_is_rejected_and_the_rest_of_its_batch_lands(
    ledger: LedgerStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Recorded without an await in between: the writer takes all three as one batch, whose
    # transaction fails on the middle row (beyond 64-bit) and rolls back whole; the store then
    # writes row by row so that only the bad row is lost.
    ledger.record(make_record(1))
    ledger.record(make_record(2, prompt_tokens=2**63))
    ledger.record(make_record(3))
    with caplog.at_level(logging.ERROR, logger="service.ledger"):
        await ledger.flush()

    assert (await ledger.totals("billing", T0 - HOUR, T0 + HOUR)).requests == 2
    counters = ledger.counters()
    assert (counters.written, counters.rejected, counters.pending) == (2, 1, 0)
    assert "call-000002" in caplog.text


async def test_a_call_id_is_written_once(ledger: LedgerStore) -> None:
    # A batch delivered again (a retry after an unknown commit outcome) counts nothing twice.
    ledger.record(make_record(1, prompt_tokens=10))
    ledger.record(make_record(1, prompt_tokens=999))
    await ledger.flush()

    totals = await ledger.totals("billing", T0 - HOUR, T0 + HOUR)
    assert (totals.requests, totals.prompt_tokens) == (1, 10)


async def test_calls_sharing_a_request_id_are_a_row_each(ledger: LedgerStore) -> None:
    # The request id is the caller's correlation value, never the row's key.
    for n in range(5):
        ledger.record(make_record(n, request_id="shared", cost_usd=Decimal("0.25")))
    await ledger.flush()

    totals = await ledger.totals("billing", T0 - HOUR, T0 + HOUR)
    assert (totals.requests, totals.cost_usd) == (5, Decimal("1.25"))


async def test_a_large_batch_with_a_repeated_id_lands_whole(ledger: LedgerStore) -> None:
    # 301 records queued at once, one of them twice: every row lands once.
    for n in range(300):
        ledger.record(make_record(n, prompt_tokens=n))
    ledger.record(make_record(7, prompt_tokens=10_000))
    await ledger.flush()

    totals = await ledger.totals("billing", T0 - HOUR, T0 + HOUR)
    assert (totals.requests, totals.prompt_tokens) == (300, sum(range(300)))


async def test_close_writes_everything_queued(open_store: Callable[..., LedgerStore]) -> None:
    store = open_store()
    await store.start()
    for n in range(10):
        store.record(make_record(n))
    await store.close()  # no flush first

    assert store.counters().written == 10
    assert await count_rows(open_store) == 10


async def test_a_burst_of_1000_survives_close(open_store: Callable[..., LedgerStore]) -> None:
    store = open_store(batch_size=64)
    await store.start()
    for n in range(1000):
        store.record(make_record(n))
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the writer start on some while the burst goes on
    await store.close()

    counters = store.counters()
    assert (counters.written, counters.dropped, counters.rejected) == (1000, 0, 0)
    assert await count_rows(open_store) == 1000


async def test_full_queue_drops_and_counts(
    open_store: Callable[..., LedgerStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(max_pending=3)
    # Not started: nothing drains the queue yet.
    with caplog.at_level(logging.ERROR, logger="service.ledger"):
        for n in range(5):
            store.record(make_record(n))
    assert store.counters().dropped == 2
    assert "queue is full" in caplog.text

    await store.start()
    await store.close()
    assert store.counters().written == 3


async def test_record_async_waits_for_room(open_store: Callable[..., LedgerStore]) -> None:
    store = open_store(max_pending=2)
    store.record(make_record(1))
    store.record(make_record(2))
    waiting = asyncio.create_task(store.record_async(make_record(3)))
    await asyncio.sleep(0)
    assert not waiting.done()

    await store.start()  # the writer drains the queue and makes room
    await waiting
    await store.close()

    counters = store.counters()
    assert (counters.written, counters.dropped) == (3, 0)


async def test_record_after_close_is_dropped_and_counted(ledger: LedgerStore) -> None:
    await ledger.close()
    ledger.record(make_record(1))
    assert ledger.counters().dropped == 1


async def test_flush_needs_a_started_store(open_store: Callable[..., LedgerStore]) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await open_store().flush()


async def test_start_twice_migrates_once_and_keeps_data(
    open_store: Callable[..., LedgerStore],
) -> None:
    first = open_store()
    await first.start()
    first.record(make_record(1))
    await first.close()

    # Two replicas starting together, then one more: the schema is created exactly once.
    stores = [open_store(), open_store()]
    await asyncio.gather(*(store.start() for store in stores))
    for store in stores:
        await store.close()
    again = open_store()
    await again.start()
    again.record(make_record(2))
    await again.close()

    assert await count_rows(open_store) == 2


async def test_reconcile_replaces_tokens_and_cost(ledger: LedgerStore) -> None:
    cancelled = make_record(
        1, status="CANCELLED", cancelled=True, cost_usd=Decimal("0.0001"), served_model=""
    )
    ledger.record(cancelled)
    ledger.record(make_record(2))  # complete and priced: nothing to reconcile
    ledger.record(make_record(3, cost_usd=None, generation_id=""))  # no id to look up
    await ledger.flush()
    assert [r.call_id for r in await ledger.unreconciled(10)] == ["call-000001"]

    stats = GenerationStats(
        id="gen-000001",
        model="openai/gpt-4o-mini-2024-07-18",
        total_cost_usd=0.0015,
        prompt_tokens=100,
        completion_tokens=42,
        reasoning_tokens=3,
        cached_tokens=4,
        cancelled=True,
        finish_reason="stop",
    )
    assert await ledger.reconcile("call-000001", stats) is True
    assert await ledger.reconcile("call-unknown", stats) is False

    assert await ledger.unreconciled(10) == []
    totals = await ledger.totals("billing", T0 - HOUR, T0 + HOUR)
    assert totals.cost_usd == Decimal("0.0015") + Decimal("0.0000015")
    assert totals.prompt_tokens == 100 + 10 + 10
    assert totals.unknown_cost_requests == 1


async def test_misses_stop_retries_after_max_attempts(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, cancelled=True))
    ledger.record(make_record(2, cancelled=True))
    await ledger.flush()

    await ledger.note_reconcile_miss("call-000001")
    # Fewest misses first: the record never missed comes before the older one that did.
    assert [r.call_id for r in await ledger.unreconciled(10)] == ["call-000002", "call-000001"]
    await ledger.note_reconcile_miss("call-000001")
    assert [r.call_id for r in await ledger.unreconciled(10, max_attempts=2)] == ["call-000002"]
    assert [r.call_id for r in await ledger.unreconciled(1)] == ["call-000002"]


async def test_the_cost_split_round_trips_and_sums_per_kind_and_provider(
    ledger: LedgerStore,
) -> None:
    first = CostSplit.of(
        {
            CostKind.PROMPT: Decimal("0.000001234567890123456789"),  # more digits than a float
            CostKind.REASONING: Decimal("0.0000002"),
            CostKind.WEB_SEARCH: Decimal("0.007"),
        }
    )
    second = CostSplit.of({CostKind.PROMPT: Decimal("0.0000001"), CostKind.CACHE_READ: Decimal(1)})
    ledger.record(make_record(1, provider="OpenAI", cost_usd=first.total, costs=first))
    ledger.record(make_record(2, provider="Azure", cost_usd=second.total, costs=second))
    ledger.record(make_record(3, provider="Azure", cost_usd=Decimal(0), costs=CostSplit()))
    pending = make_record(4, provider="Azure", cost_usd=None, cancelled=True)
    ledger.record(pending)
    await ledger.flush()

    totals = await ledger.totals("billing", T0, T0 + HOUR)
    assert totals.costs == first + second
    assert totals.costs.total == totals.cost_usd
    assert [(p.provider, p.costs) for p in totals.by_provider] == [
        ("Azure", second),
        ("OpenAI", first),
    ]
    [unreconciled] = await ledger.unreconciled(10)
    assert unreconciled == pending

    # Reconciled: the reconciler's split replaces the row's, or without one the cost is other.
    stats = GenerationStats("gen-000004", "m", 0.0003, 10, 5, 0, 0, True, "stop")
    split = CostSplit.of(
        {CostKind.PROMPT: Decimal("0.0001"), CostKind.COMPLETION: Decimal("0.0002")}
    )
    assert await ledger.reconcile("call-000004", stats, split)
    assert (await ledger.totals("billing", T0, T0 + HOUR)).costs == first + second + split
    assert await ledger.reconcile("call-000004", stats, CostSplit.of({CostKind.PROMPT: Decimal(1)}))
    after = await ledger.totals("billing", T0, T0 + HOUR)
    assert after.costs == first + second + CostSplit.of({CostKind.OTHER: Decimal("0.0003")})
