"""The run's results as table rows with targets, the printed table, and machine facts."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

NAN = math.nan


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on one figure: ``value <= limit`` (or ``>=`` with ``at_least``)."""

    text: str
    limit: float
    at_least: bool = False

    def met(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        return value >= self.limit if self.at_least else value <= self.limit


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    metric: str
    gateway: float
    floor: float = NAN
    direct: float = NAN
    # "diff": added = gateway - baseline; "ratio": gateway / baseline in percent.
    compare: str = "diff"
    target: Target | None = None
    # Which figure the target applies to: "vs_floor" or "gateway".
    target_on: str = "vs_floor"

    @property
    def vs_floor(self) -> float:
        return self._compare(self.floor)

    @property
    def vs_direct(self) -> float:
        return self._compare(self.direct)

    def _compare(self, baseline: float) -> float:
        if self.compare == "none":
            return NAN
        if self.compare == "ratio":
            return 100 * self.gateway / baseline if baseline else NAN
        return self.gateway - baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.vs_floor if self.target_on == "vs_floor" else self.gateway)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "gateway": self.gateway,
            "floor": self.floor,
            "direct": self.direct,
            "added_vs_floor": self.vs_floor if self.compare == "diff" else None,
            "added_vs_direct": self.vs_direct if self.compare == "diff" else None,
            "percent_of_floor": self.vs_floor if self.compare == "ratio" else None,
            "percent_of_direct": self.vs_direct if self.compare == "ratio" else None,
            "target": self.target.text if self.target else None,
            "pass": self.passed,
        }


def _get(data: Mapping[str, Any], *path: str) -> float:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return NAN
        node = node[key]
    return float(node) if isinstance(node, int | float) else NAN


def _figures(by_target: Mapping[str, Any], *path: str) -> dict[str, float]:
    return {target: _get(by_target, target, *path) for target in ("gateway", "floor", "direct")}


def _row(
    scenario: str,
    metric: str,
    figures: Mapping[str, float],
    *,
    compare: str = "diff",
    target: Target | None = None,
) -> Row:
    return Row(
        scenario,
        metric,
        figures["gateway"],
        figures["floor"],
        figures["direct"],
        compare=compare,
        target=target,
    )


def build_rows(results: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    unary = results.get("unary", {})
    for concurrency, by_target in unary.items():
        name = f"unary c={concurrency}"
        rps = _figures(by_target, "per_s")
        rows.append(
            _row(
                name,
                "throughput (req/s)",
                rps,
                compare="ratio",
                target=Target("≥ 55 % of floor", 55.0, at_least=True)
                if concurrency == "64"
                else None,
            )
        )
        if "shipped" in by_target:
            rows.append(
                _row(
                    name,
                    "throughput, shipped defaults (req/s)",
                    {**rps, "gateway": _get(by_target, "shipped", "per_s")},
                    compare="ratio",
                    target=Target("≥ 70 % of floor", 70.0, at_least=True)
                    if concurrency == "64"
                    else None,
                )
            )
        p50 = _figures(by_target, "latency_ms", "p50")
        p99 = _figures(by_target, "latency_ms", "p99")
        rows.append(
            _row(
                name,
                "latency p50 (ms)",
                p50,
                target=Target("+≤ 0.30 ms", 0.3) if concurrency == "1" else None,
            )
        )
        rows.append(
            _row(
                name,
                "latency p99 (ms)",
                p99,
                target=Target("+≤ 1.00 ms", 1.0) if concurrency == "1" else None,
            )
        )
        cpu = _figures(by_target, "server_cpu_us_per_request")
        rows.append(
            Row(name, "server CPU/req (µs)", cpu["gateway"], cpu["floor"], NAN, compare="diff")
        )
        if "shipped" in by_target:
            shipped_p50 = _get(by_target, "shipped", "latency_ms", "p50")
            rows.append(
                _row(name, "latency p50, shipped defaults (ms)", {**p50, "gateway": shipped_p50})
            )
            rows.append(
                Row(
                    name,
                    "server CPU/req, shipped defaults (µs)",
                    _get(by_target, "shipped", "server_cpu_us_per_request"),
                    cpu["floor"],
                )
            )
    for concurrency, by_target in results.get("stream", {}).items():
        name = f"stream c={concurrency}"

        rows.append(
            _row(
                name,
                "TTFT p50 (ms)",
                _figures(by_target, "ttft_ms", "p50"),
                target=Target("+≤ 0.50 ms", 0.5) if concurrency == "1" else None,
            )
        )
        rows.append(_row(name, "TTFT p99 (ms)", _figures(by_target, "ttft_ms", "p99")))
        rows.append(_row(name, "stream p50 (ms)", _figures(by_target, "latency_ms", "p50")))
        rows.append(
            _row(name, "tokens/s relayed", _figures(by_target, "chunks_per_s"), compare="ratio")
        )
    hold = results.get("hold", {})
    if hold:
        rows.append(
            Row(
                "1000 open streams",
                "server RSS (MB)",
                _get(hold, "gateway", "rss_mb"),
                _get(hold, "floor", "rss_mb"),
                target=Target("≤ 250 MB", 250.0),
                target_on="gateway",
            )
        )
        rows.append(
            Row(
                "1000 open streams",
                "streams open",
                _get(hold, "gateway", "open_during_sample"),
                _get(hold, "floor", "open_during_sample"),
                compare="none",
            )
        )
        rows.append(
            Row(
                "1000 open streams",
                "time to open all (s)",
                _get(hold, "gateway", "open_s"),
                _get(hold, "floor", "open_s"),
            )
        )
    rows.extend(_live_rows(results.get("live", {})))
    startup = results.get("startup", {})
    if startup:
        rows.append(
            Row(
                "idle",
                "RSS after start-up (MB)",
                _get(startup, "gateway", "idle_rss_mb_median"),
                _get(startup, "floor", "idle_rss_mb_median"),
            )
        )
        rows.append(
            Row(
                "start-up",
                "to SERVING, median (s)",
                _get(startup, "gateway", "startup_s_median"),
                _get(startup, "floor", "startup_s_median"),
                target=Target("≤ 2 s", 2.0),
                target_on="gateway",
            )
        )
    return rows


def _live_step(steps: Sequence[Mapping[str, Any]], streams: float) -> Mapping[str, Any]:
    return next((step for step in steps if step["concurrency"] == streams), {})


def _live_rows(live: Mapping[str, Any]) -> list[Row]:
    """Capacity at a real pace, and the figures at the largest N both targets held."""
    if "gateway" not in live:
        return []
    capacity = {t: _get(live, t, "capacity", "streams") for t in ("gateway", "floor")}
    estimate = {t: _get(live, t, "capacity", "interpolated") for t in ("gateway", "floor")}
    name = "live streams (40 tok/s)"
    rows = [
        Row(
            name,
            "capacity, p99 lag ≤ 50 ms (streams)",
            capacity["gateway"],
            capacity["floor"],
            compare="ratio",
            target=Target("≥ 100 % of floor", 100.0, at_least=True),
        ),
        Row(
            name,
            "capacity ≥ 1,000 per worker",
            capacity["gateway"],
            capacity["floor"],
            compare="none",
            target=Target("≥ 1000", 1000.0, at_least=True),
            target_on="gateway",
        ),
        Row(name, "p99 crosses 50 ms at (streams)", estimate["gateway"], estimate["floor"]),
    ]
    common = min(capacity["gateway"], capacity["floor"])
    if math.isnan(common) or common <= 0:
        return rows
    steps = {t: live.get(t, {}).get("steps", []) for t in ("gateway", "floor")}
    at = {t: _live_step(steps[t], common) for t in ("gateway", "floor")}
    label = f"N={common:.0f}: "
    for metric, path in (
        ("lag p50 (ms)", ("lag_ms", "p50")),
        ("lag p99 (ms)", ("lag_ms", "p99")),
        ("server cores", ("cores", "server")),
        ("tokens/s received (N × 40 offered)", ("tokens_per_s",)),
        ("tokens per message", ("tokens_per_message",)),
    ):
        rows.append(Row(name, label + metric, _get(at["gateway"], *path), _get(at["floor"], *path)))
    return rows


def _number(value: float, compare: str = "diff", signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    if compare == "ratio":
        return f"{value:.0f} %"
    magnitude = abs(value)
    digits = 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render_table(rows: Sequence[Row]) -> str:
    header = (
        "scenario",
        "metric",
        "gateway",
        "floor",
        "direct",
        "vs floor",
        "vs direct",
        "target",
        "ok",
    )
    body = [
        (
            row.scenario,
            row.metric,
            _number(row.gateway),
            _number(row.floor),
            _number(row.direct),
            _number(row.vs_floor, row.compare, signed=row.compare == "diff"),
            _number(row.vs_direct, row.compare, signed=row.compare == "diff"),
            row.target.text if row.target else "",
            {True: "PASS", False: "FAIL", None: ""}[row.passed],
        )
        for row in rows
    ]
    return markdown(header, body, right={2, 3, 4, 5, 6})


def markdown(
    header: Sequence[str], body: Sequence[Sequence[str]], right: set[int] | None = None
) -> str:
    """A Markdown table padded to be readable as plain text; ``right`` columns align right."""
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def render_table_generic(
    rows: Sequence[tuple[str, Mapping[str, float]]], header: Sequence[str] | None = None
) -> str:
    """Named rows of figures (same keys in each) as a table; ``header`` renames the keys."""
    if not rows:
        return "(no results)"
    keys = list(rows[0][1])
    body = [[name, *(_number(figures.get(key, NAN)) for key in keys)] for name, figures in rows]
    return markdown(["variation", *(header or keys)], body)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return NAN


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(_mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {
            name: _version(name)
            for name in ("grpcio", "aiohttp", "protobuf", "orjson", "uvloop", "pydantic")
        },
        "load_average": os.getloadavg(),
    }


def render_machine(info: Mapping[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    load: Callable[[float], str] = "{:.2f}".format
    return (
        f"{info['date']} · {info['cpu_model']} · {info['cores_usable']}/{info['cores']} cores · "
        f"{info['memory_gib']} GiB · Linux {info['kernel']} · Python {info['python']}\n"
        f"{packages} · load average at start {', '.join(map(load, info['load_average']))}"
    )


def variant_figures(results: Mapping[str, Any], base: str) -> list[tuple[str, float, float]]:
    """(figure, base value, variant value) for a same-run A/B comparison."""
    figures: list[tuple[str, float, float]] = []

    def add(name: str, group: Mapping[str, Any], *path: str) -> None:
        figures.append((name, _get(group, base, *path), _get(group, "variant", *path)))

    for concurrency, group in results.get("unary", {}).items():
        add(f"unary c={concurrency} p50 (ms)", group, "latency_ms", "p50")
        add(f"unary c={concurrency} p99 (ms)", group, "latency_ms", "p99")
        add(f"unary c={concurrency} req/s", group, "per_s")
        add(f"unary c={concurrency} server CPU/req (µs)", group, "server_cpu_us_per_request")
    for concurrency, group in results.get("stream", {}).items():
        add(f"stream c={concurrency} TTFT p50 (ms)", group, "ttft_ms", "p50")
        add(f"stream c={concurrency} tokens/s", group, "chunks_per_s")
        add(f"stream c={concurrency} server CPU/stream (µs)", group, "server_cpu_us_per_request")
    if "hold" in results:
        add("1000 open streams RSS (MB)", results["hold"], "rss_mb")
    if "startup" in results:
        add("start-up, median (s)", results["startup"], "startup_s_median")
        add("idle RSS (MB)", results["startup"], "idle_rss_mb_median")
    return figures


def render_variant_table(results: Mapping[str, Any], base: str) -> str:
    body = [
        [
            name,
            _number(a),
            _number(b),
            _number(b - a, signed=True),
            "-" if not a or math.isnan(a) or math.isnan(b) else f"{100 * (b - a) / a:+.0f} %",
        ]
        for name, a, b in variant_figures(results, base)
    ]
    return markdown(["figure", base, "variant", "change", "change %"], body)
