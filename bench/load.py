"""The load generator, a process of its own: runs jobs read as JSON lines on stdin.

Each job's result is one JSON line on stdout. gRPC targets are driven with grpc.aio on
pre-serialised request bytes (no protobuf work in the generator), spread over several
channels; the direct baseline with one aiohttp session. Closed loop: ``concurrency`` workers
each send their next request when the previous one ends; calls that end between the warm-up's
end and the job's end are counted and timed.

Run by ``python -m bench``; by hand: ``echo '{"kind": "unary", ...}' | python -m bench.load``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import orjson
from llmgateway.v1 import completion_service_pb2 as pb

from bench.live import LIVE_PACE_MS, run_live

COMPLETE = "/llmgateway.v1.CompletionService/Complete"
STREAM = "/llmgateway.v1.CompletionService/StreamComplete"
# Tags of StreamCompleteResponse's oneof in the wire format: start = 1, delta = 2, end = 3.
_DELTA_TAG = 0x12
_END_TAG = 0x1A
_CALL_TIMEOUT_S = 30.0
_ERROR_PAUSE_S = 0.01
# Extra time after a job's planned end for in-flight calls before the job is abandoned.
_DRAIN_S = 35.0


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement: a target, a kind of call, a concurrency and a time window."""

    kind: str  # "unary", "stream", "hold" or "live"
    protocol: str  # "grpc" (gateway, floor) or "http" (direct to the simulator)
    address: str  # host:port for gRPC, the base URL (…/api/v1) for HTTP
    concurrency: int
    warmup_s: float = 0.5
    duration_s: float = 2.0
    callers_per_channel: int = 16
    client: str = "aio"  # "aio" or "sync" (one thread per caller), for gRPC
    prompt: str = "Say hello to the benchmark."
    model: str = "openrouter/sim-fast"
    caller_key: str = ""
    upstream_key: str = ""
    grpc_options: Sequence[tuple[str, Any]] = ()
    # hold: keep `concurrency` streams open, sample the RSS of `rss_pids` meanwhile (the
    # largest process: a worker, when the server is a supervisor of several).
    rss_pids: Sequence[int] = ()
    hold_sample_s: float = 1.0
    hold_timeout_s: float = 60.0
    # live (bench/live.py): answers of `live_tokens` tokens, one SSE event each, paced.
    live_tokens: int = 400
    live_pace_ms: float = LIVE_PACE_MS
    live_jitter_ms: float = 10.0
    ramp_s: float = 1.0
    watch_pids: Mapping[str, Sequence[int]] = field(default_factory=dict)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Job:
        raw = dict(raw)
        raw["grpc_options"] = tuple(tuple(pair) for pair in raw.get("grpc_options", ()))
        raw["watch_pids"] = {name: tuple(pids) for name, pids in raw.get("watch_pids", {}).items()}
        raw["rss_pids"] = tuple(raw.get("rss_pids", ()))
        return Job(**raw)


@dataclass(slots=True)
class Tally:
    """What the workers of one job saw."""

    measure_from: float
    measure_to: float
    latencies_us: list[float] = field(default_factory=list)
    ttft_us: list[float] = field(default_factory=list)
    completed: int = 0  # requests or streams that ended in the window
    completed_total: int = 0  # including the warm-up
    chunks: int = 0  # tokens received in the window (a delta may carry several)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, started: float, ended: float, ttft: float | None = None) -> None:
        # Every call that ends in the window counts, also one that began in the warm-up:
        # at high concurrency a call can take longer than a short window.
        self.completed_total += 1
        if self.measure_from <= ended <= self.measure_to:
            self.completed += 1
            self.latencies_us.append(round((ended - started) * 1e6, 1))
            if ttft is not None:
                self.ttft_us.append(round((ttft - started) * 1e6, 1))


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def delta_tokens(message: bytes, first: bool) -> int:
    """Tokens in a serialised ``StreamCompleteResponse`` delta from the fast simulator, whose
    tokens are words, each after the first with a leading space: the spaces in the delta's
    ``content`` (field 1 of the delta, field 2 of the response), plus the first word."""
    _, at = _varint(message, 1)  # the delta's length
    if at >= len(message) or message[at] != 0x0A:
        return 0  # no content (a reasoning or tool-call delta)
    length, at = _varint(message, at + 1)
    return message.count(b" ", at, at + length) + (1 if first else 0)


def _request_bytes(job: Job, stream: bool) -> bytes:
    message = pb.Message(role=pb.ROLE_USER, content=job.prompt)
    if stream:
        return pb.StreamCompleteRequest(model=job.model, messages=[message]).SerializeToString()
    return pb.CompleteRequest(model=job.model, messages=[message]).SerializeToString()


def _http_body(job: Job, stream: bool) -> bytes:
    # What the gateway sends upstream for the same request (service/upstream/wire.py).
    return orjson.dumps(
        {
            "model": job.model,
            "messages": [{"role": "user", "content": job.prompt}],
            "stream": stream,
            "max_tokens": 1024,
            "user": "llmgw-0123456789abcdef0123456789abcdef",
        }
    )


def _http_headers(job: Job, stream: bool) -> dict[str, str]:
    return {
        "Accept": "text/event-stream" if stream else "application/json",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {job.upstream_key}",
        "X-OpenRouter-Title": "LLM Gateway",
        "X-Title": "LLM Gateway",
    }


def _channels(job: Job, count: int) -> list[grpc.aio.Channel]:
    # A local subchannel pool and a distinct argument give each channel its own connection.
    return [
        grpc.aio.insecure_channel(
            job.address,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("bench.channel", index),
                *job.grpc_options,
            ],
        )
        for index in range(count)
    ]


def _channel_count(job: Job) -> int:
    return max(1, math.ceil(job.concurrency / max(1, job.callers_per_channel)))


async def _run_workers(
    job: Job, tally: Tally, make_worker: Callable[[int], Awaitable[None]]
) -> None:
    workers = [asyncio.ensure_future(make_worker(index)) for index in range(job.concurrency)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*workers), timeout=job.warmup_s + job.duration_s + _DRAIN_S
        )
    except TimeoutError:
        tally.errors["JOB_TIMEOUT"] += 1
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _grpc_unary(job: Job, tally: Tally) -> None:
    request = _request_bytes(job, stream=False)
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    channels = _channels(job, _channel_count(job))
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        channel.unary_unary(COMPLETE) for channel in channels
    ]
    end = tally.measure_to
    clock = time.perf_counter

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while (started := clock()) < end:
            try:
                await call(request, metadata=metadata, timeout=_CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                tally.errors[exc.code().name] += 1
                await asyncio.sleep(_ERROR_PAUSE_S)
                continue
            tally.record(started, clock())

    try:
        await _run_workers(job, tally, worker)
    finally:
        for channel in channels:
            await channel.close()


async def _grpc_stream(job: Job, tally: Tally) -> None:
    request = _request_bytes(job, stream=True)
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    channels = _channels(job, _channel_count(job))
    calls: list[grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = [
        channel.unary_stream(STREAM) for channel in channels
    ]
    measure_from, end = tally.measure_from, tally.measure_to
    clock = time.perf_counter

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while (started := clock()) < end:
            first: float | None = None
            complete = False
            try:
                async for message in call(request, metadata=metadata, timeout=_CALL_TIMEOUT_S):
                    tag = message[0]
                    if tag == _DELTA_TAG:
                        now = clock()
                        if measure_from <= now <= end:
                            tally.chunks += delta_tokens(message, first is None)
                        if first is None:
                            first = now
                    elif tag == _END_TAG:
                        complete = True
            except grpc.aio.AioRpcError as exc:
                tally.errors[exc.code().name] += 1
                await asyncio.sleep(_ERROR_PAUSE_S)
                continue
            if not complete or first is None:
                tally.errors["INCOMPLETE_STREAM"] += 1
                continue
            tally.record(started, clock(), first)

    try:
        await _run_workers(job, tally, worker)
    finally:
        for channel in channels:
            await channel.close()


def _content_chunks(frame: bytes) -> int:
    # The simulator's content deltas carry "content":"<piece>"; role, finish and usage chunks
    # carry "content":"".
    return 1 if b'"content":"' in frame and b'"content":""' not in frame else 0


async def _http(job: Job, tally: Tally, *, stream: bool) -> None:
    url = job.address.rstrip("/") + "/chat/completions"
    body = _http_body(job, stream)
    headers = _http_headers(job, stream)
    connector = aiohttp.TCPConnector(limit=job.concurrency, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=_CALL_TIMEOUT_S)
    measure_from, end = tally.measure_from, tally.measure_to
    clock = time.perf_counter

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(_: int) -> None:
            while (started := clock()) < end:
                first: float | None = None
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        if response.status != 200:
                            await response.read()
                            tally.errors[f"HTTP_{response.status}"] += 1
                            await asyncio.sleep(_ERROR_PAUSE_S)
                            continue
                        if not stream:
                            await response.read()
                        else:
                            pending = b""
                            async for chunk in response.content.iter_any():
                                frames = (pending + chunk).split(b"\n\n")
                                pending = frames.pop()
                                found = sum(_content_chunks(frame) for frame in frames)
                                if found:
                                    now = clock()
                                    if first is None:
                                        first = now
                                    if measure_from <= now <= end:
                                        tally.chunks += found
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.errors[type(exc).__name__] += 1
                    await asyncio.sleep(_ERROR_PAUSE_S)
                    continue
                tally.record(started, clock(), first)

        await _run_workers(job, tally, worker)


def _sync_channels(job: Job) -> list[grpc.Channel]:
    """The synchronous API's channels, each its own connection (own subchannel pool)."""
    return [
        grpc.insecure_channel(
            job.address, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
        )
        for i in range(_channel_count(job))
    ]


def _run_threads(job: Job, worker: Callable[[int], None], channels: Sequence[grpc.Channel]) -> None:
    """One thread per caller until the job's window is over, then close the channels."""
    import threading

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(job.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=job.warmup_s + job.duration_s + _DRAIN_S)
    for channel in channels:
        channel.close()


def _grpc_unary_sync(job: Job, tally: Tally) -> None:
    """The synchronous API, one thread per caller: to compare the generator's cost."""
    import threading

    request = _request_bytes(job, stream=False)
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    channels = _sync_channels(job)
    calls: list[grpc.UnaryUnaryMultiCallable[bytes, bytes]] = [
        channel.unary_unary(COMPLETE) for channel in channels
    ]
    lock = threading.Lock()
    end = tally.measure_to
    clock = time.perf_counter

    def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while (started := clock()) < end:
            try:
                call(request, metadata=metadata, timeout=_CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                with lock:
                    tally.errors[exc.code().name] += 1
                time.sleep(_ERROR_PAUSE_S)
                continue
            ended = clock()
            with lock:
                tally.record(started, ended)

    _run_threads(job, worker, channels)


def _grpc_stream_sync(job: Job, tally: Tally) -> None:
    """Streams with the synchronous API, one thread per caller."""
    import threading

    request = _request_bytes(job, stream=True)
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    channels = _sync_channels(job)
    calls: list[grpc.UnaryStreamMultiCallable[bytes, bytes]] = [
        channel.unary_stream(STREAM) for channel in channels
    ]
    lock = threading.Lock()
    measure_from, end = tally.measure_from, tally.measure_to
    clock = time.perf_counter

    def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while (started := clock()) < end:
            first: float | None = None
            complete = False
            chunks = 0
            try:
                for message in call(request, metadata=metadata, timeout=_CALL_TIMEOUT_S):
                    tag = message[0]
                    if tag == _DELTA_TAG:
                        now = clock()
                        if measure_from <= now <= end:
                            chunks += delta_tokens(message, first is None)
                        if first is None:
                            first = now
                    elif tag == _END_TAG:
                        complete = True
            except grpc.RpcError as exc:
                with lock:
                    tally.errors[exc.code().name] += 1
                time.sleep(_ERROR_PAUSE_S)
                continue
            ended = clock()
            with lock:
                tally.chunks += chunks
                if not complete or first is None:
                    tally.errors["INCOMPLETE_STREAM"] += 1
                else:
                    tally.record(started, ended, first)

    _run_threads(job, worker, channels)


def read_rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


async def _hold(job: Job) -> dict[str, Any]:
    """Open ``concurrency`` long streams, wait until each has relayed a delta, sample RSS."""
    request = _request_bytes(job, stream=True)
    metadata = (("authorization", f"Bearer {job.caller_key}"),)
    channels = _channels(job, _channel_count(job))
    calls: list[grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = [
        channel.unary_stream(STREAM) for channel in channels
    ]
    opened = 0
    all_open = asyncio.Event()
    errors: Counter[str] = Counter()
    active: list[grpc.aio.UnaryStreamCall[Any, Any]] = []

    settled = 0  # streams that relayed a delta, or ended before they could

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == job.concurrency:
            all_open.set()

    async def holder(index: int) -> None:
        nonlocal opened
        call = calls[index % len(calls)](request, metadata=metadata, timeout=job.hold_timeout_s)
        active.append(call)
        counted = False
        try:
            async for message in call:
                if message[0] == _DELTA_TAG and not counted:
                    counted = True
                    opened += 1
                    settle()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] += 1
        finally:
            if not counted:
                settle()

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(holder(i)) for i in range(job.concurrency)]
    samples: list[int] = []
    try:
        try:
            await asyncio.wait_for(all_open.wait(), timeout=job.hold_timeout_s / 2)
        except TimeoutError:
            errors["NOT_ALL_OPEN"] += 1
        open_s = time.perf_counter() - started
        still_open = sum(1 for task in tasks if not task.done())
        sample_end = time.perf_counter() + job.hold_sample_s
        while time.perf_counter() < sample_end:
            samples.append(max((read_rss_kb(pid) for pid in job.rss_pids), default=0))
            await asyncio.sleep(0.1)
        still_open = min(still_open, sum(1 for task in tasks if not task.done()))
    finally:
        for call in active:
            call.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        for channel in channels:
            await channel.close()
    return {
        "requested": job.concurrency,
        "reached_delta": opened,
        "open_during_sample": still_open,
        "open_s": open_s,
        "rss_kb_max": max(samples, default=0),
        "rss_kb_last": samples[-1] if samples else 0,
        "errors": dict(errors),
    }


async def _live(job: Job) -> dict[str, Any]:
    channels = _channels(job, _channel_count(job))
    try:
        return await run_live(job, channels)
    finally:
        for channel in channels:
            await channel.close()


async def run_job(job: Job) -> dict[str, Any]:
    if job.kind == "hold":
        return await _hold(job)
    if job.kind == "live":
        return await _live(job)
    now = time.perf_counter()
    tally = Tally(measure_from=now + job.warmup_s, measure_to=now + job.warmup_s + job.duration_s)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    if job.protocol == "http":
        await _http(job, tally, stream=job.kind == "stream")
    elif job.kind == "stream" and job.client == "sync":
        await asyncio.to_thread(_grpc_stream_sync, job, tally)
    elif job.kind == "stream":
        await _grpc_stream(job, tally)
    elif job.client == "sync":
        await asyncio.to_thread(_grpc_unary_sync, job, tally)
    else:
        await _grpc_unary(job, tally)
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return {
        "window_s": job.duration_s,
        "completed": tally.completed,
        "completed_total": tally.completed_total,
        "chunks": tally.chunks,
        "latencies_us": tally.latencies_us,
        "ttft_us": tally.ttft_us,
        "errors": dict(tally.errors),
        "generator_cpu_s": cpu_s,
        "elapsed_s": time.perf_counter() - now,
    }


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        try:
            result = await run_job(Job.from_json(orjson.loads(line)))
        except Exception as exc:  # reported to the orchestrator, which fails the scenario
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
