"""Child process for the SIGTERM test: record a burst, then close the ledger on SIGTERM.

Usage: python sigterm_child.py <sqlite path or postgres DSN> <count>. Prints "recorded" once
the burst is queued (before any of it can have been written), then waits for SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from service.ledger import open_ledger
from tests.ledger.records import make_record


async def main(target: str, count: int) -> int:
    store = open_ledger(target)
    await store.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    for n in range(count):
        store.record(make_record(n))
    print("recorded", store.counters().pending, flush=True)
    await stop.wait()
    await store.close()
    counters = store.counters()
    print("closed", counters.written, counters.dropped, flush=True)
    return 0 if counters.written == count else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
