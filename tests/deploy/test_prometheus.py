"""Alerts and dashboards against the gateway's real metrics.

- ``promtool test rules`` runs the alert rules' unit tests, and ``promtool check rules`` checks
  every dashboard query parses.
- Every metric (and label) a dashboard panel or a rule reads exists on a real gateway's
  ``/metrics`` after a few calls.
- A real Prometheus (Debian's package) scrapes a real gateway, evaluates the rules without an
  error, and answers a query with the expected series.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from llmgateway.v1 import completion_service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from service.config import TelemetrySettings
from service.telemetry import build_telemetry
from tests.harness import Harness, auth, start_gateway, user
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-gateway.json"
COMPLETE_CALLS = 3

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "and", "or",
     "unless", "bool", "inf", "nan"}
)  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run make ensure-prometheus (Debian's prometheus)")
    return found


def _promtool(*args: str) -> str:
    """Runs promtool and returns its output; fails the test when it does."""
    result = subprocess.run(
        [_tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        target["expr"].replace("$__rate_interval", "5m")
        for panel in panels
        for target in panel.get("targets", [])
    ]


@dataclass(frozen=True)
class Used:
    metrics: frozenset[str]
    labels: frozenset[str]
    recorded: frozenset[str] = frozenset()
    """Names of recording rules (``level:metric:operation``)."""


def used_in(expression: str) -> Used:
    """The metric and label names a PromQL expression reads (recorded ``a:b:c`` names and
    functions left out)."""
    labels: set[str] = set()
    text = expression
    for group in _GROUPING.findall(text):
        labels.update(part.strip() for part in group.split(",") if part.strip())
    text = _GROUPING.sub(" ", text)
    for matchers in _MATCHERS.findall(_STRING.sub('""', text)):
        labels.update(
            m.group(0) for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*(?=\s*[=!]~?)", matchers)
        )
    text = _MATCHERS.sub(" ", _STRING.sub('""', text))
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\boffset\s+-?[0-9][0-9a-z]*", " ", text)
    names = {
        m.group(0)
        for m in _IDENTIFIER.finditer(text)
        if m.group(0) not in _KEYWORDS and not text[m.end() :].lstrip().startswith("(")
    }
    recorded = {name for name in names if ":" in name}
    return Used(frozenset(names - recorded), frozenset(labels), frozenset(recorded))


def test_the_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_unit_test() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # promtool parses rule files, not dashboards: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    _promtool("check", "rules", str(path))


def test_the_dashboard_has_the_panels_operators_need() -> None:
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in (
        "Requests by status code",
        "Latency p50 / p99 by RPC",
        "Time to first token p50 / p99",
        "Tokens per second",
        "Cost per caller (USD/h)",
        "Quota refusals by caller",
        "Upstream 429 and 5xx",
        "Active streams",
        "Ledger queue",
        "Ledger records dropped / rejected",
    ):
        assert wanted in titles


def test_the_expression_reader_finds_names() -> None:
    used = used_in(
        'sum by (le, rpc_method) (rate(a_bucket{x="1", y!~"b"}[5m] offset 1h)) / on() b_total'
    )
    assert used == Used(
        frozenset({"a_bucket", "b_total"}), frozenset({"le", "rpc_method", "x", "y"})
    )
    assert used_in("level:metric:rate5m > 2 * other").recorded == {"level:metric:rate5m"}


# --- a real gateway, scraped --------------------------------------------------------------


@dataclass
class Scraped:
    gw: Harness
    port: int
    text: str


async def _exercise(gw: Harness, previous: int = 0) -> None:
    """Calls that make every series the dashboards and rules read appear."""
    for _ in range(COMPLETE_CALLS):
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
    async for _ in gw.stub.StreamComplete(
        pb.StreamCompleteRequest(messages=[user("Tell me")]), metadata=auth()
    ):
        pass
    for failing in ("Hi [[sim:error=429]]", "Hi [[sim:error=503]]"):
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(pb.CompleteRequest(messages=[user(failing)]), metadata=auth())
    await gw.wait_finished(previous + COMPLETE_CALLS + 3)
    await gw.server.ledger.flush()


@pytest.fixture
async def scraped() -> AsyncIterator[Scraped]:
    telemetry = build_telemetry(TelemetrySettings(), prometheus_host="127.0.0.1", prometheus_port=0)
    assert telemetry.prometheus_port is not None
    try:
        async with start_gateway(telemetry=telemetry) as gw:
            await _exercise(gw)
            url = f"http://127.0.0.1:{telemetry.prometheus_port}/metrics"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                text = await response.text()
            yield Scraped(gw, telemetry.prometheus_port, text)
    finally:
        await asyncio.to_thread(telemetry.shutdown)


def _exposed(text: str) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    labels: set[str] = {"le"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


async def test_every_metric_a_panel_or_rule_reads_exists(scraped: Scraped) -> None:
    names, labels = _exposed(scraped.text)
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    for expression in rule_expressions() + dashboard_expressions():
        used = used_in(expression)
        assert used.metrics or used.recorded, expression
        assert used.recorded <= recorded, (used.recorded - recorded, expression)
        assert used.metrics <= names, (used.metrics - names, expression)
        assert used.labels <= labels, (used.labels - labels, expression)


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str


@pytest.fixture
def prometheus(tmp_path: Path, scraped: Scraped) -> Iterator[PrometheusServer]:
    # The recording group's 1m interval shortened, so that the rules are evaluated in time.
    rules = tmp_path / "alerts.yml"
    rules.write_text(RULES.read_text().replace("interval: 1m", "interval: 1s"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "llm-gateway",
                "static_configs": [{"targets": [f"127.0.0.1:{scraped.port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            _tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield PrometheusServer(process, f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def _poll(session: aiohttp.ClientSession, url: str, done: Any, limit_s: float = 30) -> Any:
    """GET ``url`` until ``done(json)`` holds: Prometheus offers nothing to wait on, so this
    polls, a few times a second, for at most ``limit_s``."""
    last: Any = None
    async with asyncio.timeout(limit_s):
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        last = await response.json()
                        if done(last):
                            return last
            except aiohttp.ClientConnectionError:
                pass  # still starting
            await asyncio.sleep(0.2)


async def test_a_real_prometheus_scrapes_the_gateway_and_evaluates_the_rules(
    scraped: Scraped, prometheus: PrometheusServer
) -> None:
    query = 'sum by (rpc_method) (llmgateway_requests_total{rpc_grpc_status_code="0"})'
    async with aiohttp.ClientSession() as session:
        answer = await _poll(
            session,
            f"{prometheus.url}/api/v1/query?query={query}",
            lambda body: any(
                r["metric"].get("rpc_method") == "StreamComplete" for r in body["data"]["result"]
            ),
        )
        series = {r["metric"]["rpc_method"]: float(r["value"][1]) for r in answer["data"]["result"]}
        assert series == {"Complete": COMPLETE_CALLS, "StreamComplete": 1}
        # More calls, now that Prometheus scrapes: its rates (and the rules') see them move.
        await _exercise(scraped.gw, previous=COMPLETE_CALLS + 3)
        upstream = await _poll(
            session,
            f"{prometheus.url}/api/v1/query?query=llmgateway_upstream_responses_total",
            lambda body: len(body["data"]["result"]) >= 3,
        )
        codes = {r["metric"]["http_response_status_code"] for r in upstream["data"]["result"]}
        assert codes == {"200", "429", "503"}

        def evaluated(body: Any) -> bool:
            rules = [r for g in body["data"]["groups"] for r in g["rules"]]
            return bool(rules) and all(
                r.get("lastEvaluation", "").startswith("20") and r["health"] != "unknown"
                for r in rules
            )

        rules = await _poll(session, f"{prometheus.url}/api/v1/rules", evaluated)
        broken = [
            (r["name"], r.get("lastError"))
            for g in rules["data"]["groups"]
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert broken == []
        # The recording rules computed real values from the scraped series.
        ratio = await _poll(
            session,
            f"{prometheus.url}/api/v1/query?query=llmgateway:upstream_429_ratio:rate5m",
            lambda body: any(0 < float(r["value"][1]) < 1 for r in body["data"]["result"]),
        )
        # A share of the attempts of the second round (how much depends on which scrapes
        # fell between its calls, so no exact figure).
        assert [r["metric"] for r in ratio["data"]["result"]] == [
            {"__name__": "llmgateway:upstream_429_ratio:rate5m"}
        ]
