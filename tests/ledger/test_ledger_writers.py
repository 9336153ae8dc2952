"""Several processes write one SQLite ledger at once (``GATEWAY_WORKERS``): no row is lost.

Each writer is its own process (as each worker is), all open the same fresh file at the same
moment (so they also race to create the schema and switch it to WAL), then commit many short
transactions concurrently. Every row must be there, none dropped or rejected, and no
"database is locked" may cost a row: with the default busy timeout SQLite waits the locks
out; with a 1 ms one it gives up at once, and the open and the batches are retried instead.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.ledger.records import make_record

WRITERS = 4
ROWS = 400


async def _spawn(path: Path, writer: int, busy_timeout_s: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ledger.writer_child",
        str(path),
        str(writer),
        str(ROWS),
        str(busy_timeout_s),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert (await process.stdout.readline()).strip() == b"ready"
    return process


@pytest.mark.parametrize("busy_timeout_s", [5.0, 0.001], ids=["waits", "retries"])
async def test_several_writer_processes_lose_no_row(tmp_path: Path, busy_timeout_s: float) -> None:
    path = tmp_path / "usage.sqlite3"
    writers = [await _spawn(path, n, busy_timeout_s) for n in range(WRITERS)]
    for process in writers:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    results = [await process.communicate() for process in writers]
    for (out, err), process in zip(results, writers, strict=True):
        assert process.returncode == 0, err.decode()
        counters = json.loads(out)
        assert counters == {"written": ROWS, "dropped": 0, "rejected": 0}, err.decode()
        # A lock that was waited out is fine; one that cost a retry is logged, never a loss.
        assert b"Traceback" not in err

    with sqlite3.connect(path) as db:
        call_ids = {row[0] for row in db.execute("SELECT call_id FROM usage_records")}
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    expected = {make_record(w * 1_000_000 + n).call_id for w in range(WRITERS) for n in range(ROWS)}
    assert call_ids == expected
    assert mode == "wal"
