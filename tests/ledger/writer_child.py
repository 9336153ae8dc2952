"""Child process for the several-writers test: open one SQLite ledger, write, report.

Usage: python -m tests.ledger.writer_child <sqlite path> <writer number> <rows>
<busy timeout s>. Prints
"ready" once its imports are done and waits for a line on stdin, so that every writer opens
the (fresh) file and writes at the same moment; then records its rows in many small
transactions (no linger, batches of at most 7), closes, and prints its counters as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from service.ledger.sqlite import SqliteLedger
from tests.ledger.records import make_record


async def main(path: str, writer: int, rows: int, busy_timeout_s: float) -> int:
    print("ready", flush=True)
    sys.stdin.readline()
    store = SqliteLedger(path, linger_s=0.0, batch_size=7, busy_timeout_s=busy_timeout_s)
    await store.start()
    for n in range(rows):
        store.record(make_record(writer * 1_000_000 + n))
        if n % 5 == 0:
            # Let the writer commit between records: many short transactions contend.
            await asyncio.sleep(0)
    await store.close()
    counters = store.counters()
    print(
        json.dumps(
            {
                "written": counters.written,
                "dropped": counters.dropped,
                "rejected": counters.rejected,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    path, writer, rows, busy = sys.argv[1:5]
    sys.exit(asyncio.run(main(path, int(writer), int(rows), float(busy))))
