"""A process that is told to stop (SIGTERM) while records are queued loses none of them.

The server calls ``close()`` on shutdown; this proves the store's side: a burst recorded just
before the signal is all in the database once the process has exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from service.domain.usage import LedgerStore
from tests.ledger.records import count_rows

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("sigterm_child.py")
BURST = 5000


async def test_sigterm_during_a_burst_loses_no_record(
    ledger_target: str | Path, open_store: Callable[..., LedgerStore]
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(ledger_target),
        str(BURST),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert child.stdout is not None
    async with asyncio.timeout(20):
        line = await child.stdout.readline()
        assert line.decode().split() == ["recorded", str(BURST)]
        child.send_signal(signal.SIGTERM)
        rest = (await child.stdout.read()).decode()
        returncode = await child.wait()

    assert returncode == 0, rest
    assert rest.split() == ["closed", str(BURST), "0"]
    assert await count_rows(open_store) == BURST
