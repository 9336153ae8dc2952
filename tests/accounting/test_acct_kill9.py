"""kill -9 in ``sync`` durability: every call whose caller got its answer has its row.

The gateway runs as ``python -m service`` with ``GATEWAY_LEDGER_DURABILITY=sync``; 32 callers
send calls until the 150th answer, when the process is SIGKILLed with the rest in flight
(``bench.crash_loss`` runs the same trial in both modes and reports what batched loses).
"""

from __future__ import annotations

from pathlib import Path

from bench.crash_loss import run_trial


async def test_kill_9_loses_no_row_of_an_answered_call_in_sync_mode(tmp_path: Path) -> None:
    trial = await run_trial("sync", tmp_path, concurrency=32, kill_after=150)
    assert trial.answered >= 150
    assert trial.lost == 0, f"{trial.lost} of {trial.answered} answered calls have no row"
