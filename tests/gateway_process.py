"""``python -m service`` as a child process, for tests that kill, signal or fuzz a real gateway.

The child talks to a simulator the test runs (``OPENROUTER_BASE_URL``), reads its callers
from a TOML file written here, and is ready once its health service says SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from service.domain.callers import Caller
from service.server import SERVICE_NAME
from tests.harness import UPSTREAM_KEY
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def callers_toml(callers: Sequence[Caller]) -> str:
    """The callers file for ``callers`` (keys as their SHA-256, limits as TOML tables)."""
    lines: list[str] = []
    for caller in callers:
        models = ", ".join(f'"{m}"' for m in caller.allowed_models)
        lines += [
            "[[callers]]",
            f'id = "{caller.id}"',
            "key_sha256 = [" + ", ".join(f'"{d.hex()}"' for d in caller.key_digests) + "]",
            f"allowed_models = [{models}]",
        ]
        limits = caller.limits
        values: dict[str, int | Decimal | None] = {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "usd_per_day": limits.usd_per_day,
        }
        if any(v is not None for v in values.values()):
            lines.append("[callers.limits]")
            for name, value in values.items():
                if isinstance(value, Decimal):
                    lines.append(f'{name} = "{value}"')
                elif value is not None:
                    lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


@dataclass
class GatewayProcess:
    process: asyncio.subprocess.Process
    address: str
    log: Path
    ledger: Path

    def kill(self) -> None:
        """kill -9: no drain, no flush, nothing the process could still do."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def gateway_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: no inherited GATEWAY_*/OPENROUTER_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENROUTER_"))}
    env.update(overrides)
    return env


@asynccontextmanager
async def gateway_process(
    sim_base_url: str,
    callers: Sequence[Caller],
    *,
    env: Mapping[str, str] | None = None,
    startup_s: float = 30.0,
) -> AsyncIterator[GatewayProcess]:
    """A gateway child in front of the simulator at ``sim_base_url``; killed at exit if it
    still runs."""
    with tempfile.TemporaryDirectory(prefix="llmgw-child-") as tmp:
        root = Path(tmp)
        (root / "callers.toml").write_text(callers_toml(callers))
        port = free_port()
        ledger = root / "usage.sqlite3"
        settings = {
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_LEDGER_PATH": str(ledger),
            "GATEWAY_CALLERS_FILE": str(root / "callers.toml"),
            "OPENROUTER_API_KEY": UPSTREAM_KEY,
            "OPENROUTER_BASE_URL": sim_base_url,
            "OPENROUTER_DEFAULT_MODEL": "openai/gpt-4o-mini",
            **(env or {}),
        }
        log = root / "gateway.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                cwd=ROOT,
                env=gateway_env(settings),
                stdout=output,
                stderr=output,
            )
        child = GatewayProcess(process, f"127.0.0.1:{port}", log, ledger)
        try:
            await _wait_serving(child, startup_s)
            yield child
        finally:
            if process.returncode is None:
                child.kill()
                await process.wait()


async def _wait_serving(child: GatewayProcess, limit_s: float) -> None:
    async with grpc.aio.insecure_channel(child.address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        ready = asyncio.ensure_future(
            check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                wait_for_ready=True,
                timeout=limit_s,
            )
        )
        exited = asyncio.ensure_future(child.process.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise AssertionError(f"the gateway exited at start-up:\n{child.output()}")
        exited.cancel()
        health = ready.result()
        assert isinstance(health, health_pb2.HealthCheckResponse)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, child.output()
