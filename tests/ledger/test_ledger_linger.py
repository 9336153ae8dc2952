"""The writer's linger: records arriving close together share one transaction, yet flush(),
close() and a full batch never wait for it. Each body runs against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from service.domain.usage import LedgerStore, RejectedCalls, UsageRecord
from service.ledger.batching import BatchingLedger
from tests.ledger.records import count_rows, make_record

LONG = 30.0
"""A linger no test may wait out: finishing well before it proves nothing waited for it."""


class Batches:
    """The size of every batch a store writes from now on (one transaction each)."""

    def __init__(self, store: LedgerStore, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(store, BatchingLedger)
        self.sizes: list[int] = []
        self.written = asyncio.Event()
        write = store._write_batch

        async def counted(
            batch: Sequence[UsageRecord], rejections: Sequence[RejectedCalls] = ()
        ) -> None:
            await write(batch, rejections)
            self.sizes.append(len(batch))
            self.written.set()

        monkeypatch.setattr(store, "_write_batch", counted)


async def test_records_within_the_linger_share_one_batch_and_flush_does_not_wait(
    open_store: Callable[..., LedgerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(linger_s=LONG)
    await store.start()
    batches = Batches(store, monkeypatch)
    for n in range(3):
        store.record(make_record(n))
        await asyncio.sleep(0.02)  # the writer runs in between: it has seen the first
    assert (batches.sizes, store.counters().written) == ([], 0)  # lingering

    async with asyncio.timeout(5):
        await store.flush()
    assert (batches.sizes, store.counters().written) == ([3], 3)
    await store.close()


async def test_the_linger_alone_ends_in_a_write(
    open_store: Callable[..., LedgerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    linger = 0.1
    store = open_store(linger_s=linger)
    await store.start()
    batches = Batches(store, monkeypatch)
    loop = asyncio.get_running_loop()
    started = loop.time()
    store.record(make_record(1))
    async with asyncio.timeout(5):
        await batches.written.wait()  # no flush
    assert loop.time() - started >= linger * 0.9
    assert (batches.sizes, store.counters().written) == ([1], 1)
    await store.close()


async def test_a_full_batch_does_not_wait_for_the_linger(
    open_store: Callable[..., LedgerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(batch_size=4, linger_s=LONG)
    await store.start()
    batches = Batches(store, monkeypatch)
    for n in range(6):
        store.record(make_record(n))
    async with asyncio.timeout(5):
        await batches.written.wait()
    assert batches.sizes == [4]  # the other two linger

    async with asyncio.timeout(5):
        await store.close()  # close does not wait for the linger either
    assert batches.sizes == [4, 2]
    assert await count_rows(open_store) == 6


async def test_linger_must_not_be_negative(open_store: Callable[..., LedgerStore]) -> None:
    with pytest.raises(ValueError, match="linger_s"):
        open_store(linger_s=-1)


async def test_commit_returns_once_its_row_is_written_and_concurrent_commits_share_a_batch(
    open_store: Callable[..., LedgerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GATEWAY_LEDGER_DURABILITY=sync: a call's status waits for commit(); the linger must not
    # delay it, and calls ending together must not cost a transaction each.
    store = open_store(linger_s=LONG, fsync_commits=True)
    await store.start()
    batches = Batches(store, monkeypatch)
    async with asyncio.timeout(5):
        await store.commit(make_record(0))
    assert batches.sizes == [1]
    assert await count_rows(open_store) == 1  # visible to another connection: committed

    async with asyncio.timeout(5):
        await asyncio.gather(*(store.commit(make_record(n)) for n in range(1, 51)))
    assert sum(batches.sizes) == 51
    assert len(batches.sizes) <= 3  # the first waiter's batch, then the rest together
    assert await count_rows(open_store) == 51
    await store.close()
