"""The ``live`` scenario's orchestration: step the number of live streams, find capacity.

Each step keeps N streams open against a target (``bench/live.py`` in the load process) and
reads the relay lag of every token received in the window. Targets are stepped together,
interleaved at each N; a target stops stepping once its p99 lag passes the limit, a call
failed, or the pace was not held. Its capacity is the largest N that stayed within the
limit, and, between that step and the first one over, the N at which the p99 lag crosses the
limit, interpolated linearly.

The pace is held when the tokens received come to at least ``PACE_HELD`` of what N streams
at the simulator's pace offer (N × 40 tokens/s). The lag runs from each token's stamp, taken
when the simulator writes it: a simulator (or generator) starved of CPU writes fewer tokens,
later, and their lag can stay small while far fewer than N streams' worth are relayed. Such a
step is over the machine's capacity, whatever the lag says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.procs import process_tree

LAG_LIMIT_MS = 50.0
PACE_HELD = 0.9
"""The share of the offered tokens/s a step must receive to count (see above)."""
LIVE_STEPS = (100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000)
QUICK_LIVE_STEPS = (100, 300, 600, 1000)
_CALLERS_PER_CHANNEL = 50
# Time to let the server settle between steps (cancelled streams' accounting and so on).
_SETTLE_S = 1.0


def ramp_seconds(streams: int) -> float:
    """How long the callers take to start: opening a stream costs the gateway a few ms of
    CPU, so a thousand opened at once would measure the opening, not the relay."""
    return max(0.5, streams / 500)


def crossing(steps: Sequence[Mapping[str, Any]], limit_ms: float = LAG_LIMIT_MS) -> dict[str, Any]:
    """Capacity from the steps of one target, in order of N."""
    passed: Mapping[str, Any] | None = None
    for step in steps:
        p99 = step["lag_ms"]["p99"]
        ok = held(step) and not math.isnan(p99) and p99 <= limit_ms
        if not ok:
            if passed is None:
                return {"streams": 0, "interpolated": math.nan, "bounded": True}
            low, high = passed["concurrency"], step["concurrency"]
            p_low = passed["lag_ms"]["p99"]
            estimate = float(high)
            if not math.isnan(p99) and p99 > p_low and held(step):
                estimate = low + (limit_ms - p_low) * (high - low) / (p99 - p_low)
            return {"streams": low, "interpolated": estimate, "bounded": True}
        passed = step
    top = passed["concurrency"] if passed is not None else 0
    # Every step passed: the capacity is at least the last one.
    return {"streams": top, "interpolated": float(top), "bounded": False}


def held(step: Mapping[str, Any]) -> bool:
    """No call failed, and the pace was held (steps from before the check: no figure)."""
    offered = step.get("offered_tokens_per_s")
    kept = offered is None or step["tokens_per_s"] >= PACE_HELD * offered
    return kept and not step["errors"]


def run_live(
    servers: Mapping[str, Any],
    simulator_pid: int,
    make_job: Callable[[str, int], dict[str, Any]],
    run_job: Callable[[dict[str, Any], float], dict[str, Any]],
    check_alive: Callable[[], None],
    *,
    steps: Sequence[int],
    window_s: float,
    pace_ms: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Step every target in ``servers`` (name -> object with ``child.pid``) through ``steps``."""
    results: dict[str, dict[str, Any]] = {name: {"steps": []} for name in servers}
    active = list(servers)
    for streams in steps:
        for target in list(active):
            pids = process_tree(servers[target].child.pid)
            job = make_job(target, streams)
            ramp = ramp_seconds(streams)
            job.update(
                callers_per_channel=_CALLERS_PER_CHANNEL,
                ramp_s=ramp,
                warmup_s=ramp + 2.0,
                duration_s=window_s,
                watch_pids={"server": pids, "simulator": [simulator_pid]},
            )
            result = run_job(job, ramp + 2.0 + window_s + 120)
            result["offered_tokens_per_s"] = streams * 1000 / pace_ms
            check_alive()
            results[target]["steps"].append(result)
            lag = result["lag_ms"]
            cores = result["cores"]
            log(
                f"live {target} N={streams}: lag p50 {lag['p50']:.1f} p99 {lag['p99']:.1f} ms, "
                f"{result['tokens_per_s']:.0f} of {result['offered_tokens_per_s']:.0f} tokens/s "
                f"({result['tokens_per_message']:.2f} a "
                f"message), cores server {cores.get('server', math.nan):.2f} simulator "
                f"{cores.get('simulator', math.nan):.2f} generator "
                f"{cores.get('generator', math.nan):.2f}, errors {result['errors']}"
            )
            if not held(result) or not lag["p99"] <= LAG_LIMIT_MS:
                active.remove(target)
            time.sleep(_SETTLE_S)
        if not active:
            break
    for data in results.values():
        data["capacity"] = crossing(data["steps"])
    return results
