"""Calls refused before their caller was known: counted per minute, peer, RPC and reason.

However many arrive, and from however many addresses, the rows stay bounded: at most
``max_rejection_keys`` distinct keys between two writes, the rest counted under ``*``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from service.domain.usage import LedgerStore
from tests.ledger.records import T0, make_record

MINUTE = timedelta(minutes=1)


async def test_100000_rejected_calls_add_a_bounded_number_of_rows(
    open_store: Callable[..., LedgerStore],
) -> None:
    store = open_store(max_rejection_keys=50)
    await store.start()
    try:
        for n in range(100_000):
            # Two minutes, 3 known peers and a spray of 1,000 addresses, two reasons.
            peer = f"10.0.0.{n % 3}" if n % 2 else f"192.168.{n % 1000 // 250}.{n % 250}"
            store.count_rejected(T0 + (n % 2) * MINUTE, peer, "Complete", "API_KEY_INVALID")
            if n % 1000 == 0:
                await store.flush()  # several writes: the counts add up across them
        store.record(make_record(1))
        await store.flush()
        rows = await store.rejected(T0 - MINUTE, T0 + 2 * MINUTE)
    finally:
        await store.close()

    assert sum(r.calls for r in rows) == 100_000
    # Per minute: at most 50 distinct keys between two writes, the rest under "*".
    assert len(rows) <= 2 * (1000 + 3 + 1)
    minutes = {r.minute for r in rows}
    assert minutes == {T0, T0 + MINUTE}
    assert {r.peer for r in rows if r.minute == T0 + MINUTE} == {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
    assert sum(r.calls for r in rows if r.peer == "*") > 0


async def test_the_spray_beyond_the_key_limit_counts_under_one_row(
    open_store: Callable[..., LedgerStore],
) -> None:
    store = open_store(max_rejection_keys=10, linger_s=60)
    await store.start()
    try:
        for n in range(5000):  # one write: 5,000 distinct peers within one linger
            store.count_rejected(
                T0, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", "GetUsage", "API_KEY_MISSING"
            )
        await store.flush()
        rows = await store.rejected(T0, T0 + MINUTE)
    finally:
        await store.close()
    assert len(rows) == 11
    assert sum(r.calls for r in rows) == 5000
    [other] = [r for r in rows if r.peer == "*"]
    assert other.calls == 4990
