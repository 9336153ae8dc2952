"""Live streams at a real pace: the load generator's side of the ``live`` scenario.

``concurrency`` callers each keep one ``StreamComplete`` open at all times (the next starts
when the previous ends). The simulator writes every answer as separate SSE events, one token
each, ``pace`` ms apart (with jitter), and stamps each token's text with ``@`` and the
19-digit ``time.time_ns()`` of its write (``[[sim:stamp]]``). The relay lag of a token is the
time from that stamp to the moment its message reaches this process; a delta that carries
several tokens (a gateway coalescing buffered events) gives a lag for each of them.

The first answer of each caller is shorter (``k/N`` of the full length for caller ``k``), so
that the answers end, and new calls start, spread evenly in time, as they would in a steady
state, instead of all at once. Callers start spread over ``ramp_s``; lags are counted for
tokens received in the window that follows ``warmup_s``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from llmgateway.v1 import completion_service_pb2 as pb

if TYPE_CHECKING:
    from bench.load import Job

STREAM = "/llmgateway.v1.CompletionService/StreamComplete"
_DELTA_TAG = 0x12
_END_TAG = 0x1A
_STAMP = re.compile(rb"@(\d{19})")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ERROR_PAUSE_S = 0.05
_LAG_LIMIT_MS = 50.0
LIVE_PACE_MS = 25.0
"""The simulator's pause between tokens: 40 tokens/s, as real models stream."""


def live_prompt(tokens: int, pace_ms: float, jitter_ms: float) -> str:
    return (
        f"Talk live. [[sim:tokens={tokens}]] [[sim:pace={pace_ms:g}]] "
        f"[[sim:jitter={jitter_ms:g}]] [[sim:stamp]]"
    )


def _request(job: Job, tokens: int) -> bytes:
    prompt = live_prompt(tokens, job.live_pace_ms, job.live_jitter_ms)
    message = pb.Message(role=pb.ROLE_USER, content=prompt)
    return pb.StreamCompleteRequest(model=job.model, messages=[message]).SerializeToString()


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _cpu_snapshot(watch: Mapping[str, Sequence[int]]) -> dict[str, float]:
    snapshot = {name: _cpu_seconds(pids) for name, pids in watch.items()}
    snapshot["generator"] = _own_cpu_seconds()
    return snapshot


def percentiles(values: list[int], points: Sequence[float]) -> dict[str, float]:
    """Linear interpolation between closest ranks (NumPy's default), of sorted ``values``."""
    if not values:
        return {f"p{point:g}": math.nan for point in points}
    values.sort()
    out: dict[str, float] = {}
    last = len(values) - 1
    for point in points:
        rank = point / 100 * last
        low = math.floor(rank)
        high = min(low + 1, last)
        out[f"p{point:g}"] = values[low] + (values[high] - values[low]) * (rank - low)
    return out


async def run_live(job: Job, channels: Sequence[grpc.aio.Channel]) -> dict[str, Any]:
    calls: list[grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = [
        channel.unary_stream(STREAM) for channel in channels
    ]
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    full = _request(job, job.live_tokens)
    count = job.concurrency
    began = time.perf_counter()
    window_from = began + job.warmup_s
    window_to = window_from + job.duration_s
    window_from_ns = time.time_ns() + round(job.warmup_s * 1e9)
    window_to_ns = window_from_ns + round(job.duration_s * 1e9)
    lags_us: list[int] = []
    tally: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    cpu: dict[str, dict[str, float]] = {}
    timeout = job.live_tokens * job.live_pace_ms / 1000 * 3 + 30
    findall = _STAMP.findall

    async def caller(index: int) -> None:
        await asyncio.sleep(job.ramp_s * index / count)
        # A shorter first answer, so that answers end (and calls start) spread out in time.
        first_tokens = max(1, math.ceil(job.live_tokens * (index + 1) / count))
        request = _request(job, first_tokens) if first_tokens != job.live_tokens else full
        call = calls[index % len(calls)]
        while time.perf_counter() < window_to:
            complete = False
            try:
                async for message in call(request, metadata=metadata, timeout=timeout):
                    tag = message[0]
                    if tag == _DELTA_TAG:
                        now = time.time_ns()
                        if window_from_ns <= now <= window_to_ns:
                            stamps = findall(message)
                            tally["messages"] += 1
                            tally["tokens"] += len(stamps)
                            lags_us.extend([(now - int(stamp)) // 1000 for stamp in stamps])
                    elif tag == _END_TAG:
                        complete = True
            except grpc.aio.AioRpcError as exc:
                if time.perf_counter() < window_to:
                    errors[exc.code().name] += 1
                    await asyncio.sleep(_ERROR_PAUSE_S)
                continue
            if not complete:
                errors["INCOMPLETE_STREAM"] += 1
            tally["streams"] += 1
            request = full

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window_from - time.perf_counter()))
        cpu["from"] = _cpu_snapshot(job.watch_pids)
        await asyncio.sleep(max(0.0, window_to - time.perf_counter()))
        cpu["to"] = _cpu_snapshot(job.watch_pids)

    sampler = asyncio.ensure_future(sample_cpu())
    callers = [asyncio.ensure_future(caller(i)) for i in range(count)]
    try:
        await sampler
    finally:
        # The window is over: every stream still open is cancelled.
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
    cores = {
        name: (cpu["to"][name] - cpu["from"][name]) / job.duration_s for name in cpu.get("to", {})
    }
    lag = percentiles(lags_us, (50, 90, 99, 99.9, 100))
    return {
        "concurrency": count,
        "window_s": job.duration_s,
        "tokens": tally["tokens"],
        "messages": tally["messages"],
        "streams_completed": tally["streams"],
        "tokens_per_s": tally["tokens"] / job.duration_s,
        "tokens_per_stream_s": tally["tokens"] / job.duration_s / count,
        "tokens_per_message": tally["tokens"] / tally["messages"] if tally["messages"] else 0.0,
        "lag_ms": {name: value / 1000 for name, value in lag.items()},
        "lag_over_limit": sum(1 for value in lags_us if value > _LAG_LIMIT_MS * 1000),
        "cores": cores,
        "errors": dict(errors),
        "elapsed_s": time.perf_counter() - began,
    }
