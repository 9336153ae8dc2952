"""800 unauthenticated 7.9 MB requests grow the gateway's RSS by less than 300 MB.

Before, each refused call's request stayed alive in a reference cycle until the collector
ran (~950 calls later with ``GATEWAY_GC_THRESHOLD=50000``): RSS went from 96 MB to 6.2 GB.
``make test`` sends 100 of them; the full 800 run under ``-m slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.api.support import PYTHON, ROOT, service_env
from tests.servers import free_port

SIZE = 7_900_000
CONCURRENCY = 8
BUDGET = 300 * 1024 * 1024


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    port = free_port()
    env = service_env(GATEWAY_LISTEN=f"127.0.0.1:{port}")
    with (tmp_path / "gateway.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "service", cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        yield process.pid, f"127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


def complete_bytes(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """Complete, its request sent as the bytes given."""
    return channel.unary_unary(
        "/llmgateway.v1.CompletionService/Complete",
        request_serializer=bytes,
        response_deserializer=bytes,
    )


async def peak_growth(tmp_path: Path, requests: int) -> int:
    """Send ``requests`` bad-key 7.9 MB calls, CONCURRENCY at a time; the RSS growth seen."""
    payload = b"\x0a" + b"x" * SIZE  # never parsed: the caller is refused first
    async with gateway(tmp_path) as (pid, address):
        channels = [grpc.aio.insecure_channel(address) for _ in range(CONCURRENCY)]
        try:
            for channel in channels:
                await asyncio.wait_for(channel.channel_ready(), 20)
            calls = [complete_bytes(ch) for ch in channels]
            metadata = (("authorization", "Bearer not-a-known-key"),)

            async def one(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(payload, metadata=metadata)
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

            await asyncio.gather(*(one(call) for call in calls))  # warm-up: buffers sized
            baseline = rss(pid)
            peak = baseline
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss(pid))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.02)

            async def caller(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
                for _ in range(requests // CONCURRENCY):
                    await one(call)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(caller(call) for call in calls))
            done.set()
            await sampler
            return max(peak, rss(pid)) - baseline
        finally:
            for channel in channels:
                await channel.close()


async def test_100_unauthenticated_large_requests_leave_rss_bounded(tmp_path: Path) -> None:
    grown = await peak_growth(tmp_path, 100)
    assert grown < BUDGET, f"RSS grew {grown / 2**20:.0f} MB"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_800_unauthenticated_large_requests_leave_rss_bounded(tmp_path: Path) -> None:
    grown = await peak_growth(tmp_path, 800)
    assert grown < BUDGET, f"RSS grew {grown / 2**20:.0f} MB"
