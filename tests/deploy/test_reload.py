"""Reload without restart: the callers file, the schemas folder and the OpenRouter key file are
reloaded when they change and on SIGHUP; a bad file keeps the running configuration.

Through a real gateway (in-process, watching its files every few milliseconds) and a real
``python -m service`` process sent SIGHUP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc
from pydantic import SecretStr

from service.callers_file import load_callers
from service.simulator import SimulatorConfig, run_simulator
from tests.api.support import PYTHON, ROOT, service_env
from tests.harness import Harness, auth, rich_error, serve_gateway, start_gateway, user
from tests.telemetry.support import Captured, key, sums

OLD_KEY = "caller-key-OLD-0001"
NEW_KEY = "caller-key-NEW-0002"
GAMMA_KEY = "caller-key-GAMMA-0003"
SCHEMAS = ROOT / "schemas"
WATCH_S = 0.02


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _callers(*entries: tuple[str, list[str]]) -> str:
    lines = []
    for caller_id, keys in entries:
        hashes = ", ".join(f'"{_digest(k)}"' for k in keys)
        lines += ["[[callers]]", f'id = "{caller_id}"', f"key_sha256 = [{hashes}]", ""]
    return "\n".join(lines)


def _replace(path: Path, text: str) -> None:
    """Write a new version the way a careful operator (or Kubernetes) does: whole, renamed."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


if TYPE_CHECKING:
    # The async stub type exists in the type stubs only.
    Stub = pb_grpc.CompletionServiceAsyncStub


async def _complete(gw: Harness | Stub, secret: str) -> grpc.StatusCode:
    stub = gw.stub if isinstance(gw, Harness) else gw
    try:
        await stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth(secret))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _reloads(callers_ok: int = 0, callers_failed: int = 0) -> dict[object, float]:
    """The reload counter's series: every source and outcome from zero on."""
    counts = {("callers", "ok"): callers_ok, ("callers", "failed"): callers_failed}
    return {
        key(**{"llmgateway.config.source": source, "llmgateway.outcome": outcome}): counts.get(
            (source, outcome), 0
        )
        for source in ("callers", "schemas")
        for outcome in ("ok", "failed")
    }


@asynccontextmanager
async def _watched_gateway(
    tmp_path: Path, otel: Captured | None = None
) -> AsyncIterator[tuple[Harness, Path, Path]]:
    callers = tmp_path / "callers.toml"
    callers.write_text(_callers(("alpha", [OLD_KEY])))
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    async with start_gateway(
        callers=load_callers(callers),
        gateway={
            "callers_file": callers,
            "schemas_dir": schemas,
            "reload_interval_s": WATCH_S,
        },
        telemetry=otel.telemetry if otel is not None else None,
    ) as gw:
        yield gw, callers, schemas


async def test_a_key_rotates_and_a_caller_is_added_without_a_restart(tmp_path: Path) -> None:
    otel = Captured.create()
    try:
        async with _watched_gateway(tmp_path, otel) as (gw, callers, _):
            reloader = gw.server.reloader
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.OK
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.UNAUTHENTICATED

            # Step 1 of a rotation: the caller holds both keys.
            _replace(callers, _callers(("alpha", [OLD_KEY, NEW_KEY])))
            [outcome] = await reloader.wait_for(1)
            assert (outcome.source, outcome.ok) == ("callers", True)
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.OK
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.OK

            # Step 2: the old key is retired, and a new caller arrives.
            _replace(callers, _callers(("alpha", [NEW_KEY]), ("gamma", [GAMMA_KEY])))
            await reloader.wait_for(2)
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.UNAUTHENTICATED
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.OK
            assert await _complete(gw, GAMMA_KEY) is grpc.StatusCode.OK
            rows = [record.caller_id for record, _ in await gw.wait_finished(7)]
            assert rows[-2:] == ["alpha", "gamma"]
            assert sums(otel, "llmgateway.config.reloads") == _reloads(callers_ok=2)
    finally:
        otel.shutdown()


@pytest.mark.parametrize(
    "broken",
    [
        "[[callers]\nid = 'x'",  # not TOML
        '[[callers]]\nid = "alpha"\nkey_sha256 = "not-a-hash"\n',
        '[[callers]]\nid = "a"\nkey_sha256 = "{h}"\n[[callers]]\nid = "b"\nkey_sha256 = "{h}"\n',
        "",  # no callers at all
    ],
    ids=["not-toml", "bad-hash", "shared-key", "empty"],
)
async def test_a_bad_callers_file_keeps_the_running_callers(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    otel = Captured.create()
    try:
        async with _watched_gateway(tmp_path, otel) as (gw, callers, _):
            caplog.set_level(logging.INFO, logger="service.reload")
            _replace(callers, broken.replace("{h}", _digest(NEW_KEY)))
            [outcome] = await gw.server.reloader.wait_for(1)
            assert not outcome.ok
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.OK
            lines = [r.getMessage() for r in caplog.records if r.name == "service.reload"]
            assert len(lines) == 1, lines
            assert lines[0].startswith(
                "reload of callers failed, keeping the running configuration: "
            )
            assert str(callers) in lines[0]
            assert sums(otel, "llmgateway.config.reloads") == _reloads(callers_failed=1)
            # Fixing the file is picked up again.
            _replace(callers, _callers(("alpha", [NEW_KEY])))
            [_, fixed] = await gw.server.reloader.wait_for(2)
            assert fixed.ok
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.OK
    finally:
        otel.shutdown()


async def test_schemas_reload_and_a_bad_schema_keeps_the_old_set(tmp_path: Path) -> None:
    async with _watched_gateway(tmp_path) as (gw, _, schemas):
        request = pb.CompleteStructuredRequest(
            schema_name="ticket_v1", messages=[user("File a ticket")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await gw.stub.CompleteStructured(request, metadata=auth(OLD_KEY))
        assert rich_error(unknown.value).info.reason == "UNKNOWN_SCHEMA"

        ticket = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
            "additionalProperties": False,
        }
        _replace(schemas / "ticket_v1.json", json.dumps(ticket))
        [outcome] = await gw.server.reloader.wait_for(1)
        assert (outcome.source, outcome.ok) == ("schemas", True)
        reply = await gw.stub.CompleteStructured(request, metadata=auth(OLD_KEY))
        assert set(json.loads(reply.json)) == {"title"}

        _replace(schemas / "broken_v1.json", "{ not json")
        [_, failed] = await gw.server.reloader.wait_for(2)
        assert not failed.ok
        assert "broken_v1.json" in failed.detail
        reply = await gw.stub.CompleteStructured(request, metadata=auth(OLD_KEY))
        assert set(json.loads(reply.json)) == {"title"}


async def test_the_openrouter_key_file_is_reread_for_new_requests(tmp_path: Path) -> None:
    key_file = tmp_path / "openrouter-key"
    key_file.write_text("sk-or-v1-first-key\n")
    # The upstream knows only the rotated key: the first one is already revoked there.
    async with (
        run_simulator(SimulatorConfig(expected_api_key="sk-or-v1-rotated-key")) as sim,
        serve_gateway(
            sim,
            openrouter={"api_key": None, "api_key_file": key_file, "max_retries": 0},
            gateway={"reload_interval_s": WATCH_S},
        ) as gw,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        assert rich_error(refused.value).info.reason == "UPSTREAM_AUTH_FAILED"

        _replace(key_file, "sk-or-v1-rotated-key\n")
        [outcome] = await gw.server.reloader.wait_for(1)
        assert (outcome.source, outcome.ok) == ("openrouter_key", True)
        assert "rotated" not in outcome.detail
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        assert reply.content

        _replace(key_file, "")
        [_, empty] = await gw.server.reloader.wait_for(2)
        assert not empty.ok
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        assert reply.content


async def test_sighup_reloads_a_running_process(tmp_path: Path) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(_callers(("alpha", [OLD_KEY])))
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        cwd=ROOT,
        env=service_env(
            GATEWAY_CALLERS_FILE=str(callers),
            GATEWAY_RELOAD_INTERVAL_S="0",  # only SIGHUP reloads
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr

    async def line_containing(text: str) -> str:
        async with asyncio.timeout(20):
            while True:
                line = (await stderr.readline()).decode()
                assert line, f"exited while waiting for {text!r}"
                if text in line:
                    return line

    try:
        found = re.search(r"serving on (\S+)", await line_containing("serving on"))
        assert found is not None
        async with grpc.aio.insecure_channel(found.group(1)) as channel:
            gw: Stub = pb_grpc.CompletionServiceStub(channel)
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.OK

            _replace(callers, _callers(("alpha", [NEW_KEY])))
            # Not watched (interval 0): nothing changes until the signal.
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.UNAUTHENTICATED
            process.send_signal(signal.SIGHUP)
            logged = json.loads(await line_containing("reloaded callers"))
            assert logged["level"] == "INFO"
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.OK
            assert await _complete(gw, OLD_KEY) is grpc.StatusCode.UNAUTHENTICATED

            _replace(callers, "[[callers]\n")
            process.send_signal(signal.SIGHUP)
            failed = json.loads(await line_containing("reload of callers failed"))
            assert failed["level"] == "ERROR"
            assert await _complete(gw, NEW_KEY) is grpc.StatusCode.OK

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = (await stderr.read()).decode()
            assert await process.wait() == 0
        assert "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_single_key_hash_stays_valid_and_several_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(
        f'[[callers]]\nid = "one"\nkey_sha256 = "{_digest(OLD_KEY)}"\n'
        f'[[callers]]\nid = "two"\nkey_sha256 = ["{_digest(NEW_KEY)}", "{_digest(GAMMA_KEY)}"]\n'
    )
    one, two = load_callers(path)
    assert one.key_digests == (bytes.fromhex(_digest(OLD_KEY)),)
    assert two.key_digests == tuple(bytes.fromhex(_digest(k)) for k in (NEW_KEY, GAMMA_KEY))
    assert SecretStr(OLD_KEY).get_secret_value() not in repr(one)
