"""Live pacing for benchmarks: ``pace`` on a schedule, ``jitter``, and ``stamp``ed tokens."""

from __future__ import annotations

import itertools
import re
import statistics
import time
from typing import Any

import aiohttp
import pytest

from service.simulator import RunningSimulator
from service.simulator.testing import chat_body, parse_sse

CHAT = "/api/v1/chat/completions"
STAMP = re.compile(r"^@(\d{19})(.*)$", re.DOTALL)


async def _pieces(session: aiohttp.ClientSession, content: str) -> list[str]:
    async with session.post(CHAT, json=chat_body(content, stream=True)) as resp:
        assert resp.status == 200
        raw = await resp.read()
    chunks: list[dict[str, Any]] = [
        frame.json() for frame in parse_sse(raw) if frame.data not in (None, "[DONE]")
    ]
    return [
        choice["delta"]["content"]
        for chunk in chunks
        for choice in chunk.get("choices", ())
        if choice["delta"].get("content")
    ]


async def test_stamped_tokens_carry_their_write_time_and_the_same_words(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    plain = await _pieces(session, "Say it [[sim:tokens=12]]")
    before = time.time_ns()
    stamped = await _pieces(session, "Say it [[sim:tokens=12]] [[sim:stamp]] [[sim:pace=1]]")
    after = time.time_ns()

    matches = [STAMP.match(piece) for piece in stamped]
    assert all(matches), stamped
    stamps = [int(m.group(1)) for m in matches if m]
    words = [m.group(2) for m in matches if m]
    # Every token is its own event, stamped in order, within the call; the words unchanged.
    assert words == plain
    assert stamps == sorted(stamps)
    assert before <= stamps[0]
    assert stamps[-1] <= after


async def test_paced_tokens_are_never_early_and_jitter_varies_the_gaps(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    pace_ms, jitter_ms, tokens = 20.0, 10.0, 30
    started = time.time_ns()
    stamped = await _pieces(
        session,
        f"Go [[sim:tokens={tokens}]] [[sim:pace={pace_ms:g}]] [[sim:jitter={jitter_ms:g}]] "
        "[[sim:stamp]]",
    )
    stamps = [int(piece[1:20]) for piece in stamped]
    assert len(stamps) == tokens
    # Token k is due k pauses of at least pace - jitter after the call began: on a schedule,
    # a late write makes later pauses shorter but never brings a token forward of its turn.
    for k, stamp in enumerate(stamps, start=1):
        assert stamp - started >= k * (pace_ms - jitter_ms) * 1e6
    gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    assert statistics.pstdev(gaps_ms) > 1.0
    assert statistics.mean(gaps_ms) == pytest.approx(pace_ms, abs=jitter_ms)


@pytest.mark.parametrize("directive", ["[[sim:jitter=-1]]", "[[sim:jitter=x]]", "[[sim:stamp=1]]"])
async def test_bad_live_directives_are_refused(
    sim: RunningSimulator, session: aiohttp.ClientSession, directive: str
) -> None:
    async with session.post(CHAT, json=chat_body(f"hi {directive}", stream=True)) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["message"].startswith("Simulator directive error")
