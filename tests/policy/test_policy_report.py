"""``python -m service.policy_report``: each caller's effective policy, printed by a real
process from a callers file, as the gateway would enforce it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.support import PYTHON, run_process, service_env
from tests.policy.support import callers, callers_file

DEFAULT = (
    'zdr = true\nallowed_plugins = ["file-parser"]\nmax_price = { prompt = "5", completion = "15" }'
)
POLICIES = {
    "research": 'allowed_plugins = ["web", "file-parser"]\nmax_price = { prompt = "1" }',
    "plain": "",
}


async def report(path: Path, *caller_ids: str) -> tuple[int, str, str]:
    finished = await run_process(
        PYTHON, "-m", "service.policy_report", str(path), *caller_ids, env=service_env()
    )
    return finished.returncode, finished.stdout, finished.stderr


def documents(stdout: str) -> list[dict[str, Any]]:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(stdout.rstrip()):
        document, at = decoder.raw_decode(stdout, at)
        found.append(document)
        while at < len(stdout) and stdout[at].isspace():
            at += 1
    return found


async def test_every_callers_effective_policy_and_where_each_rule_comes_from(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(callers_file(POLICIES, default=DEFAULT))
    returncode, stdout, stderr = await report(path)
    assert (returncode, stderr) == (0, "")
    research, plain = documents(stdout)
    parsed = {caller.id: caller.policy for caller in callers(POLICIES, default=DEFAULT)}

    assert research["caller_id"] == "research"
    assert research["policy_id"] == parsed["research"].id  # the id its ledger rows carry
    assert research["rules"] == {
        "zdr": {"value": True, "from": "default_policy"},
        "max_price": {
            "value": {"prompt": "1", "completion": "15"},
            "from": "caller policy over default_policy",
        },
        "allowed_plugins": {"value": ["file-parser", "web"], "from": "caller policy"},
    }
    assert "data_collection" in research["open"]
    assert "zdr" not in research["open"]
    assert research["provider_sent_when_request_is_silent"] == {
        "max_price": {"prompt": 1, "completion": 15},
        "zdr": True,
    }
    assert plain["policy_id"] == parsed["plain"].id != parsed["research"].id
    assert plain["rules"]["allowed_plugins"] == {"value": ["file-parser"], "from": "default_policy"}

    returncode, stdout, _ = await report(path, "plain")
    assert returncode == 0
    assert documents(stdout) == [plain]


async def test_a_mistake_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(callers_file({"svc": "zdr_required = true"}))
    returncode, stdout, stderr = await report(path)
    assert (returncode, stdout) == (2, "")
    assert stderr.splitlines() == [
        f"configuration error: {path}: caller 'svc': policy.zdr_required: unknown rule "
        f"(rules: {stderr.split('(rules: ')[1].rstrip()}"
    ]

    path.write_text(callers_file({"svc": ""}))
    returncode, _, stderr = await report(path, "nobody")
    assert returncode == 2
    assert stderr.strip() == f"{path}: no caller 'nobody'"
