"""The client package installed alone into a fresh virtual environment: none of the server's
dependencies, a sync and an asyncio example against a real gateway, and ``mypy --strict`` over
both examples with only the package's ``[typing]`` extra."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.support import ROOT, run_process
from tests.harness import ALPHA_KEY, start_gateway

CLIENT = ROOT / "clients" / "python"
EXAMPLES = CLIENT / "examples"
LOCK = ROOT / "requirements.lock"
# What the server needs and a caller must not get with the client.
SERVER_ONLY = ("aiohttp", "asyncpg", "redis", "pydantic", "opentelemetry", "orjson", "service")


@dataclass(frozen=True)
class FreshVenv:
    python: Path
    mypy: Path


def _run(*args: str | Path) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"


def _wheelhouse() -> Path:
    """Wheels of the client, its dependencies and the type checker, pinned by requirements.lock.

    Kept in build/ under a key of the inputs, so that later runs install without any index.
    """
    key = hashlib.sha256()
    for source in [LOCK, CLIENT / "pyproject.toml", *sorted((CLIENT / "src").rglob("*.py*"))]:
        key.update(source.read_bytes())
    house = ROOT / "build" / "wheelhouse" / key.hexdigest()[:16]
    if not (house / ".complete").exists():
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        _run(*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", house, CLIENT)
        _run(*pip, "wheel", "-c", LOCK, "-w", house, f"{CLIENT}[typing]", "mypy")
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    house = _wheelhouse()
    venv = tmp_path_factory.mktemp("client-venv")
    _run(sys.executable, "-m", "venv", venv)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "-q", "install"]
    _run(*pip, "--no-index", "--find-links", house, "llm-gateway-client[typing]", "mypy")
    return FreshVenv(python=venv / "bin" / "python", mypy=venv / "bin" / "mypy")


async def test_the_client_installs_without_any_of_the_server_dependencies(
    fresh_venv: FreshVenv,
) -> None:
    probe = (
        "import importlib.util, json, sys; "
        f"print(json.dumps([m for m in {list(SERVER_ONLY)!r} if importlib.util.find_spec(m)]))"
    )
    # -I: neither the working directory (the repository) nor PYTHON* variables on the path.
    ran = await run_process(str(fresh_venv.python), "-I", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == []
    # ...while the contract and the helpers are there, from the installed wheel.
    where = await run_process(
        str(fresh_venv.python),
        "-I",
        "-c",
        "import llmgateway.v1.completion_service_pb2_grpc as g, llmgateway.client as c; "
        "print(g.__file__); print(c.__file__)",
    )
    assert where.returncode == 0, where.stderr
    assert all("site-packages" in line for line in where.stdout.split())


async def test_the_sync_and_async_examples_run_against_a_real_gateway(
    fresh_venv: FreshVenv,
) -> None:
    async with start_gateway() as gw:
        target = f"dns:///{gw.server.address}"
        sync = await run_process(
            str(fresh_venv.python), str(EXAMPLES / "sync_example.py"), target, ALPHA_KEY
        )
        aio = await run_process(
            str(fresh_venv.python), str(EXAMPLES / "async_example.py"), target, ALPHA_KEY
        )
    assert sync.returncode == 0, sync.stderr
    assert aio.returncode == 0, aio.stderr
    s, a = json.loads(sync.stdout), json.loads(aio.stdout)

    assert s["complete"]["id"].startswith("gen-")
    assert s["complete"]["content"]
    assert s["complete"]["tokens"] > 0
    # The assembled stream is the same answer the unary call gave (the simulator is
    # deterministic for one prompt), closed by its end message.
    assert s["stream"]["content"] == s["complete"]["content"]
    assert s["stream"]["id"].startswith("gen-")
    assert s["stream"]["finish_reason"] == "FINISH_REASON_STOP"
    assert s["stream"]["tokens"] == s["complete"]["tokens"]
    assert s["failed"]["code"] == "INVALID_ARGUMENT"
    assert s["failed"]["reason"] == "INVALID_ARGUMENT"
    assert s["failed"]["fields"] == ["messages"]
    assert s["failed"]["request_id"]

    assert a["complete"]["content"] == s["complete"]["content"]
    assert a["stream"]["content"] == s["complete"]["content"]
    assert a["stream"]["pieces"] > 1
    assert a["failed"] == {"code": "INVALID_ARGUMENT", "reason": "INVALID_ARGUMENT"}


async def test_the_examples_pass_mypy_strict_with_only_the_client_installed(
    fresh_venv: FreshVenv, tmp_path: Path
) -> None:
    ran = await run_process(
        str(fresh_venv.mypy),
        "--strict",
        "--no-incremental",
        "--cache-dir",
        str(tmp_path / "mypy-cache"),
        "--config-file",
        "/dev/null",
        str(EXAMPLES / "sync_example.py"),
        str(EXAMPLES / "async_example.py"),
        time_limit=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Success: no issues found in 2 source files" in ran.stdout
