"""SIGHUP reloads the callers file's policies in a running ``python -m service`` process: the
next call is judged by the new policy, and the new policy's id is logged.

(A changed file, and a bad policy on reload, are in test_policy_file.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.api.support import PYTHON, service_env
from tests.policy.support import as_caller, ask, callers, callers_file

ROOT = Path(__file__).resolve().parents[2]
BEFORE = {"svc": 'allowed_providers = ["azure"]'}
AFTER = {"svc": 'allowed_providers = ["openai"]'}


if TYPE_CHECKING:
    # The async stub type exists in the type stubs only.
    Stub = pb_grpc.CompletionServiceAsyncStub


async def outcome(stub: Stub, only: str) -> str:
    """Who served a call asking for ``only`` this provider, or the rule that refused it."""
    request = ask(provider=pb.ProviderPreferences(only=[only]))
    try:
        reply = await stub.Complete(request, metadata=as_caller("svc"))
    except grpc.aio.AioRpcError as exc:
        return "refused" if exc.code() is grpc.StatusCode.PERMISSION_DENIED else exc.code().name
    served: str = reply.provider
    return served


async def test_sighup_puts_a_changed_policy_in_force(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(callers_file(BEFORE))
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        cwd=ROOT,
        env=service_env(GATEWAY_CALLERS_FILE=str(path), GATEWAY_RELOAD_INTERVAL_S="0"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr

    async def lines_until(text: str) -> list[str]:
        """The log lines up to and including the first that contains ``text``."""
        lines = []
        async with asyncio.timeout(20):
            while True:
                line = (await stderr.readline()).decode()
                assert line, f"exited while waiting for {text!r}"
                lines.append(line)
                if text in line:
                    return lines

    try:
        found = re.search(r"serving on (\S+)", (await lines_until("serving on"))[-1])
        assert found is not None
        async with grpc.aio.insecure_channel(found.group(1)) as channel:
            stub: Stub = pb_grpc.CompletionServiceStub(channel)
            assert await outcome(stub, "azure") == "Azure"
            assert await outcome(stub, "openai") == "refused"

            staged = path.with_name("callers.toml.new")
            staged.write_text(callers_file(AFTER))
            staged.replace(path)
            # Not watched (interval 0): the running policy holds until the signal.
            assert await outcome(stub, "openai") == "refused"
            process.send_signal(signal.SIGHUP)
            lines = await lines_until("reloaded callers")
            reloaded = [json.loads(line) for line in lines if line.startswith("{")]
            [logged] = [line for line in reloaded if line["msg"] == "caller policy"]
            [after] = callers(AFTER)
            assert (logged["policy_id"], logged["callers"]) == (after.policy.id, ["svc"])
            assert await outcome(stub, "openai") == "OpenAI"
            assert await outcome(stub, "azure") == "refused"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = (await stderr.read()).decode()
            assert await process.wait() == 0
        assert "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
