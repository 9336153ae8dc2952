"""``python -m bench.variations``: what each arrangement of the stack, or each feature, costs.

Server-side variations (uvloop, gRPC server options, a feature switched off) are measured as
same-run A/B comparisons: a second gateway (or floor) with the change runs next to the
unchanged one and both are measured interleaved, so the machine's drift hits them alike.
Generator-side variations (event loop, channels, the sync API) change every target at once,
so each is a run of its own, compared on the floor's figures and the generator's own CPU.
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench.procs import ROOT
from bench.report import render_table_generic

# name -> (flags, A/B base or "" for a run of its own)
VARIATIONS: dict[str, tuple[list[str], str]] = {
    "floor on asyncio's own loop": (
        ["--variant-of", "floor", "--variant-loop", "asyncio"],
        "floor",
    ),
    "gateway on asyncio's own loop (GATEWAY_EVENT_LOOP=asyncio)": (
        ["--variant-of", "gateway", "--variant-loop", "asyncio"],
        "gateway",
    ),
    "gateway: GC at CPython's default threshold (GATEWAY_GC_THRESHOLD=0)": (
        ["--variant-of", "gateway", "--variant-env", "GATEWAY_GC_THRESHOLD=0"],
        "gateway",
    ),
    "gateway: gRPC grpc.http2.bdp_probe=0": (
        [
            "--variant-of",
            "gateway",
            "--variant-env",
            'BENCH_GRPC_SERVER_OPTIONS=[["grpc.http2.bdp_probe",0]]',
        ],
        "gateway",
    ),
    "gateway: gRPC optimization_target=latency": (
        [
            *("--variant-of", "gateway", "--variant-env"),
            'BENCH_GRPC_SERVER_OPTIONS=[["grpc.optimization_target","latency"]]',
        ],
        "gateway",
    ),
    "gateway: GATEWAY_LOG_LEVEL=WARNING (no per-RPC log line)": (
        ["--variant-of", "gateway", "--variant-env", "GATEWAY_LOG_LEVEL=WARNING"],
        "gateway",
    ),
    "gateway: traces off (OTEL_TRACES_EXPORTER=none)": (
        ["--variant-of", "gateway", "--variant-env", "OTEL_TRACES_EXPORTER=none"],
        "gateway",
    ),
    "gateway: traces sampled at 1 % (OTEL_TRACES_SAMPLER)": (
        [
            *("--variant-of", "gateway"),
            *("--variant-env", "OTEL_TRACES_SAMPLER=parentbased_traceidratio"),
            *("--variant-env", "OTEL_TRACES_SAMPLER_ARG=0.01"),
        ],
        "gateway",
    ),
    "gateway: telemetry off (OTEL_SDK_DISABLED=true)": (
        ["--variant-of", "gateway", "--variant-env", "OTEL_SDK_DISABLED=true"],
        "gateway",
    ),
    "gateway: ledger durability sync (GATEWAY_LEDGER_DURABILITY=sync)": (
        ["--variant-of", "gateway", "--variant-env", "GATEWAY_LEDGER_DURABILITY=sync"],
        "gateway",
    ),
    "gateway: ledger record() a no-op (ablation)": (
        ["--variant-of", "gateway", "--variant-env", "BENCH_ABLATE=ledger"],
        "gateway",
    ),
    "gateway: the SDK's OTLP span encoder instead of ours (BENCH_ABLATE=otlp_encoder)": (
        ["--variant-of", "gateway", "--variant-env", "BENCH_ABLATE=otlp_encoder"],
        "gateway",
    ),
    "gateway: GIL switch interval 0.5 ms instead of 5 ms": (
        ["--variant-of", "gateway", "--variant-env", "BENCH_SWITCH_INTERVAL_S=0.0005"],
        "gateway",
    ),
    "gateway: all three off": (
        [
            *("--variant-of", "gateway"),
            *("--variant-env", "GATEWAY_LOG_LEVEL=WARNING"),
            *("--variant-env", "OTEL_SDK_DISABLED=true"),
            *("--variant-env", "BENCH_ABLATE=ledger"),
        ],
        "gateway",
    ),
    "generator: asyncio, grpc.aio, 16 callers/channel (default)": ([], ""),
    "generator: uvloop": (["--client-loop", "uvloop"], ""),
    "generator: 1 caller/channel": (["--callers-per-channel", "1"], ""),
    "generator: 64 callers/channel": (["--callers-per-channel", "64"], ""),
    "generator: sync API, one thread per caller": (["--client", "sync"], ""),
}


AB_HEADER = (
    "c1 p50 ms A",
    "B",
    "c1 p99 ms A",
    "B",
    "c64 req/s A",
    "B",
    "Δ req/s %",
    "CPU/req µs A",
    "B",
    "Δ CPU %",
)


def _get(data: Any, *path: str) -> float:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return math.nan
        data = data[key]
    return float(data) if isinstance(data, int | float) else math.nan


def _change(a: float, b: float) -> float:
    return 100 * (b - a) / a if a else math.nan


def _ab_figures(report: dict[str, Any], base: str) -> dict[str, float]:
    unary = report["results"]["unary"]
    one, many = unary.get("1", {}), unary.get("64", {})
    p50 = _get(one, base, "latency_ms", "p50"), _get(one, "variant", "latency_ms", "p50")
    p99 = _get(one, base, "latency_ms", "p99"), _get(one, "variant", "latency_ms", "p99")
    rps = _get(many, base, "per_s"), _get(many, "variant", "per_s")
    cpu = (
        _get(many, base, "server_cpu_us_per_request"),
        _get(many, "variant", "server_cpu_us_per_request"),
    )
    return {
        "c1_p50_a": p50[0],
        "c1_p50_b": p50[1],
        "c1_p99_a": p99[0],
        "c1_p99_b": p99[1],
        "c64_rps_a": rps[0],
        "c64_rps_b": rps[1],
        "c64_rps_change_pct": _change(*rps),
        "cpu_us_a": cpu[0],
        "cpu_us_b": cpu[1],
        "cpu_change_pct": _change(*cpu),
    }


def _run_figures(report: dict[str, Any]) -> dict[str, float]:
    unary = report["results"]["unary"]
    one, many = unary.get("1", {}), unary.get("64", {})
    return {
        "floor c1 p50 ms": _get(one, "floor", "latency_ms", "p50"),
        "direct c1 p50 ms": _get(one, "direct", "latency_ms", "p50"),
        "floor c64 req/s": _get(many, "floor", "per_s"),
        "direct c64 req/s": _get(many, "direct", "per_s"),
        "gen CPU/req µs (floor, c64)": _get(many, "floor", "generator_cpu_us_per_request"),
        "gen CPU/req µs (direct, c64)": _get(many, "direct", "generator_cpu_us_per_request"),
        "gen CPU/req µs (floor, c1)": _get(one, "floor", "generator_cpu_us_per_request"),
    }


def _run_bench(command: list[str]) -> int:
    """Run one ``python -m bench``; on any interruption, SIGTERM it so that it stops its own
    children (a SIGKILL would orphan them), then wait for it."""
    child = subprocess.Popen(command, cwd=ROOT)
    try:
        return child.wait(timeout=900)
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
        raise


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m bench.variations", description=__doc__)
    parser.add_argument("--only", nargs="*", default=[], help="substrings of variation names")
    parser.add_argument("--rounds", default="3")
    parser.add_argument("--duration", default="1.5")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "variations.json")
    args = parser.parse_args(argv)
    chosen = {
        name: spec
        for name, spec in VARIATIONS.items()
        if not args.only or any(part in name for part in args.only)
    }
    ab_rows: list[tuple[str, dict[str, float]]] = []
    run_rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="llmgw-variations-") as tmp:
        for index, (name, (flags, base)) in enumerate(chosen.items()):
            out = Path(tmp) / f"{index}.json"
            command = [sys.executable, "-m", "bench", "--quick", "--scenarios", "unary"]
            command += ["--unary-concurrency", "1", "64", "--rounds", args.rounds]
            command += ["--duration", args.duration, "--out", str(out), *flags]
            if base:
                # Only what the comparison needs (the run always starts the gateway).
                command += ["--targets", "gateway" if base == "gateway" else "gateway,floor"]
            print(f"[variations] {name}", file=sys.stderr, flush=True)
            returncode = _run_bench(command)
            if returncode != 0 or not out.exists():
                print(f"[variations] {name}: failed ({returncode})", file=sys.stderr)
                continue
            report = orjson.loads(out.read_bytes())
            if base:
                ab_rows.append((name, _ab_figures(report, base)))
            else:
                run_rows.append((name, _run_figures(report)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(
        orjson.dumps({"ab": dict(ab_rows), "runs": dict(run_rows)}, option=orjson.OPT_INDENT_2)
    )
    print("Same-run A/B (A = unchanged, B = the variation):")
    print(render_table_generic(ab_rows, AB_HEADER))
    print("\nGenerator variations (one run each):")
    print(render_table_generic(run_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
