"""The policy sections of the callers file: inheritance from ``[default_policy]``, policy ids,
one clear line per mistake at start-up, and a bad policy on reload keeping the running one."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.config import ConfigError
from service.domain.policy import OPEN_POLICY
from service.domain.providers import DataCollection
from tests.accounting.support import acct_gateway, sqlite_rows
from tests.api.support import PYTHON, chat_requests, run_process, service_env
from tests.harness import start_gateway
from tests.policy.support import as_caller, ask, callers, callers_file, sent_provider


def test_a_caller_inherits_the_default_rule_by_rule() -> None:
    found = callers(
        {
            "inherits": "",
            "overrides": 'zdr = false\nmax_price = { completion = "2" }',
        },
        default='zdr = true\ndata_collection = "deny"\nmax_price = { prompt = "1" }',
    )
    inherits, overrides = (caller.policy for caller in found)
    assert inherits.zdr is True
    assert inherits.data_collection is DataCollection.DENY
    assert inherits.rules() == {
        "data_collection": "deny",
        "zdr": True,
        "max_price": {"prompt": "1"},
    }
    # Its own zdr replaces the default's; max_price is merged kind by kind.
    assert overrides.rules() == {
        "data_collection": "deny",
        "max_price": {"prompt": "1", "completion": "2"},
    }
    assert inherits.id != overrides.id


def test_the_policy_id_is_a_hash_of_the_rules() -> None:
    first, second, other = callers(
        {"a": "zdr = true", "b": "zdr = true", "c": "zdr = true\nprovider_fallbacks = false"}
    )
    assert first.policy.id == second.policy.id != other.policy.id
    assert first.policy.id.startswith("p-")
    assert len(first.policy.id) == 18
    [plain] = callers({"plain": ""})
    assert plain.policy == OPEN_POLICY


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("zdr_required = true", "caller 'svc': policy.zdr_required: unknown rule (rules: "),
        ('zdr = "sometimes"', "caller 'svc': policy.zdr: Input should be a valid boolean"),
        ('max_price = { prompt = "cheap" }', "caller 'svc': policy.max_price.prompt: "),
        ('max_price = { tokens = "1" }', "caller 'svc': policy.max_price.tokens: unknown key"),
        ('allowed_providers = ["OpenAI"]', "caller 'svc': policy.allowed_providers[0]: must be"),
        ("allowed_providers = []", "caller 'svc': policy.allowed_providers: "),
        ('allowed_plugins = ["search"]', "caller 'svc': policy.allowed_plugins: unknown plugin"),
        ('max_reasoning_effort = "huge"', "caller 'svc': policy.max_reasoning_effort: Input "),
        ('allowed_output_modalities = ["image"]', "caller 'svc': policy.allowed_output_"),
        ('forbidden_provider_answers = "ignore"', "caller 'svc': policy.forbidden_provider_"),
    ],
)
def test_a_bad_rule_names_the_caller_and_the_key(section: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        callers({"svc": section})
    assert str(caught.value).startswith(f"callers.toml: {line}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_default_rule_names_the_section() -> None:
    with pytest.raises(ConfigError, match=r"^callers.toml: default_policy.zdr: Input should"):
        callers({"svc": ""}, default="zdr = 3")


async def test_a_bad_policy_stops_start_up_with_one_line(tmp_path: Path) -> None:
    cases = {
        "unknown-rule": (
            {"svc": "allowed_providerz = ['openai']"},
            "caller 'svc': policy.allowed_providerz: unknown rule",
        ),
        "bad-value": (
            {"svc": 'max_price = { prompt = "-1" }'},
            "caller 'svc': policy.max_price.prompt: Input should be greater than or equal to 0",
        ),
    }

    async def start(name: str, policies: dict[str, str]) -> tuple[str, int, str]:
        path = tmp_path / f"{name}.toml"
        path.write_text(callers_file(policies))
        env = service_env(GATEWAY_CALLERS_FILE=str(path))
        finished = await run_process(PYTHON, "-m", "service", env=env, time_limit=30)
        return name, finished.returncode, finished.stderr

    results = await asyncio.gather(*(start(name, p) for name, (p, _) in cases.items()))
    for name, returncode, stderr in results:
        lines = stderr.splitlines()
        assert returncode == 2, stderr[-2000:]
        assert len(lines) == 1, lines
        path = tmp_path / f"{name}.toml"
        assert lines[0].startswith(f"configuration error: {path}: {cases[name][1]}"), lines[0]


async def test_a_bad_policy_on_reload_keeps_the_running_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(callers_file({"svc": "zdr = true"}))
    caplog.set_level(logging.INFO)
    async with start_gateway(
        callers=callers({"svc": "zdr = true"}),
        gateway={"callers_file": path, "reload_interval_s": 0.02},
    ) as gw:
        await gw.stub.Complete(ask(), metadata=as_caller("svc"))
        assert sent_provider(gw.sim) == {"zdr": True}

        staged = path.with_name("callers.toml.new")
        staged.write_text(callers_file({"svc": "zdr = true\nmax_pricee = 1"}))
        os.replace(staged, path)
        [failed] = await gw.server.reloader.wait_for(1)
        assert not failed.ok
        assert "caller 'svc': policy.max_pricee: unknown rule" in failed.detail
        await gw.stub.Complete(ask(), metadata=as_caller("svc"))
        assert sent_provider(gw.sim) == {"zdr": True}, "the running policy still applies"

        staged.write_text(callers_file({"svc": 'data_collection = "deny"'}))
        os.replace(staged, path)
        [_, fixed] = await gw.server.reloader.wait_for(2)
        assert fixed.ok
        await gw.stub.Complete(ask(), metadata=as_caller("svc"))
        assert sent_provider(gw.sim) == {"data_collection": "deny"}
        assert len(chat_requests(gw.sim)) == 3
    [new_policy] = callers({"svc": 'data_collection = "deny"'})
    logged = [r for r in caplog.records if r.getMessage() == "caller policy"]
    assert logged[-1].__dict__["policy_id"] == new_policy.policy.id
    assert logged[-1].__dict__["callers"] == ["svc"]
    assert logged[-1].__dict__["policy_rules"] == {"data_collection": "deny"}


async def test_every_row_names_the_policy_that_applied_refused_calls_too(tmp_path: Path) -> None:
    found = callers({"svc": "zdr = true", "open": ""})
    path = tmp_path / "usage.sqlite3"
    async with acct_gateway(path, callers=found) as gw:
        await gw.stub.Complete(ask(), metadata=as_caller("svc"))
        refused = ask(provider=pb.ProviderPreferences(zdr=False))
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(refused, metadata=as_caller("svc"))
        await gw.stub.Complete(ask(), metadata=as_caller("open"))
        await gw.rows_written(3)
    rows = sorted(sqlite_rows(path), key=lambda row: row["time"])
    ids = {caller.id: caller.policy.id for caller in found}
    assert [(r["caller_id"], r["status"], r["policy_id"]) for r in rows] == [
        ("svc", "OK", ids["svc"]),
        ("svc", "PERMISSION_DENIED", ids["svc"]),
        ("open", "OK", OPEN_POLICY.id),
    ]
