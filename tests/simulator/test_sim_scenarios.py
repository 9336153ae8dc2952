"""Directive parsing, without HTTP."""

from __future__ import annotations

import pytest

from service.simulator.scenarios import (
    DEFAULT_SCENARIO,
    DirectiveError,
    JsonMode,
    MidStreamError,
    UsageShape,
    parse_scenario,
    strip_directives,
)


def test_directives_are_collected_from_all_messages_and_text_parts() -> None:
    messages = [
        {"role": "system", "content": "be brief [[sim:error=429]]"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                {"type": "text", "text": "[[sim:retry-after=0.5]][[sim:fail-times=2]]"},
            ],
        },
        {"role": "assistant", "content": None},
    ]
    scenario = parse_scenario(messages)
    assert scenario.error == "429"
    assert scenario.retry_after == 0.5
    assert scenario.fail_times == 2


def test_no_directives_gives_the_default() -> None:
    assert parse_scenario([{"role": "user", "content": "plain [sim:hang]"}]) is DEFAULT_SCENARIO


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("[[sim:mid-stream-error]]", "mid_stream_error", MidStreamError.DOCUMENTED),
        ("[[sim:mid-stream-error=MiniMax]]", "mid_stream_error", MidStreamError.MINIMAX),
        ("[[sim:usage-shape-missing]]", "usage_shape", UsageShape.MISSING),
        ("[[sim:usage-shape=none]]", "usage_shape", UsageShape.NONE),
        ("[[sim:json]]", "json_mode", JsonMode.VALID),
        ("[[sim:json=wrong-once]]", "json_mode", JsonMode.WRONG_ONCE),
        ("[[sim:tool-call=lookup]]", "tool_name", "lookup"),
        ("[[sim:reasoning]]", "reasoning_tokens", 8),
        ("[[sim:crlf]]", "line_ending", "\r\n"),
        ("[[sim:cr]]", "line_ending", "\r"),
        ("[[sim:error=403-guardrail]]", "error", "403-guardrail"),
        ("[[sim:ERROR=NEW-SHAPE]]", "error", "new-shape"),
        ("[[sim:delay=12.5]]", "delay_ms", 12.5),
    ],
)
def test_directive_values(text: str, field: str, value: object) -> None:
    assert getattr(parse_scenario([{"role": "user", "content": text}]), field) == value


@pytest.mark.parametrize(
    "text",
    [
        "[[sim:nope]]",
        "[[sim:error=200]]",
        "[[sim:error=600]]",
        "[[sim:hang=1]]",
        "[[sim:tokens=0]]",
        "[[sim:delay=nan]]",
        "[[sim:usage-shape]]",
        "[[sim:fail-times=1]]",
    ],
)
def test_invalid_directives_raise(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_scenario([{"role": "user", "content": text}])


def test_strip_directives() -> None:
    assert strip_directives("flag  me [[sim:error=403]] now") == "flag me now"
