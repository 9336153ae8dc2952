"""The reconciler against a real ledger and a scripted ``get_generation``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from service.domain.cost_kinds import CostSplit
from service.domain.ports import GenerationStats
from service.domain.usage import LedgerStore
from service.errors import UpstreamBadRequestError, UpstreamUnavailableError
from service.ledger import SqliteLedger, open_ledger
from service.ledger.reconcile import Reconciler
from tests.ledger.records import T0, make_record


def stats(generation_id: str, cost: float) -> GenerationStats:
    return GenerationStats(generation_id, "openai/gpt-4o-mini", cost, 100, 50, 0, 0, True, "stop")


class FakeOpenRouter:
    """Answers ``get_generation`` from a script: stats, None (unknown yet) or an error."""

    def __init__(self, answers: dict[str, GenerationStats | BaseException | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.deadlines: list[float] = []
        self.called = asyncio.Event()

    async def get_generation(
        self, generation_id: str, *, deadline: float
    ) -> GenerationStats | None:
        self.asked.append(generation_id)
        self.deadlines.append(deadline)
        self.called.set()
        answer = self.answers.get(generation_id)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[LedgerStore]:
    store = open_ledger(tmp_path / "usage.db")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def cost(ledger: LedgerStore) -> Decimal:
    return (
        await ledger.totals("billing", T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    ).cost_usd


async def test_run_once_updates_known_generations_and_counts_misses(ledger: LedgerStore) -> None:
    for n in (1, 2, 3):
        ledger.record(make_record(n, cancelled=True, cost_usd=None))
    await ledger.flush()
    upstream = FakeOpenRouter(
        {
            "gen-000001": stats("gen-000001", 0.0015),
            "gen-000002": None,  # not known yet
            "gen-000003": UpstreamBadRequestError("bad id", status=400),  # never will be
        }
    )
    reconciler = Reconciler(ledger, upstream.get_generation, max_attempts=2)

    assert await reconciler.run_once() == 1
    assert await cost(ledger) == Decimal("0.0015")
    assert upstream.asked == ["gen-000001", "gen-000002", "gen-000003"]
    # Each look-up got an absolute deadline on the loop's clock, lookup_timeout_s ahead.
    assert 0 < upstream.deadlines[0] - asyncio.get_running_loop().time() <= 10

    # A second miss each, and then they are no longer asked about.
    assert await reconciler.run_once() == 0
    upstream.asked.clear()
    assert await reconciler.run_once() == 0
    assert upstream.asked == []


async def test_a_retryable_failure_pauses_the_round_without_counting(
    ledger: LedgerStore,
) -> None:
    for n in (1, 2):
        ledger.record(make_record(n, cancelled=True, cost_usd=None))
    await ledger.flush()
    upstream = FakeOpenRouter({"gen-000001": UpstreamUnavailableError("down", status=503)})
    reconciler = Reconciler(ledger, upstream.get_generation, max_attempts=1)

    assert await reconciler.run_once() == 0
    assert upstream.asked == ["gen-000001"]  # the round stopped there
    # Nothing was counted as a miss, so with max_attempts=1 both are still pending.
    assert len(await ledger.unreconciled(10, max_attempts=1)) == 2

    upstream.answers = {
        "gen-000001": stats("gen-000001", 0.5),
        "gen-000002": stats("gen-000002", 0.25),
    }
    assert await reconciler.run_once() == 2
    assert await cost(ledger) == Decimal("0.75")


async def test_a_hanging_lookup_is_cut_at_its_deadline(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, cancelled=True, cost_usd=None))
    await ledger.flush()
    never = asyncio.Event()

    async def hang(generation_id: str, *, deadline: float) -> GenerationStats | None:
        await never.wait()
        return None

    reconciler = Reconciler(ledger, hang, lookup_timeout_s=0.05)
    async with asyncio.timeout(2):
        assert await reconciler.run_once() == 0
    assert len(await ledger.unreconciled(10, max_attempts=1)) == 1  # not counted as a miss


async def test_zero_completion_insurance_cost_is_zero(ledger: LedgerStore) -> None:
    ledger.record(make_record(1, cancelled=True, cost_usd=Decimal("0.0002")))
    await ledger.flush()
    upstream = FakeOpenRouter({"gen-000001": stats("gen-000001", 0.0)})

    assert await Reconciler(ledger, upstream.get_generation).run_once() == 1
    assert await cost(ledger) == Decimal(0)


class SignallingLedger(SqliteLedger):
    """A SQLite ledger that says when a row was reconciled, so a test can wait for it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reconciled = asyncio.Event()

    async def reconcile(
        self, call_id: str, stats: GenerationStats, costs: CostSplit | None = None
    ) -> bool:
        updated = await super().reconcile(call_id, stats, costs)
        self.reconciled.set()
        return updated


async def test_periodic_runs_until_closed(tmp_path: Path) -> None:
    ledger = SignallingLedger(tmp_path / "usage.db")
    await ledger.start()
    ledger.record(make_record(1, cancelled=True, cost_usd=None))
    await ledger.flush()
    upstream = FakeOpenRouter({"gen-000001": stats("gen-000001", 0.001)})
    reconciler = Reconciler(ledger, upstream.get_generation, interval_s=0.01)

    reconciler.start()
    async with asyncio.timeout(5):
        await ledger.reconciled.wait()
    await reconciler.close()

    assert await cost(ledger) == Decimal("0.001")
    assert await ledger.unreconciled(10) == []
    await ledger.close()
