"""``python -m service`` refuses a bad configuration with exit code 2 and one clear line.

Each case is a real process; they start together (one module fixture) because each spends
most of a second importing, and the suite runs on two cores.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.support import PYTHON, ROOT, Finished, service_env

UPSTREAM_KEY = "sk-or-v1-STARTUPSECRET-0123456789"


# The one line each case must print (a regex).
EXPECTED_LINE = {
    "base-url-not-a-url": r"configuration error: base_url: .+",
    "base-url-unreachable": r"configuration error: .*(OpenRouter|127\.0\.0\.1).*",
    "callers-file-missing": r"configuration error: cannot read callers file .*missing\.toml: .+",
    "unknown-default-model": (
        r"configuration error: OPENROUTER_DEFAULT_MODEL 'nobody/no-such-model' .+"
    ),
    "simulator-off-without-key": r"configuration error: OPENROUTER_API_KEY is not set.*",
    "listen-address-in-use": r"configuration error: .*127\.0\.0\.1:\d+.*",
}


def _environments(tmp: Path, closed_port: int, busy_port: int) -> dict[str, dict[str, str]]:
    callers = tmp / "callers.toml"
    digest = hashlib.sha256(b"a-caller-key").hexdigest()
    callers.write_text(f'[[callers]]\nid = "svc"\nkey_sha256 = "{digest}"\n')
    with_key = {
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "GATEWAY_CALLERS_FILE": str(callers),
        "OPENROUTER_MAX_RETRIES": "0",
    }
    return {
        "base-url-not-a-url": {"OPENROUTER_BASE_URL": "not a url"},
        "base-url-unreachable": {
            **with_key,
            "OPENROUTER_BASE_URL": f"http://127.0.0.1:{closed_port}/api/v1",
        },
        "callers-file-missing": {"GATEWAY_CALLERS_FILE": str(tmp / "missing.toml")},
        "unknown-default-model": {"OPENROUTER_DEFAULT_MODEL": "nobody/no-such-model"},
        "simulator-off-without-key": {"GATEWAY_SIMULATOR": "false"},
        "listen-address-in-use": {"GATEWAY_LISTEN": f"127.0.0.1:{busy_port}"},
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Finished]]:
    tmp = tmp_path_factory.mktemp("startup")
    with socket.socket() as closed, socket.socket() as busy:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        environments = _environments(tmp, closed.getsockname()[1], busy.getsockname()[1])
        results: dict[str, Finished] = {}
        running: dict[str, subprocess.Popen[str]] = {}
        pending = list(environments.items())
        # As many at once as there are cores: each spends about a second importing.
        while pending or running:
            while pending and len(running) < (os.cpu_count() or 1):
                name, env = pending.pop()
                running[name] = subprocess.Popen(
                    [PYTHON, "-m", "service"],
                    cwd=ROOT,
                    env=service_env(**env),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            name, process = next(iter(running.items()))
            try:
                out, err = process.communicate(timeout=30)
            finally:
                process.kill()
            results[name] = Finished(process.returncode, out, err)
            del running[name]
        yield results


@pytest.mark.parametrize(
    "name",
    [
        "base-url-not-a-url",
        "base-url-unreachable",
        "callers-file-missing",
        "unknown-default-model",
        "simulator-off-without-key",
        "listen-address-in-use",
    ],
)
def test_a_bad_configuration_exits_2_with_one_clear_line(
    outcomes: dict[str, Finished], name: str
) -> None:
    outcome = outcomes[name]
    lines = outcome.stderr.splitlines()
    assert outcome.returncode == 2, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr
    assert UPSTREAM_KEY not in outcome.stderr
    assert len(lines) == 1, lines
    assert re.fullmatch(EXPECTED_LINE[name], lines[0]), lines[0]
    assert outcome.stdout == ""
