"""``make soak``: a mixed load with faults against real processes, then ledger rows == calls.

Runs redis-server, the simulator (``python -m service.simulator``) and the gateway
(``python -m service``, SQLite ledger, quotas in Redis) on loopback ports, and for
``--seconds`` (60) drives a mixed load of every RPC through two callers (one with limits).
Faults on a schedule: the simulator restarts at 20 % and 60 % of the run, Redis at 40 %, a
flood of calls with bad keys runs from 45 % to 55 %, and SIGTERM goes to the gateway at the
end while the load continues.

Then every call the servicer answered (it echoes the call's ``x-request-id`` in the
trailers; a stream that delivered an event was answered too) must have exactly one ledger
row with that request id and the status the client saw; calls it never answered (refused at
the transport once it had exited) must have none. The figures are printed per status;
the exit status is 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from bench.procs import Child, Processes, free_port, python, wait_serving

ALPHA_KEY = "soak-alpha-key"
BETA_KEY = "soak-beta-key"
UPSTREAM_KEY = "sk-or-v1-soak"
REQUEST_ID = "x-request-id"


@dataclass(frozen=True, slots=True)
class Outcome:
    request_id: str
    rpc: str
    code: str
    reached: bool
    """The servicer answered: it echoed the request id, or a stream delivered an event."""
    flood: bool = False
    cancelled: bool = False
    """The client cancelled it: the server may have ended it first (its row then has the
    status the client never received), so any one row will do."""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ids: int = 0

    def fault(self, what: str) -> None:
        self.faults.append((time.monotonic() - self.started, what))
        print(f"  {time.monotonic() - self.started:5.1f} s  {what}", flush=True)

    def next_id(self) -> str:
        self.ids += 1
        return f"soak-{self.ids}"


def _callers_file(path: Path) -> None:
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    path.write_text(
        f'[[callers]]\nid = "alpha"\nkey_sha256 = "{digest(ALPHA_KEY)}"\n'
        "[callers.limits]\nrequests_per_minute = 1000000\ntokens_per_minute = 1000000000\n"
        'usd_per_day = "10000"\n'
        f'[[callers]]\nid = "beta"\nkey_sha256 = "{digest(BETA_KEY)}"\n'
    )


def _wait_port(port: int, child: Child, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.fail("exited while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise child.fail(f"not listening on {port} within {timeout_s:.0f} s")


class Fleet:
    """The processes under test, restartable on their ports."""

    def __init__(self, processes: Processes, workdir: Path) -> None:
        self.processes = processes
        self.workdir = workdir
        self.redis_port = free_port()
        self.sim_port = free_port()
        self.gateway_port = free_port()
        self.ledger = workdir / "usage.sqlite3"
        self.redis = self.start_redis()
        self.sim = self.start_sim()
        _callers_file(workdir / "callers.toml")
        self.gateway = processes.spawn(
            "gateway",
            python("-m", "service"),
            {
                "GATEWAY_LISTEN": self.address,
                "GATEWAY_LEDGER_PATH": str(self.ledger),
                "GATEWAY_CALLERS_FILE": str(workdir / "callers.toml"),
                "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "GATEWAY_SHUTDOWN_GRACE_S": "5",
                "OPENROUTER_API_KEY": UPSTREAM_KEY,
                "OPENROUTER_BASE_URL": f"http://127.0.0.1:{self.sim_port}/api/v1",
                "OPENROUTER_DEFAULT_MODEL": "openai/gpt-4o-mini",
                "OPENROUTER_TIMEOUT_MS": "5000",
            },
        )
        wait_serving(self.gateway, self.address, 60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def start_redis(self) -> Child:
        child = self.processes.spawn(
            "redis",
            [
                "redis-server",
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
        )
        _wait_port(self.redis_port, child)
        return child

    def start_sim(self) -> Child:
        child = self.processes.spawn(
            "simulator",
            python(
                "-m", "service.simulator", "--port", str(self.sim_port), "--keepalive-comments", "1"
            ),
        )
        _wait_port(self.sim_port, child)
        return child

    def restart_sim(self) -> None:
        self.processes.stop(self.sim)
        self.sim = self.start_sim()

    def restart_redis(self) -> None:
        self.processes.stop(self.redis)
        self.redis = self.start_redis()


# --- the load --------------------------------------------------------------------------------


def _metadata(key: str, request_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), (REQUEST_ID, request_id))


def _echoed(trailing: grpc.aio.Metadata | None, request_id: str) -> bool:
    return dict(trailing or ()).get(REQUEST_ID) == request_id


def _user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


_PROMPTS = (
    "Hello [[sim:tokens=5]]",
    "Hello [[sim:tokens=20]]",
    "Fail [[sim:error=500]]",
    "Busy [[sim:error=429]] [[sim:retry-after=0.05]]",
    "Broke [[sim:malformed]]",
    "Cut [[sim:drop-after=2]]",
    "Tools [[sim:tool-call]]",
    "Bad model",
)


async def _unary(
    run: Run, rpc: str, send: Callable[..., Any], request: Any, key: str, *, flood: bool = False
) -> None:
    request_id = run.next_id()
    call = send(request, metadata=_metadata(key, request_id), timeout=15)
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    reached = _echoed(await call.trailing_metadata(), request_id)
    run.outcomes.append(Outcome(request_id, rpc, code.name, reached, flood))
    if not reached:
        await asyncio.sleep(0.01)  # nobody listens (the gateway has exited): no busy loop


async def _stream(
    run: Run, stub: pb_grpc.CompletionServiceAsyncStub, rng: random.Random, key: str
) -> None:
    request_id = run.next_id()
    text = rng.choice(
        (
            "Stream [[sim:tokens=30]] [[sim:pace=10]]",
            "Stream [[sim:mid-stream-error]]",
            "Stream [[sim:tokens=5]]",
        )
    )
    call = stub.StreamComplete(
        pb.StreamCompleteRequest(messages=[_user(text)]),
        metadata=_metadata(key, request_id),
        timeout=15,
    )
    events = 0
    cancel_after = 2 if rng.random() < 0.15 else None
    cancelled = False
    try:
        async for _ in call:
            events += 1
            if cancel_after is not None and events >= cancel_after:
                cancelled = call.cancel()
                break
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    reached = events > 0 or _echoed(await call.trailing_metadata(), request_id)
    run.outcomes.append(
        Outcome(request_id, "StreamComplete", code.name, reached, cancelled=cancelled)
    )


async def _caller(run: Run, channel: grpc.aio.Channel, seed: int) -> None:
    rng = random.Random(seed)
    stub: pb_grpc.CompletionServiceAsyncStub = pb_grpc.CompletionServiceStub(channel)
    while not run.stop.is_set():
        key = ALPHA_KEY if rng.random() < 0.6 else BETA_KEY
        roll = rng.random()
        if roll < 0.5:
            prompt = rng.choice(_PROMPTS)
            model = "no/such-model" if prompt == "Bad model" else ""
            request = pb.CompleteRequest(model=model, messages=[_user(prompt)])
            await _unary(run, "Complete", stub.Complete, request, key)
        elif roll < 0.7:
            await _stream(run, stub, rng, key)
        elif roll < 0.8:
            structured = pb.CompleteStructuredRequest(
                schema_name="chat_reply_v1",
                messages=[
                    _user(
                        rng.choice(("Reply [[sim:json=valid]]", "Reply [[sim:json=wrong-shape]]"))
                    )
                ],
            )
            await _unary(run, "CompleteStructured", stub.CompleteStructured, structured, key)
        elif roll < 0.9:
            await _unary(run, "ListModels", stub.ListModels, pb.ListModelsRequest(), key)
        else:
            await _unary(run, "GetUsage", stub.GetUsage, pb.GetUsageRequest(), key)


async def _flood(run: Run, channel: grpc.aio.Channel, until: float) -> None:
    stub: pb_grpc.CompletionServiceAsyncStub = pb_grpc.CompletionServiceStub(channel)
    request = pb.CompleteRequest(messages=[_user("Hello")])
    while time.monotonic() < until and not run.stop.is_set():
        await _unary(run, "Complete", stub.Complete, request, f"bad-key-{run.ids}", flood=True)


async def _at(
    run: Run, fraction: float, seconds: float, action: Callable[[], Awaitable[None]]
) -> None:
    await asyncio.sleep(max(0.0, run.started + fraction * seconds - time.monotonic()))
    await action()


async def drive(fleet: Fleet, seconds: float, callers: int) -> tuple[Run, int | None]:
    run = Run()
    async with grpc.aio.insecure_channel(fleet.address) as channel:

        async def restart_sim() -> None:
            run.fault("simulator stopped")
            await asyncio.to_thread(fleet.restart_sim)
            run.fault("simulator back")

        async def restart_redis() -> None:
            run.fault("redis stopped")
            await asyncio.to_thread(fleet.restart_redis)
            run.fault("redis back")

        async def flood() -> None:
            run.fault("bad-key flood starts")
            until = run.started + 0.55 * seconds
            await asyncio.gather(*(_flood(run, channel, until) for _ in range(8)))
            run.fault("bad-key flood ends")

        load = [asyncio.create_task(_caller(run, channel, n)) for n in range(callers)]
        faults = [
            asyncio.create_task(_at(run, 0.2, seconds, restart_sim)),
            asyncio.create_task(_at(run, 0.4, seconds, restart_redis)),
            asyncio.create_task(_at(run, 0.45, seconds, flood)),
            asyncio.create_task(_at(run, 0.6, seconds, restart_sim)),
        ]
        await asyncio.sleep(max(0.0, run.started + seconds - time.monotonic()))
        await asyncio.gather(*faults)
        run.fault("SIGTERM to the gateway")
        fleet.gateway.terminate()
        exit_code = await asyncio.to_thread(_wait_exit, fleet.gateway, 30.0)
        run.fault(f"gateway exited ({exit_code})")
        run.stop.set()
        await asyncio.gather(*load)
    return run, exit_code


def _wait_exit(child: Child, timeout_s: float) -> int | None:
    with contextlib.suppress(Exception):
        return child.popen.wait(timeout=timeout_s)
    return None


# --- the check -------------------------------------------------------------------------------


def ledger_rows(path: Path, table: str = "usage_records") -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table}")]


def rejected_rows(path: Path) -> list[dict[str, Any]]:
    """The aggregated rows of calls refused before their caller was known (``rejected_calls``:
    minute, peer, rpc, reason and ``calls``, how many such calls the row stands for)."""
    return ledger_rows(path, "rejected_calls")


@dataclass
class Check:
    lines: list[str] = field(default_factory=list)
    mismatches: int = 0
    cancelled_rows: Counter[str] = field(default_factory=Counter)
    """Row statuses of the streams the clients cancelled themselves."""

    def problem(self, text: str) -> None:
        self.mismatches += 1
        if self.mismatches <= 20:
            self.lines.append(f"  MISMATCH {text}")


_STRANGER_REASONS = frozenset({"UNAUTHENTICATED", "API_KEY_MISSING", "API_KEY_INVALID"})
"""The reasons a call refused before its caller was known can have (gRPC UNAUTHENTICATED)."""


def compare(
    run: Run, rows: list[dict[str, Any]], rejected: list[dict[str, Any]] | None = None
) -> Check:
    """``rejected``: the ledger's aggregated rows of strangers' calls (``rejected_rows``)."""
    check = Check()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["caller_id"]:  # authenticated: one row per call, named by its request id
            by_id.setdefault(str(row["request_id"]), []).append(row)
    for outcome in run.outcomes:
        if outcome.flood:
            continue
        found = by_id.pop(outcome.request_id, [])
        if not outcome.reached:
            if found:
                check.problem(f"{outcome.request_id}: a row, but the servicer never answered")
        elif len(found) != 1:
            check.problem(f"{outcome.request_id} ({outcome.rpc} {outcome.code}): {len(found)} rows")
        elif outcome.cancelled:
            check.cancelled_rows[str(found[0]["status"])] += 1
        elif found[0]["status"] != outcome.code:
            check.problem(
                f"{outcome.request_id} ({outcome.rpc}): client saw {outcome.code}, "
                f"row says {found[0]['status']}"
            )
    for request_id, found in by_id.items():
        check.problem(f"{len(found)} row(s) for {request_id}, which no client sent")
    # Bad keys: the ledger aggregates them (one row per minute, peer, RPC and reason, with the
    # number of calls), so they are compared as counts per status.
    seen = Counter(o.code for o in run.outcomes if o.flood and o.reached)
    booked: Counter[str] = Counter()
    for row in rows:
        if not row["caller_id"]:  # a stranger's row of its own (a ledger from before v2)
            booked[str(row["status"])] += 1
    for row in rejected or ():
        if row["reason"] in _STRANGER_REASONS:
            booked["UNAUTHENTICATED"] += int(row["calls"])
        else:
            check.problem(f"an aggregated row with reason {row['reason']}: {row}")
    if seen != booked:
        check.problem(f"bad-key calls: clients saw {dict(seen)}, the ledger holds {dict(booked)}")
    return check


def report(
    run: Run,
    rows: list[dict[str, Any]],
    check: Check,
    exit_code: int | None,
    seconds: float,
    rejected: list[dict[str, Any]] | None = None,
) -> str:
    seen = Counter((o.code, o.reached) for o in run.outcomes)
    strangers = sum(int(r["calls"]) for r in rejected or ())
    row_status = Counter(str(r["status"]) for r in rows)
    lines = [
        f"soak: {seconds:.0f} s, {len(run.outcomes)} calls "
        f"({sum(o.reached for o in run.outcomes)} answered by the servicer, "
        f"{sum(o.flood for o in run.outcomes)} with bad keys), {len(rows)} ledger rows "
        f"+ {len(rejected or ())} aggregated rows of {strangers} refused strangers' calls, "
        f"gateway exit {exit_code}",
        "  faults: " + "; ".join(f"{t:.1f} s {what}" for t, what in run.faults),
        f"  {'status':<20} {'answered':>9} {'unanswered':>11} {'rows':>7}",
    ]
    for status in sorted({code for code, _ in seen} | set(row_status)):
        lines.append(
            f"  {status:<20} {seen[(status, True)]:>9} {seen[(status, False)]:>11} "
            f"{row_status[status]:>7}"
        )
    by_rpc = Counter(o.rpc for o in run.outcomes)
    lines.append("  calls per RPC: " + ", ".join(f"{rpc} {n}" for rpc, n in sorted(by_rpc.items())))
    if check.cancelled_rows:
        lines.append(
            "  streams the clients cancelled, by their rows' status: "
            + ", ".join(f"{k} {v}" for k, v in sorted(check.cancelled_rows.items()))
            + " (the server had ended some before the cancel reached it)"
        )
    lines += check.lines
    lines.append(
        f"  {check.mismatches} mismatch(es)" if check.mismatches else "  rows == calls: OK"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="llmgw-soak-") as tmp,
        Processes(Path(tmp)) as processes,
    ):
        print(f"soak: starting redis-server, the simulator and the gateway in {tmp}", flush=True)
        fleet = Fleet(processes, Path(tmp))
        run, exit_code = asyncio.run(drive(fleet, args.seconds, args.callers))
        rows = ledger_rows(fleet.ledger)
        rejected = rejected_rows(fleet.ledger)
        check = compare(run, rows, rejected)
        print(report(run, rows, check, exit_code, args.seconds, rejected), flush=True)
        if exit_code != 0:
            print(
                f"soak: the gateway exited {exit_code}:\n{fleet.gateway.log_tail(30)}", flush=True
            )
            return 1
    return 1 if check.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
