"""A stream relays what arrived together as one delta, and never holds an event back.

The fast simulator writes a whole stream in one piece, so the gateway finds every event
already buffered (as it does when it falls behind); the paced one writes a token at a time,
so the gateway is idle between them.
"""

from __future__ import annotations

import itertools
import json
import re
import time

import grpc
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from service.simulator.generate import seed_for, text_pieces
from service.simulator.scenarios import strip_directives
from tests.api.support import assert_whole_tokens, stream
from tests.api.test_rpcs import expected_reasoning, expected_text, weather_tool
from tests.harness import auth, start_gateway, user

FAST = SimulatorConfig(fast=True)
STAMP = re.compile(r"@(\d{19})")


def _deltas(messages: list[pb.StreamCompleteResponse]) -> list[pb.StreamDelta]:
    return [m.delta for m in messages if m.HasField("delta")]


async def test_tokens_that_arrived_together_go_out_as_one_delta_each_kept_whole() -> None:
    prompt = "A burst [[sim:tokens=200]]"
    async with start_gateway(sim_config=FAST) as gw:
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))
    assert outcome.error is None
    assert outcome.shape == ["start", "delta", "end"]
    deltas = _deltas(outcome.messages)
    assert len(deltas) < 20  # 200 tokens written at once: a handful of reads, not 200
    assert_whole_tokens(
        [d.content for d in deltas], text_pieces(seed_for(strip_directives(prompt)), 200)
    )
    assert outcome.messages[-1].end.usage.completion_tokens == 200


async def test_reasoning_and_answer_stay_apart_and_in_order_when_merged() -> None:
    prompt = "Think [[sim:reasoning=30]] [[sim:tokens=30]]"
    async with start_gateway(sim_config=FAST) as gw:
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))
    deltas = _deltas(outcome.messages)
    assert len(deltas) < 30
    # Each delta holds one kind; every reasoning delta comes before the first answer delta.
    assert all(bool(d.reasoning) != bool(d.content) for d in deltas)
    first_answer = next(i for i, d in enumerate(deltas) if d.content)
    assert all(d.reasoning for d in deltas[:first_answer])
    assert not any(d.reasoning for d in deltas[first_answer:])
    assert outcome.reasoning == expected_reasoning(prompt, 30)
    assert outcome.content == expected_text(prompt, 30)
    # The reasoning pieces all arrive, in order, beside their text.
    pieces = [piece for d in deltas for piece in d.reasoning_details]
    assert "".join(piece.text for piece in pieces) == outcome.reasoning


async def test_tool_call_pieces_merge_into_the_same_call() -> None:
    async with start_gateway(sim_config=FAST) as gw:
        outcome = await stream(
            gw,
            pb.StreamCompleteRequest(
                messages=[user("Weather? [[sim:tool-call=get_weather]]")], tools=[weather_tool()]
            ),
        )
    pieces = [p for d in _deltas(outcome.messages) for p in d.tool_calls]
    first, *rest = pieces
    assert first.name == "get_weather"
    assert first.id.startswith("call_")
    assert all(p.index == 0 and not p.id and not p.name for p in rest)
    assert isinstance(json.loads("".join(p.arguments for p in pieces))["city"], str)
    assert outcome.messages[-1].end.finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_tokens_buffered_before_an_error_are_relayed_before_it() -> None:
    async with start_gateway(sim_config=FAST) as gw:
        outcome = await stream(
            gw, pb.StreamCompleteRequest(messages=[user("Fail late [[sim:mid-stream-error]]")])
        )
    assert outcome.error is not None
    assert outcome.error.code() is grpc.StatusCode.UNAVAILABLE
    assert outcome.shape == ["start", "delta"]
    assert len(outcome.content.split()) == 3


async def test_an_idle_stream_relays_each_token_before_the_next_is_written() -> None:
    # Stamped tokens 100 ms apart: had the gateway waited for a second event to merge with,
    # a delta would reach the caller only after the next token was written.
    prompt = "Slowly [[sim:tokens=4]] [[sim:pace=100]] [[sim:stamp]]"
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(prompt)]), metadata=auth()
        )
        received: list[tuple[int, list[int]]] = []
        async for message in call:
            if message.HasField("delta"):
                stamps = [int(s) for s in STAMP.findall(message.delta.content)]
                received.append((time.time_ns(), stamps))
    assert [len(stamps) for _, stamps in received] == [1, 1, 1, 1]
    for (arrived, _), (_, [next_written]) in itertools.pairwise(received):
        assert arrived < next_written
