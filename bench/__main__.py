"""``python -m bench [--quick] [--scenarios ...] [--out FILE]``: run the benchmarks.

Starts the simulator (fast mode), the gateway (``python -m service``) and the floor, each in
its own process, plus a load-generator process; measures every scenario against all three
targets in the same run; prints a table and writes JSON. Every child process is stopped on
exit, whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench.hotspots import render as render_hotspots
from bench.procs import ROOT, BenchError
from bench.report import (
    build_rows,
    machine_info,
    render_machine,
    render_table,
    render_variant_table,
)
from bench.run import (
    BASE_TARGETS,
    SCENARIOS,
    Options,
    options_json,
    run_hold,
    run_live,
    run_profile,
    run_stream,
    run_unary,
    running_stack,
    summarize_startup,
    telemetry_check,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


def _scenarios(values: Sequence[str]) -> tuple[str, ...]:
    chosen: list[str] = []
    for value in values:
        for name in value.replace(",", " ").split():
            if name not in SCENARIOS:
                raise argparse.ArgumentTypeError(f"unknown scenario {name!r}; one of {SCENARIOS}")
            chosen.append(name)
    return tuple(dict.fromkeys(chosen)) or SCENARIOS


def _targets(value: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = set(chosen) - set(BASE_TARGETS)
    if unknown or "gateway" not in chosen:
        raise SystemExit(f"--targets: a subset of {','.join(BASE_TARGETS)} with gateway")
    return chosen


def _pairs(values: Sequence[str], *, numbers: bool) -> tuple[tuple[str, Any], ...]:
    pairs: list[tuple[str, Any]] = []
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {value!r}")
        parsed: Any = raw
        if numbers:
            try:
                parsed = int(raw)
            except ValueError:
                parsed = raw
        pairs.append((name, parsed))
    return tuple(pairs)


def _parse(argv: Sequence[str] | None) -> tuple[Options, Path, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    parser.add_argument(
        "--scenarios", nargs="*", default=[], help=f"any of {', '.join(SCENARIOS)} (default all)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per scenario")
    parser.add_argument("--duration", type=float, help="measured seconds per target per round")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each measurement")
    parser.add_argument("--unary-concurrency", type=int, nargs="+", help="default: 1 16 64 256")
    parser.add_argument(
        "--live-steps", type=int, nargs="+", help="live streams per step (default 100 … 2000)"
    )
    parser.add_argument("--live-window", type=float, help="measured seconds per live step")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help="all processes' loop")
    parser.add_argument("--gateway-loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--floor-loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--client-loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--simulator-loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--client", choices=("aio", "sync"), help="gRPC client API (unary)")
    parser.add_argument("--callers-per-channel", type=int, help="load callers per gRPC channel")
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra gRPC server option for the gateway and the floor",
    )
    parser.add_argument("--client-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the gateway (e.g. to turn a feature on)",
    )
    parser.add_argument(
        "--targets",
        help="comma-separated subset of gateway,floor,direct (default all three)",
    )
    parser.add_argument(
        "--variant-of",
        choices=("gateway", "floor"),
        help="add a fourth target: a second gateway (or floor) with --variant-* changes, "
        "measured interleaved with the others (a same-run A/B comparison)",
    )
    parser.add_argument("--variant-loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--variant-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--profile",
        nargs="?",
        type=float,
        const=8.0,
        default=None,
        metavar="SECONDS",
        help="py-spy the gateway under load for SECONDS (default 8) after the scenarios",
    )
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native")
    parser.add_argument(
        "--profile-target",
        choices=("gateway", "shipped", "floor", "variant"),
        help="whom to profile (gateway)",
    )
    parser.add_argument(
        "--profile-kind",
        choices=("unary", "stream", "live"),
        help="unary c=64 (default), stream c=16 or 300 live streams",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the child processes' logs")
    parser.add_argument(
        "--redis",
        action="store_true",
        help="quotas in a Redis the run starts (what GATEWAY_WORKERS above 1 needs)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 3 when a target is missed (default: report)"
    )
    args = parser.parse_args(argv)
    options = Options.quick() if args.quick else Options()
    loop = args.loop
    changes: dict[str, Any] = {
        "scenarios": _scenarios(args.scenarios),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "unary_concurrency": tuple(args.unary_concurrency) if args.unary_concurrency else None,
        "live_steps": tuple(args.live_steps) if args.live_steps else None,
        "live_window_s": args.live_window,
        "gateway_loop": args.gateway_loop or loop,
        "floor_loop": args.floor_loop or loop,
        "client_loop": args.client_loop or loop,
        "simulator_loop": args.simulator_loop or loop,
        "client": args.client,
        "callers_per_channel": args.callers_per_channel,
        "server_options": _pairs(args.server_option, numbers=True) or None,
        "client_options": _pairs(args.client_option, numbers=True) or None,
        "gateway_env": _pairs(args.gateway_env, numbers=False) or None,
        "targets": _targets(args.targets) if args.targets else None,
        "variant_of": args.variant_of,
        "variant_loop": args.variant_loop,
        "variant_env": _pairs(args.variant_env, numbers=False) or None,
        "profile_s": args.profile,
        "profile_native": args.profile_native or None,
        "profile_target": args.profile_target,
        "profile_kind": args.profile_kind,
        "keep_logs": args.keep_logs or None,
        "redis": args.redis or None,
    }
    options = dataclasses.replace(options, **{k: v for k, v in changes.items() if v is not None})
    return options, args.out, args.check


def _variant_text(options: Options) -> str:
    changes = [f"loop={options.variant_loop}"] if options.variant_loop else []
    changes += [f"{name}={value}" for name, value in options.variant_env]
    return ", ".join(changes) or "no change"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds through the finally blocks that stop the child processes.
    raise SystemExit(128 + signum)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    options, out, check = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    machine = machine_info()
    _log(render_machine(machine))
    began = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        with running_stack(options, _log) as stack:
            if "unary" in options.scenarios:
                results["unary"] = run_unary(stack, options, _log)
            if "stream" in options.scenarios:
                results["stream"] = run_stream(stack, options, _log)
            if "hold" in options.scenarios:
                results["hold"] = run_hold(stack, options, _log)
            if "live" in options.scenarios:
                results["live"] = run_live(stack, options, _log)
            results["startup"] = summarize_startup(stack.startup)
            results["telemetry"] = telemetry_check(stack)
            _log(f"telemetry: {results['telemetry']}")
            results["rss_mb_at_end"] = {
                target: server.child.rss_mb()
                for target, server in stack.servers.items()
                if target != "direct"
            }
            if options.profile_s:
                results["profile"] = run_profile(stack, options, out.parent, _log)
    except BenchError as exc:
        _log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _log("interrupted; every child process was stopped")
        return 130
    except SystemExit:
        _log("terminated; every child process was stopped")
        raise
    rows = build_rows(results)
    machine["load_average_end"] = os.getloadavg()
    report = {
        "machine": machine,
        "options": options_json(options),
        "elapsed_s": time.perf_counter() - began,
        "rows": [row.to_json() for row in rows],
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(render_table(rows))
    if options.variant_of:
        print(f"\nA/B in this run: {options.variant_of} vs variant ({_variant_text(options)})")
        print(render_variant_table(results, options.variant_of))
    if "profile" in results:
        print()
        print(render_hotspots(results["profile"]))
    foreign = [
        by_target["foreign_cores"]
        for scenario in ("unary", "stream")
        for by_concurrency in results.get(scenario, {}).values()
        for by_target in by_concurrency.values()
    ]
    if foreign:
        print(
            f"\nOther processes on this machine used {statistics.mean(foreign):.2f} cores on "
            f"average during the measurements (max {max(foreign):.2f} of {os.cpu_count()})."
        )
    missed = [row for row in rows if row.passed is False]
    _log(
        f"done in {report['elapsed_s']:.0f} s; wrote {out}; "
        + (f"{len(missed)} target(s) missed" if missed else "all targets met")
    )
    return 3 if check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
