"""The live scenario's capacity: the largest N within the lag limit whose pace was held."""

from __future__ import annotations

from typing import Any

from bench.capacity import crossing, held


def _step(streams: int, p99_ms: float, tokens_per_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "concurrency": streams,
        "lag_ms": {"p99": p99_ms},
        "tokens_per_s": tokens_per_s,
        "offered_tokens_per_s": streams * 40.0,
        "errors": {},
        **extra,
    }


def test_the_capacity_is_the_last_step_within_the_lag_limit() -> None:
    steps = [_step(100, 10.0, 4000), _step(200, 30.0, 8000), _step(300, 70.0, 12000)]
    found = crossing(steps)
    assert found["streams"] == 200
    assert found["bounded"] is True
    assert found["interpolated"] == 250.0  # 30 ms at 200, 70 ms at 300: 50 ms half-way


def test_a_step_that_did_not_hold_the_pace_is_over_capacity_whatever_its_lag() -> None:
    # 600 streams offer 24,000 tokens/s; a starved simulator wrote 8,000, with a small lag.
    steps = [_step(300, 20.0, 11900), _step(600, 15.0, 8000)]
    assert not held(steps[1])
    found = crossing(steps)
    assert found["streams"] == 300
    assert found["interpolated"] == 600.0  # no lag crossing to interpolate: the step itself


def test_a_failed_call_fails_its_step_and_every_step_held_is_unbounded() -> None:
    assert not held(_step(100, 1.0, 4000, errors={"UNAVAILABLE": 1}))
    found = crossing([_step(100, 1.0, 3990), _step(200, 2.0, 7990)])
    assert found == {"streams": 200, "interpolated": 200.0, "bounded": False}
