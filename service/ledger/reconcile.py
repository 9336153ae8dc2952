"""Fills in the cost of cancelled streams from OpenRouter's own record of each generation.

A cancelled stream rarely sees its final usage chunk, so its ledger row has no (or a partial)
cost. Some seconds later ``GET /generation`` knows the real tokens and cost; the reconciler
asks for them and updates the rows. Look-ups that find nothing are counted per row, and rows
that failed ``max_attempts`` times are left alone, so hopeless ones cannot starve the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Protocol

from service.domain.completion import Usage
from service.domain.cost_kinds import CostSplit, CostUnits, split_cost
from service.domain.models import ModelInfo
from service.domain.ports import GenerationStats
from service.domain.usage import LedgerStore, UsageRecord, cost_from_stats
from service.errors import GatewayError

_log = logging.getLogger(__name__)


class GenerationLookup(Protocol):
    """``CompletionBackend.get_generation``: OpenRouter's record of a generation, or None when
    it does not know it (yet). ``deadline`` is an absolute ``loop.time()``."""

    def __call__(
        self, generation_id: str, *, deadline: float
    ) -> Awaitable[GenerationStats | None]: ...


class ModelLookup(Protocol):
    """``ModelCatalog.get``: a model's catalog entry, or None when the catalog lacks it."""

    def __call__(self, model: str) -> Awaitable[ModelInfo | None]: ...


class Reconciler:
    """Periodically (``start``) or on demand (``run_once``) reconciles unreconciled records.

    With ``models``, a reconciled row's cost is split by kind at its served model's catalog
    prices (``split_cost``, from the counts OpenRouter's record gives); without, or for a
    model the catalog lacks, all of it is ``OTHER``."""

    def __init__(
        self,
        ledger: LedgerStore,
        get_generation: GenerationLookup,
        *,
        models: ModelLookup | None = None,
        interval_s: float = 60.0,
        batch_size: int = 100,
        lookup_timeout_s: float = 10.0,
        max_attempts: int = 10,
    ) -> None:
        self._ledger = ledger
        self._get_generation = get_generation
        self._models = models
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._lookup_timeout_s = lookup_timeout_s
        self._max_attempts = max_attempts
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run ``run_once`` every ``interval_s`` (first after one interval: OpenRouter needs a
        moment before it knows a generation) until ``close``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run_periodically(), name="ledger-reconciler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> int:
        """Reconcile up to ``batch_size`` records; returns how many rows were updated.

        A look-up that answers None, or fails for good (a non-retryable error, an invalid
        cost), counts as a miss for that row. A retryable failure (timeout, upstream down)
        ends the round without counting: the rest waits for the next one.
        """
        async with self._lock:
            records = await self._ledger.unreconciled(
                self._batch_size, max_attempts=self._max_attempts
            )
            updated = 0
            loop = asyncio.get_running_loop()
            for record in records:
                deadline = loop.time() + self._lookup_timeout_s
                try:
                    # timeout_at backs up the deadline in case the lookup ignores it.
                    async with asyncio.timeout_at(deadline):
                        stats = await self._get_generation(record.generation_id, deadline=deadline)
                except TimeoutError:
                    _log.warning("generation look-up timed out; reconciliation paused")
                    break
                except GatewayError as exc:
                    if exc.retryable:
                        _log.warning("generation look-up failed (%r); reconciliation paused", exc)
                        break
                    _log.warning("generation %s cannot be looked up: %r", record.generation_id, exc)
                    stats = None
                if stats is None:
                    await self._ledger.note_reconcile_miss(record.call_id)
                    continue
                try:
                    costs = await self._costs(record, stats)
                    updated += await self._ledger.reconcile(record.call_id, stats, costs)
                except ValueError as exc:
                    _log.warning("generation %s: %s", record.generation_id, exc)
                    await self._ledger.note_reconcile_miss(record.call_id)
            return updated

    async def _costs(self, record: UsageRecord, stats: GenerationStats) -> CostSplit | None:
        if self._models is None:
            return None
        model = await self._models(record.served_model or stats.model)
        usage = Usage(
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            reasoning_tokens=stats.reasoning_tokens,
            cached_tokens=stats.cached_tokens,
        )
        units = CostUnits(
            record.image_inputs, record.images_out, record.file_inputs, record.rpc == "Embed"
        )
        pricing = model.pricing if model is not None else None
        return split_cost(cost_from_stats(stats), usage, pricing, units)

    async def _run_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                count = await self.run_once()
            except Exception:
                # One bad round (e.g. the database briefly down) must not end reconciliation.
                _log.exception("ledger reconciliation round failed")
            else:
                if count:
                    _log.info("reconciled %d usage record(s) with OpenRouter", count)
