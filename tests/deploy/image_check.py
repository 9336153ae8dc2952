"""``make image-check``: the built image, run as a container, serves, answers and drains.

Not part of ``make test`` (it needs a built image): ``scripts/image-check.sh`` builds the
Dockerfile with buildah and runs ``pytest tests/deploy/image_check.py`` with ``IMAGE`` set. The
image's own entrypoint runs under ``buildah run --isolation chroot`` (``podman run`` cannot set
rlimits in this sandbox), on the host's network, in demo mode switched on explicitly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import health_check
from tests.deploy.drain import SERVING, drain_with_a_stream_in_flight, serving_process
from tests.harness import auth, user
from tests.servers import free_port

IMAGE = os.environ.get("IMAGE", "localhost/llm-gateway:check")
DRAIN_DELAY_S = 1.0


def _buildah(*args: str, timeout: float = 120) -> str:
    binary = shutil.which("buildah")
    if binary is None:
        pytest.fail("buildah is missing: run scripts/image-check.sh")
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The image's Docker configuration (entrypoint, user, healthcheck, environment)."""
    inspected = json.loads(_buildah("inspect", "--type", "image", IMAGE))
    docker: dict[str, Any] = inspected["Docker"]["config"]
    return docker


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    name = _buildah("from", "--pull=never", IMAGE).strip()
    try:
        yield name
    finally:
        _buildah("rm", name)


def test_the_image_keeps_its_healthcheck_and_runs_as_non_root(config: dict[str, Any]) -> None:
    # OCI-format images drop HEALTHCHECK: the build must use --format docker.
    assert config["Healthcheck"]["Test"][:1] == ["CMD"]
    user = str(config["User"]).split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert config["Entrypoint"] == ["python", "-m", "service"]


def test_the_image_holds_the_exporters_and_the_fleet_stores(container: str) -> None:
    modules = (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.prometheus",
        "prometheus_client",
        "redis",
        "asyncpg",
        "llmgateway.v1.completion_service_pb2",
    )
    script = f"import {', '.join(modules)}; import os; print(os.getuid())"
    uid = _buildah("run", "--isolation", "chroot", container, "--", "python", "-c", script)
    assert uid.strip() != "0"


def test_without_a_key_or_demo_mode_the_image_refuses_to_start(container: str) -> None:
    binary = shutil.which("buildah")
    assert binary is not None
    result = subprocess.run(
        [binary, "run", "--isolation", "chroot", "--network", "host", container, "--",
         "python", "-m", "service"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "configuration error: OPENROUTER_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


@dataclass
class Running:
    process: asyncio.subprocess.Process
    address: str
    metrics_port: int

    def gateway_pid(self) -> int:
        """The gateway's own process: buildah runs it a few processes down."""
        children = {self.process.pid}
        found: int | None = None
        for _ in range(8):
            nxt: set[int] = set()
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) in children:
                    pid = int(stat.parent.name)
                    nxt.add(pid)
                    cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
                    if cmdline[:3] == [b"/opt/venv/bin/python", b"-m", b"service"]:
                        found = pid
            if found is not None:
                return found
            children = nxt
        raise AssertionError("the gateway's process was not found under buildah run")


@pytest.fixture
async def running(container: str, config: dict[str, Any]) -> AsyncIterator[Running]:
    port, metrics_port = free_port(), free_port()
    env = {
        "GATEWAY_SIMULATOR": "true",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_PROMETHEUS_PORT": str(metrics_port),
        "GATEWAY_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
        "GATEWAY_SHUTDOWN_GRACE_S": "10",
    }
    args = ["run", "--isolation", "chroot", "--network", "host"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    async with serving_process("buildah", *args, container, "--", *config["Entrypoint"]) as (
        process,
        address,
    ):
        yield Running(process, address, metrics_port)


async def test_the_container_serves_answers_and_drains_on_sigterm(
    running: Running, container: str, config: dict[str, Any]
) -> None:
    started = time.monotonic()
    async with grpc.aio.insecure_channel(running.address) as channel:
        health = await health_check(channel)(health_pb2.HealthCheckRequest())
        assert health.status == SERVING
        # The image's own HEALTHCHECK command, run inside the container, agrees.
        probe = config["Healthcheck"]["Test"][1:]
        env = ["--env", f"GATEWAY_LISTEN={running.address}"]
        _buildah("run", "--isolation", "chroot", "--network", "host", *env, container, "--", *probe)

        stub = pb_grpc.CompletionServiceStub(channel)
        reply = await stub.Complete(
            pb.CompleteRequest(messages=[user("Hello")]), metadata=auth("demo-key")
        )
        assert reply.content
        assert reply.usage.completion_tokens > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{running.metrics_port}/metrics") as response,
        ):
            metrics = await response.text()
        assert "llmgateway_requests_total{" in metrics
        assert 'rpc_method="Complete"' in metrics

        # A stream in flight, then SIGTERM to the gateway's process.
        pid = running.gateway_pid()
        await drain_with_a_stream_in_flight(
            channel, lambda: os.kill(pid, signal.SIGTERM), key="demo-key", delay_s=DRAIN_DELAY_S
        )
    assert running.process.stderr is not None
    async with asyncio.timeout(30):
        tail = (await running.process.stderr.read()).decode()
        assert await running.process.wait() == 0
    assert "draining" in tail
    assert "Traceback" not in tail
    print(f"image-check: served, answered and drained in {time.monotonic() - started:.1f} s")
