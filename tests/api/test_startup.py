"""``python -m service`` refuses a bad configuration with exit code 2 and one clear line that
names the environment variable at fault; it never falls into demo mode unasked.

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

from service.__main__ import demo_settings
from service.config import DEMO_LISTEN, GatewaySettings
from tests.api.support import PYTHON, ROOT, Finished, service_env

UPSTREAM_KEY = "sk-or-v1-STARTUPSECRET-0123456789"
SECRET_DSN = "postgresql://gw:DSNSECRET@127.0.0.1:1/x"

# Each case: (environment, whether demo mode is switched on, the one line it must print).
NO_KEY = (
    r"configuration error: OPENROUTER_API_KEY is not set \(nor OPENROUTER_API_KEY_FILE\); "
    r"set GATEWAY_SIMULATOR=true to serve against the built-in simulator instead"
)
EXPECTED_LINE = {
    "base-url-not-a-url": r"configuration error: OPENROUTER_BASE_URL='not a url': .+",
    "base-url-unreachable": r"configuration error: .*(OpenRouter|127\.0\.0\.1).*",
    "callers-file-missing": r"configuration error: callers file: cannot read .*missing\.toml: .+",
    "unknown-default-model": (
        r"configuration error: OPENROUTER_DEFAULT_MODEL 'nobody/no-such-model' .+"
    ),
    "no-key-no-simulator": NO_KEY,
    "simulator-off-without-key": NO_KEY,
    "listen-address-in-use": r"configuration error: .*127\.0\.0\.1:\d+.*",
    "listen-port-out-of-range": (
        r"configuration error: GATEWAY_LISTEN='127\.0\.0\.1:99999': "
        r"the port 99999 is out of range \(0-65535\)"
    ),
    "listen-without-port": (
        r"configuration error: GATEWAY_LISTEN='127\.0\.0\.1': expected HOST:PORT.*"
    ),
    "listen-bare-ipv6": r"configuration error: GATEWAY_LISTEN='::1:50051': .*brackets.*",
    "timeout-not-a-number": (
        r"configuration error: OPENROUTER_TIMEOUT_MS='abc': .*integer.* \(milliseconds\)"
    ),
    "grace-with-a-unit": (
        r"configuration error: GATEWAY_SHUTDOWN_GRACE_S='30s': .*number.* \(seconds\)"
    ),
    "drain-delay-negative": (
        r"configuration error: GATEWAY_DRAIN_DELAY_S='-1': .*greater than or equal to 0.*"
    ),
    "simulator-not-a-boolean": r"configuration error: GATEWAY_SIMULATOR='maybe': .*boolean.*",
    "key-and-key-file": (
        r"configuration error: set OPENROUTER_API_KEY or OPENROUTER_API_KEY_FILE, not both"
    ),
    "key-file-missing": (
        r"configuration error: OPENROUTER_API_KEY_FILE: cannot read .*no-key\.txt: .+"
    ),
    "key-file-empty": r"configuration error: OPENROUTER_API_KEY_FILE: .*empty-key\.txt is empty",
    "tls-cert-without-key": (
        r"configuration error: GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together"
    ),
    "metrics-port-is-listen-port": (
        r"configuration error: GATEWAY_PROMETHEUS_PORT is the GATEWAY_LISTEN port"
    ),
    "prometheus-exporter-missing": (
        r"configuration error: the metrics endpoint \(GATEWAY_PROMETHEUS_PORT .*\) needs the "
        r"\S*prometheus\S* package, which is not installed "
        r"\(install the 'prometheus' extra: .*\)"
    ),
    "otlp-exporter-missing": (
        r"configuration error: trace export \(OTEL_EXPORTER_OTLP_ENDPOINT .*\) needs the "
        r"opentelemetry\.exporter\.otlp\S* package, which is not installed "
        r"\(install the 'otlp' extra: .*\)"
    ),
    "ledger-dsn-secret-not-echoed": r"configuration error: cannot open the usage ledger: .+",
}

# A sitecustomize that makes the exporter packages unimportable, as in an image built without
# the extras.
_HIDE_PACKAGES = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "prometheus_client" or name.startswith(
            "opentelemetry.exporter."
        ):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def _environments(
    tmp: Path, closed_port: int, busy_port: int
) -> dict[str, tuple[bool, dict[str, str]]]:
    callers = tmp / "callers.toml"
    digest = hashlib.sha256(b"a-caller-key").hexdigest()
    callers.write_text(f'[[callers]]\nid = "svc"\nkey_sha256 = "{digest}"\n')
    (tmp / "empty-key.txt").write_text("\n")
    hidden = tmp / "hidden"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(_HIDE_PACKAGES)
    without_exporters = {"PYTHONPATH": str(hidden)}
    with_key = {
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "GATEWAY_CALLERS_FILE": str(callers),
        "OPENROUTER_MAX_RETRIES": "0",
    }
    return {
        "base-url-not-a-url": (True, {"OPENROUTER_BASE_URL": "not a url"}),
        "base-url-unreachable": (
            False,
            {**with_key, "OPENROUTER_BASE_URL": f"http://127.0.0.1:{closed_port}/api/v1"},
        ),
        "callers-file-missing": (True, {"GATEWAY_CALLERS_FILE": str(tmp / "missing.toml")}),
        "unknown-default-model": (True, {"OPENROUTER_DEFAULT_MODEL": "nobody/no-such-model"}),
        "no-key-no-simulator": (False, {}),
        "simulator-off-without-key": (False, {"GATEWAY_SIMULATOR": "false"}),
        "listen-address-in-use": (True, {"GATEWAY_LISTEN": f"127.0.0.1:{busy_port}"}),
        "listen-port-out-of-range": (True, {"GATEWAY_LISTEN": "127.0.0.1:99999"}),
        "listen-without-port": (True, {"GATEWAY_LISTEN": "127.0.0.1"}),
        "listen-bare-ipv6": (True, {"GATEWAY_LISTEN": "::1:50051"}),
        "timeout-not-a-number": (True, {"OPENROUTER_TIMEOUT_MS": "abc"}),
        "grace-with-a-unit": (True, {"GATEWAY_SHUTDOWN_GRACE_S": "30s"}),
        "drain-delay-negative": (True, {"GATEWAY_DRAIN_DELAY_S": "-1"}),
        "simulator-not-a-boolean": (False, {"GATEWAY_SIMULATOR": "maybe"}),
        "key-and-key-file": (
            False,
            {**with_key, "OPENROUTER_API_KEY_FILE": str(tmp / "key.txt")},
        ),
        "key-file-missing": (
            False,
            {
                "OPENROUTER_API_KEY_FILE": str(tmp / "no-key.txt"),
                "GATEWAY_CALLERS_FILE": str(callers),
            },
        ),
        "key-file-empty": (
            False,
            {
                "OPENROUTER_API_KEY_FILE": str(tmp / "empty-key.txt"),
                "GATEWAY_CALLERS_FILE": str(callers),
            },
        ),
        "tls-cert-without-key": (True, {"GATEWAY_TLS_CERT_FILE": str(tmp / "cert.pem")}),
        "metrics-port-is-listen-port": (
            True,
            {"GATEWAY_LISTEN": "127.0.0.1:50999", "GATEWAY_PROMETHEUS_PORT": "50999"},
        ),
        "prometheus-exporter-missing": (
            True,
            {"GATEWAY_PROMETHEUS_PORT": "0", **without_exporters},
        ),
        "otlp-exporter-missing": (
            True,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port}",
                **without_exporters,
            },
        ),
        "ledger-dsn-secret-not-echoed": (True, {"GATEWAY_LEDGER_DSN": SECRET_DSN}),
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
                name, (simulator, env) = pending.pop()
                running[name] = subprocess.Popen(
                    [PYTHON, "-m", "service"],
                    cwd=ROOT,
                    env=service_env(simulator=simulator, **env),
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


@pytest.mark.parametrize("name", sorted(EXPECTED_LINE))
def test_a_bad_configuration_exits_2_with_one_clear_line(
    outcomes: dict[str, Finished], name: str
) -> None:
    outcome = outcomes[name]
    lines = outcome.stderr.splitlines()
    assert outcome.returncode == 2, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr
    assert UPSTREAM_KEY not in outcome.stderr
    assert "DSNSECRET" not in outcome.stderr
    assert len(lines) == 1, lines
    assert re.fullmatch(EXPECTED_LINE[name], lines[0]), lines[0]
    assert outcome.stdout == ""


def test_every_case_has_an_expected_line(tmp_path: Path) -> None:
    assert set(_environments(tmp_path, 1, 2)) == set(EXPECTED_LINE)


def test_demo_mode_listens_on_loopback_unless_told_otherwise() -> None:
    demo = demo_settings(GatewaySettings(simulator=True))
    assert demo.listen == DEMO_LISTEN == "127.0.0.1:50051"
    told = demo_settings(GatewaySettings(simulator=True, listen="0.0.0.0:7000"))
    assert told.listen == "0.0.0.0:7000"
    # With a real upstream the usual default (every interface) stands.
    assert demo_settings(GatewaySettings()).listen == "0.0.0.0:50051"


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0:50051", "127.0.0.1:0", "[::]:50051", "[::1]:1", "localhost:65535", "unix:/tmp/s"],
)
def test_good_listen_addresses_are_accepted(address: str) -> None:
    assert GatewaySettings(listen=address).listen == address
