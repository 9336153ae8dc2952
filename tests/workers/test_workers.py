"""``GATEWAY_WORKERS``: several server processes on one port, under one supervisor.

Real ``python -m service`` processes in front of the simulator, with a real Redis for the
shared quotas. The kernel spreads connections over the workers (``SO_REUSEPORT``), so a test
that must reach every worker opens many connections, and reads each worker's own metrics
endpoint (``GATEWAY_PROMETHEUS_PORT + i``) to prove it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc
from pydantic import SecretStr

from service.config import ConfigError, GatewaySettings
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.workers import check_settings, usable_cpus
from tests.api.support import ROOT, health_check, run_process, service_env
from tests.deploy.drain import rest_of
from tests.harness import UPSTREAM_KEY, auth, user
from tests.servers import free_port

KEY = "workers-key-0001"
NEW_KEY = "workers-key-0002"
WORKERS = 2
CONNECTIONS = 16
"""Fresh connections spread over 2 workers: all on one has odds of 2 in 65,536."""
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# gRPC shares one connection among channels to the same target unless told otherwise.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _connect(address: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own (so the kernel picks a worker for it)."""
    return grpc.aio.insecure_channel(address, options=OWN_CONNECTION)


def _callers(*keys: str) -> str:
    hashes = ", ".join(f'"{hashlib.sha256(k.encode()).hexdigest()}"' for k in keys)
    return f'[[callers]]\nid = "team"\nkey_sha256 = [{hashes}]\nallowed_models = ["*"]\n'


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    address: str
    metrics_ports: list[int]
    root: Path
    output: list[str]

    def workers(self) -> list[int]:
        """Pids of the supervisor's children."""
        return _children(self.process.pid)

    def metrics(self, index: int) -> str:
        url = f"http://127.0.0.1:{self.metrics_ports[index]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text: str = reply.read().decode()
        return text


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (each worker serves metrics on one)."""
    for _ in range(100):
        base = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid and stat[0] != "Z":
                    found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sample(text: str, name: str, *labels: str) -> float:
    """The sum of a metric's samples whose label text holds every one of ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _read_banner(process: asyncio.subprocess.Process, output: list[str]) -> str:
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, f"exited before serving: {''.join(output)}"
            output.append(line)
            found = re.search(r"serving on (\S+) \((\d+) workers\)", line)
            if found:
                assert int(found.group(2)) == WORKERS
                return found.group(1)


async def _pump(process: asyncio.subprocess.Process, output: list[str]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        output.append(line.decode())


@asynccontextmanager
async def serving(
    sim: RunningSimulator, redis_url: str, tmp_path: Path, **env: str
) -> AsyncIterator[Gateway]:
    (tmp_path / "callers.toml").write_text(_callers(KEY))
    metrics = _free_ports(WORKERS)
    settings: Mapping[str, str] = service_env(
        simulator=False,
        GATEWAY_WORKERS=str(WORKERS),
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_CALLERS_FILE=str(tmp_path / "callers.toml"),
        GATEWAY_LEDGER_PATH=str(tmp_path / "usage.sqlite3"),
        GATEWAY_PROMETHEUS_PORT=str(metrics),
        GATEWAY_RELOAD_INTERVAL_S="0",
        OPENROUTER_API_KEY=UPSTREAM_KEY,
        OPENROUTER_BASE_URL=sim.base_url,
        **env,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        cwd=ROOT,
        env=dict(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    output: list[str] = []
    pump: asyncio.Task[None] | None = None
    try:
        address = await _read_banner(process, output)
        pump = asyncio.create_task(_pump(process, output))
        yield Gateway(process, address, [metrics + i for i in range(WORKERS)], tmp_path, output)
    finally:
        workers = _children(process.pid)
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pump is not None:
            # Read what the processes wrote to the end (EOF once every writer has exited):
            # cancelled at once, the last lines (the survivor's "draining…") could be lost.
            try:
                async with asyncio.timeout(5):
                    await pump
            except TimeoutError:
                pump.cancel()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(SimulatorConfig(keepalive_comments=0)) as running:
        yield running


async def _complete_on_fresh_connections(address: str, key: str) -> list[grpc.StatusCode]:
    async def one() -> grpc.StatusCode:
        async with _connect(address) as channel:
            try:
                await pb_grpc.CompletionServiceStub(channel).Complete(
                    pb.CompleteRequest(messages=[user("Hi")]), metadata=auth(key)
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    return list(await asyncio.gather(*(one() for _ in range(CONNECTIONS))))


def _served(gateway: Gateway, index: int) -> float:
    return _sample(
        gateway.metrics(index), "rpc_server_call_duration", "_count", 'rpc_method="Complete"'
    )


# --- tests -------------------------------------------------------------------------------


async def test_several_workers_need_a_shared_quota_store(tmp_path: Path) -> None:
    (tmp_path / "callers.toml").write_text(_callers(KEY))
    ran = await run_process(
        sys.executable,
        "-m",
        "service",
        env=service_env(
            simulator=False,
            GATEWAY_WORKERS="2",
            GATEWAY_CALLERS_FILE=str(tmp_path / "callers.toml"),
            OPENROUTER_API_KEY=UPSTREAM_KEY,
        ),
    )
    assert ran.returncode == 2
    [line] = ran.stderr.strip().splitlines()
    assert "GATEWAY_WORKERS=2 needs a shared quota store (GATEWAY_REDIS_URL)" in line
    assert "multiply every limit by 2" in line


def test_auto_is_the_usable_cpus_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == len(os.sched_getaffinity(0))
    cpu_max.write_text("50000 100000\n")  # half a CPU: one worker
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("150000 100000\n")  # a limit of 1.5 CPUs: two workers, if there are two
    assert usable_cpus(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    assert usable_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))


async def test_workers_share_the_port_then_drain_together_on_sigterm(
    sim: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    env = {"GATEWAY_DRAIN_DELAY_S": "0.5", "GATEWAY_SHUTDOWN_GRACE_S": "20"}
    async with serving(sim, redis_url, tmp_path, **env) as gateway:
        assert len(gateway.workers()) == WORKERS
        codes = await _complete_on_fresh_connections(gateway.address, KEY)
        assert codes == [grpc.StatusCode.OK] * CONNECTIONS
        # Every worker took some of the connections.
        assert all(_served(gateway, i) >= 1 for i in range(WORKERS))
        assert sum(_served(gateway, i) for i in range(WORKERS)) == CONNECTIONS

        # Streams in flight on many connections (so on every worker), then SIGTERM.
        channels = [_connect(gateway.address) for _ in range(CONNECTIONS)]
        streams = [
            pb_grpc.CompletionServiceStub(channel).StreamComplete(
                pb.StreamCompleteRequest(messages=[user("Go [[sim:pace=40]] [[sim:tokens=30]]")]),
                metadata=auth(KEY),
            )
            for channel in channels
        ]
        for stream in streams:
            assert isinstance(await stream.read(), pb.StreamCompleteResponse)
        gateway.process.send_signal(signal.SIGTERM)
        # Health says NOT_SERVING on every connection, whichever worker it reached.
        for _ in range(CONNECTIONS):
            async with _connect(gateway.address) as probe:
                for _ in range(50):
                    health = await health_check(probe)(health_pb2.HealthCheckRequest())
                    if health.status == NOT_SERVING:
                        break
                    await asyncio.sleep(0.01)
                assert health.status == NOT_SERVING
        # Every stream in flight finishes with its end; then the supervisor exits 0.
        for stream in streams:
            rest = await rest_of(stream)
            assert await stream.code() is grpc.StatusCode.OK
            assert rest[-1].HasField("end")
        for channel in channels:
            await channel.close()
        async with asyncio.timeout(30):
            assert await gateway.process.wait() == 0
        assert not any(_alive(pid) for pid in gateway.workers())
    text = "".join(gateway.output)
    assert text.count("draining") == WORKERS
    # Both workers wrote the one SQLite ledger: a row for every call, none lost.
    import sqlite3

    with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
        rows = dict(db.execute("SELECT rpc, count(*) FROM usage_records GROUP BY rpc").fetchall())
    assert rows == {"Complete": CONNECTIONS, "StreamComplete": CONNECTIONS}


async def test_sighup_reloads_every_worker(
    sim: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    async with serving(sim, redis_url, tmp_path) as gateway:
        codes = await _complete_on_fresh_connections(gateway.address, NEW_KEY)
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
        staged = tmp_path / "callers.new"
        staged.write_text(_callers(KEY, NEW_KEY))
        os.replace(staged, tmp_path / "callers.toml")
        gateway.process.send_signal(signal.SIGHUP)

        def reloaded(index: int) -> float:
            return _sample(
                gateway.metrics(index),
                "llmgateway_config_reloads",
                'source="callers"',
                'outcome="ok"',
            )

        async with asyncio.timeout(20):
            while not all(reloaded(i) >= 1 for i in range(WORKERS)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        codes = await _complete_on_fresh_connections(gateway.address, NEW_KEY)
        assert codes == [grpc.StatusCode.OK] * CONNECTIONS


async def test_a_worker_that_dies_stops_the_whole_gateway(
    sim: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    async with serving(sim, redis_url, tmp_path) as gateway:
        victim, survivor = gateway.workers()
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await gateway.process.wait() == 1
        assert not _alive(survivor)
    text = "".join(gateway.output)
    assert re.search(r"worker \d \(pid \d+\) exited unexpectedly \(-9\); stopping", text), text
    assert "draining" in text  # the survivor drained, it was not killed


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    sim: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    async with serving(sim, redis_url, tmp_path) as gateway:
        workers = gateway.workers()
        gateway.process.send_signal(signal.SIGKILL)
        await gateway.process.wait()
        async with asyncio.timeout(30):
            while any(_alive(pid) for pid in workers):  # noqa: ASYNC110 - polling /proc
                await asyncio.sleep(0.05)


async def test_a_worker_that_cannot_start_stops_the_others_with_its_exit_code(
    sim: RunningSimulator, redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "callers.toml").write_text(_callers(KEY))
    ran = await run_process(
        sys.executable,
        "-m",
        "service",
        env=service_env(
            simulator=False,
            GATEWAY_WORKERS="2",
            GATEWAY_REDIS_URL=redis_url,
            GATEWAY_CALLERS_FILE=str(tmp_path / "callers.toml"),
            OPENROUTER_API_KEY=UPSTREAM_KEY,
            OPENROUTER_BASE_URL=sim.base_url,
            OPENROUTER_DEFAULT_MODEL="nobody/no-model",
        ),
        time_limit=60,
    )
    assert ran.returncode == 2
    assert "OPENROUTER_DEFAULT_MODEL 'nobody/no-model' is not in" in ran.stderr
    assert re.search(r"worker \d \(pid \d+\) exited while starting \(2\)", ran.stderr)
    assert "serving on" not in ran.stderr


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"listen": "unix:/tmp/gw.sock"}, "needs a TCP GATEWAY_LISTEN"),
        ({"simulator": True}, "not for demo mode"),
        ({"listen": "127.0.0.1:9000", "prometheus_port": 8999}, "GATEWAY_PROMETHEUS_PORT"),
        ({"prometheus_port": 65535}, "GATEWAY_PROMETHEUS_PORT"),
    ],
)
def test_what_several_workers_need_is_checked_up_front(
    changes: dict[str, object], says: str
) -> None:
    settings = GatewaySettings.model_validate(
        {"redis_url": SecretStr("redis://127.0.0.1:1/0"), **changes}
    )
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_settings(settings, 2)
    check_settings(GatewaySettings(redis_url=SecretStr("redis://127.0.0.1:1/0")), 2)
