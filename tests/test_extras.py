"""asyncpg and redis are extras: nothing imports them unless their store is configured, and a
configured store whose package is missing stops start-up with one clear line, not a traceback.

Each case is a real ``python -m service`` with a sitecustomize that makes the package
unimportable, as in an installation without the extra.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.api.support import PYTHON, ROOT, service_env

_HIDE = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("asyncpg", "redis"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""

CASES = {
    "postgres": (
        {"GATEWAY_LEDGER_DSN": "postgresql://gw:DSNSECRET@127.0.0.1:1/x"},
        r"configuration error: the PostgreSQL ledger \(GATEWAY_LEDGER_DSN\) needs the asyncpg "
        r"package, which is not installed \(install the 'postgres' extra: "
        r"pip install 'llm-gateway\[postgres\]'\)",
    ),
    "redis": (
        {"GATEWAY_REDIS_URL": "redis://:REDISSECRET@127.0.0.1:1/0"},
        r"configuration error: the Redis quota store \(GATEWAY_REDIS_URL\) needs the redis "
        r"package, which is not installed \(install the 'redis' extra: "
        r"pip install 'llm-gateway\[redis\]'\)",
    ),
}


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("no-extras")
    (directory / "sitecustomize.py").write_text(_HIDE)
    return directory


@pytest.fixture(scope="module")
def outcomes(hidden: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    running = {
        name: subprocess.Popen(
            [PYTHON, "-m", "service"],
            cwd=ROOT,
            env={**service_env(), "PYTHONPATH": str(hidden), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (env, _) in CASES.items()
    }
    done = {}
    for name, process in running.items():
        try:
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_configured_store_without_its_extra_is_one_clear_line(
    outcomes: dict[str, subprocess.CompletedProcess[str]], name: str
) -> None:
    outcome = outcomes[name]
    assert outcome.returncode == 2, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr
    assert "DSNSECRET" not in outcome.stderr
    assert "REDISSECRET" not in outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(CASES[name][1], lines[0]), lines[0]


def test_nothing_imports_the_extras_unless_configured(hidden: Path) -> None:
    check = (
        "import sys, service.__main__, service.server, service.ledger, service.quotas\n"
        "from service.ledger import open_ledger\n"
        "from service.quotas import open_quota_store\n"
        "open_quota_store(None)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'redis'))\n"
        "assert not loaded, loaded\n"
    )
    # With the packages hidden, the import would fail loudly if anything reached for them.
    result = subprocess.run(
        [PYTHON, "-c", check],
        cwd=ROOT,
        env=service_env(PYTHONPATH=str(hidden)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
