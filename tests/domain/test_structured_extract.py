"""Reading JSON out of replies: strict first, then fences and leading prose."""

from __future__ import annotations

import pytest

from service.domain.json_extract import MAX_START_CANDIDATES, parse_reply

OBJECT = '{"title": "t", "bullets": ["a [1]", "b {x}"]}'
VALUE = {"title": "t", "bullets": ["a [1]", "b {x}"]}


def test_strict_json_is_not_a_repair() -> None:
    parsed = parse_reply(f"  {OBJECT}\n")
    assert parsed.ok
    assert parsed.value == VALUE
    assert not parsed.extracted


@pytest.mark.parametrize(
    "text",
    [
        f"Here is the JSON you asked for:\n```json\n{OBJECT}\n```\n",
        f"```\n{OBJECT}\n```",
        f"Sure [see notes] - the answer: {OBJECT} Hope that helps {{!}}",
        f"Result:\n{OBJECT}\n\nLet me know.",
        f'Note {{"broken": }} then {OBJECT}',
    ],
    ids=["fenced", "bare-fence", "prose-with-brackets", "prose-around", "broken-first"],
)
def test_tolerant_extraction(text: str) -> None:
    parsed = parse_reply(text)
    assert parsed.ok
    assert parsed.extracted
    assert parsed.value == VALUE


def test_escaped_quotes_and_brackets_inside_strings() -> None:
    text = 'Answer: {"a": "quote \\" and } and \\\\", "b": ["]"]} trailing'
    parsed = parse_reply(text)
    assert parsed.ok
    assert parsed.value == {"a": 'quote " and } and \\', "b": ["]"]}


def test_arrays_are_found_too() -> None:
    parsed = parse_reply('The list: [1, 2, {"x": [3]}].')
    assert parsed.value == [1, 2, {"x": [3]}]


def test_prose_only_is_not_json_and_the_problem_quotes_nothing() -> None:
    parsed = parse_reply("I cannot help with secret-plan-42.")
    assert not parsed.ok
    assert parsed.problem.startswith("not valid JSON")
    assert "secret" not in parsed.problem
    assert not parsed.truncated


def test_an_unclosed_object_is_truncated() -> None:
    parsed = parse_reply('Here: {"title": "t", "bullets": ["a", "b')
    assert not parsed.ok
    assert parsed.truncated
    assert "never closed" in parsed.problem


def test_empty_reply() -> None:
    parsed = parse_reply("  \n")
    assert not parsed.ok
    assert parsed.problem == "the reply was empty"


def test_mismatched_brackets_are_skipped() -> None:
    parsed = parse_reply('oops ] [} then {"ok": true}')
    assert parsed.value == {"ok": True}


def test_number_of_candidates_is_bounded() -> None:
    noise = "[x] " * (MAX_START_CANDIDATES + 1)
    parsed = parse_reply(noise + '{"late": 1}')
    assert not parsed.ok
