"""``python -m bench.crash_loss``: how many answered calls' rows a kill -9 loses, per durability.

Each trial starts ``python -m service`` (built-in simulator, its own SQLite ledger) with
``GATEWAY_LEDGER_DURABILITY`` set, sends ``Complete`` calls from ``concurrency`` callers, each
with an ``x-request-id`` of its own, and SIGKILLs the gateway the moment the ``kill_after``-th
answer arrives, while the other callers' calls are in flight. A call counts as answered when
its caller received OK; afterwards the ledger the dead process left is opened, and every
answered call without its row is a lost row.

``tests/accounting/test_acct_kill9.py`` runs one trial in ``sync`` mode and asserts no loss.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from bench.procs import ROOT, free_port, python

DEMO_KEY = "demo-key"


@dataclass(frozen=True)
class Trial:
    durability: str
    answered: int
    rows_of_answered: int
    answers_per_s: float
    """The answer rate up to the kill, to turn lost rows into the time they cover."""

    @property
    def lost(self) -> int:
        return self.answered - self.rows_of_answered

    @property
    def lost_ms(self) -> float:
        """The answers whose rows were lost, as milliseconds of answering before the kill."""
        return self.lost / self.answers_per_s * 1000 if self.answers_per_s else 0.0


def ledger_request_ids(path: Path) -> set[str]:
    # The gateway died mid-write: open read-write so SQLite recovers the WAL as it would.
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM usage_records")}


async def wait_serving(address: str, timeout_s: float = 30.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        await check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout_s)


async def run_trial(
    durability: str,
    folder: Path,
    *,
    concurrency: int = 32,
    kill_after: int = 150,
) -> Trial:
    port = free_port()
    address = f"127.0.0.1:{port}"
    ledger = folder / f"usage-{durability}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENROUTER_"))}
    env |= {
        "GATEWAY_SIMULATOR": "true",
        "GATEWAY_LISTEN": address,
        "GATEWAY_LEDGER_PATH": str(ledger),
        "GATEWAY_LEDGER_DURABILITY": durability,
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    with (folder / f"gateway-{durability}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *python("-m", "service"), cwd=ROOT, env=env, stdout=log, stderr=log
        )
    answered: set[str] = set()
    first_answer = killed_at = 0.0
    try:
        await wait_serving(address)
        killed = asyncio.Event()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.CompletionServiceStub(channel)

            async def caller(n: int) -> None:
                nonlocal first_answer, killed_at
                i = 0
                while not killed.is_set():
                    request_id = f"c{n}-{i}"
                    i += 1
                    try:
                        await stub.Complete(
                            pb.CompleteRequest(
                                messages=[pb.Message(role=pb.ROLE_USER, content="Hi")]
                            ),
                            metadata=(
                                ("authorization", f"Bearer {DEMO_KEY}"),
                                ("x-request-id", request_id),
                            ),
                            timeout=10,
                        )
                    except grpc.aio.AioRpcError:
                        return
                    answered.add(request_id)
                    if len(answered) == 1:
                        first_answer = time.monotonic()
                    if len(answered) == kill_after:
                        process.send_signal(signal.SIGKILL)
                        killed_at = time.monotonic()
                        killed.set()

            await asyncio.gather(*(caller(n) for n in range(concurrency)))
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    rows = ledger_request_ids(ledger)
    return Trial(
        durability,
        answered=len(answered),
        rows_of_answered=len(answered & rows),
        answers_per_s=(kill_after - 1) / max(killed_at - first_answer, 1e-9),
    )


async def main_async(trials: int, concurrency: int, kill_after: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llmgw-crash-") as tmp:
        for round_ in range(trials):
            for durability in ("batched", "sync"):
                folder = Path(tmp) / f"{durability}-{round_}"
                folder.mkdir()
                trial = await run_trial(
                    durability, folder, concurrency=concurrency, kill_after=kill_after
                )
                print(
                    f"trial {round_ + 1} {durability:<7} answered {trial.answered:4d} "
                    f"at {trial.answers_per_s:6,.0f}/s, rows missing {trial.lost:3d} "
                    f"({trial.lost_ms:5.1f} ms of answers)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-after", type=int, default=150, help="answers before SIGKILL")
    args = parser.parse_args()
    asyncio.run(main_async(args.trials, args.concurrency, args.kill_after))


if __name__ == "__main__":
    main()
