"""Streaming through the client: event order, usage placement, framing, faults."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.domain.completion import (
    CallStats,
    ContentDelta,
    FinishReason,
    OutputDelta,
    ReasoningDelta,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    ToolCallDelta,
    ToolDefinition,
)
from service.errors import (
    DeadlineExceededError,
    StreamTruncatedError,
    UpstreamBadRequestError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
)
from service.simulator import RunningSimulator
from service.upstream import OpenRouterClient

from .conftest import ClientFactory, content_words, deadline_in, drain, request


async def collect(
    client: OpenRouterClient, directives: str, stats: CallStats | None = None, **fields: Any
) -> list[StreamEvent]:
    req = request(directives, **fields)
    return [e async for e in client.stream(req, deadline=deadline_in(5), stats=stats)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def check_shape(events: list[StreamEvent]) -> StreamFinished:
    """StreamStarted first, StreamFinished exactly once and last, no empty deltas."""
    assert isinstance(events[0], StreamStarted)
    assert sum(isinstance(e, StreamStarted) for e in events) == 1
    assert sum(isinstance(e, StreamFinished) for e in events) == 1
    assert all(e.text for e in events if isinstance(e, ContentDelta | ReasoningDelta))
    last = events[-1]
    assert isinstance(last, StreamFinished)
    return last


async def test_normal_stream(client: OpenRouterClient, sim: RunningSimulator) -> None:
    stats = CallStats()
    events = await collect(client, "[[sim:tokens=12]]", stats)
    finished = check_shape(events)
    started = events[0]
    assert isinstance(started, StreamStarted)
    assert started.id.startswith("gen-")
    assert (started.model, started.provider) == ("openai/gpt-4o-mini", "OpenAI")
    assert content_words(events) == 12
    assert finished.finish_reason is FinishReason.STOP
    assert finished.usage is not None
    assert finished.usage.completion_tokens == 12
    assert finished.usage.cost_usd is not None
    assert finished.usage.cost_usd > 0
    assert stats.generation_id == started.id
    assert (stats.served_model, stats.provider) == ("openai/gpt-4o-mini", "OpenAI")
    assert stats.usage == finished.usage
    assert stats.first_token_at is not None
    assert stats.relayed
    assert stats.upstream_seconds > 0
    record = await sim.state.wait_for_generation(started.id)
    assert record.streamed
    assert not record.cancelled


async def test_max_tokens_gives_length(client: OpenRouterClient) -> None:
    events = await collect(client, "[[sim:tokens=40]]", max_tokens=5)
    finished = check_shape(events)
    assert finished.finish_reason is FinishReason.LENGTH
    assert content_words(events) == 5


async def test_keepalive_burst(client: OpenRouterClient) -> None:
    events = await collect(client, "[[sim:keepalive=40]] [[sim:tokens=3]]")
    assert check_shape(events).finish_reason is FinishReason.STOP
    assert content_words(events) == 3


@pytest.mark.parametrize("shape", ["after-finish", "empty", "missing"])
async def test_usage_after_finish_shapes(client: OpenRouterClient, shape: str) -> None:
    stats = CallStats()
    events = await collect(client, f"[[sim:usage-shape={shape}]] [[sim:tokens=4]]", stats)
    finished = check_shape(events)
    assert finished.finish_reason is FinishReason.STOP
    assert finished.usage is not None
    assert finished.usage.completion_tokens == 4
    assert stats.usage == finished.usage


async def test_no_usage_chunk(client: OpenRouterClient) -> None:
    finished = check_shape(await collect(client, "[[sim:usage-shape=none]]"))
    assert finished.finish_reason is FinishReason.STOP
    assert finished.usage is None


@pytest.mark.parametrize("eol", ["crlf", "cr"])
async def test_line_endings(client: OpenRouterClient, eol: str) -> None:
    plain = await collect(client, "[[sim:tokens=6]]")
    other = await collect(client, f"[[sim:{eol}]] [[sim:tokens=6]]")
    check_shape(other)
    assert text_of(other) == text_of(plain)


async def test_tool_call_deltas(client: OpenRouterClient) -> None:
    tool = ToolDefinition(
        "get_weather",
        "Weather for a city",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    )
    events = await collect(client, "[[sim:tool-call]]", tools=(tool,))
    finished = check_shape(events)
    assert finished.finish_reason is FinishReason.TOOL_CALLS
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].name == "get_weather"
    assert calls[0].id
    assert calls[0].index == 0
    assert all(c.id is None and c.name is None for c in calls[1:])
    arguments = orjson.loads("".join(c.arguments for c in calls))
    assert set(arguments) >= {"city", "days"}


async def test_reasoning_deltas(client: OpenRouterClient) -> None:
    stats = CallStats()
    events = await collect(client, "[[sim:reasoning=5]] [[sim:tokens=3]]", stats)
    finished = check_shape(events)
    # Each piece comes with its reasoning_details block piece: one event holds both (or,
    # when pieces arrived together, one event holds their text and all their pieces).
    reasoning = [e for e in events if isinstance(e, OutputDelta) and e.reasoning]
    pieces = [detail for e in reasoning for detail in e.reasoning_details]
    assert len(pieces) == 5
    assert all(
        "".join(detail.text or "" for detail in e.reasoning_details) == e.reasoning
        for e in reasoning
    )
    # Reasoning comes before the answer.
    first_content = next(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
    assert events.index(reasoning[-1]) < first_content
    assert finished.usage is not None
    assert finished.usage.reasoning_tokens == 5


@pytest.mark.parametrize(
    ("variant", "cls", "status"),
    [
        ("", UpstreamUnavailableError, 502),
        ("=string-code", UpstreamUnavailableError, 500),
        ("=empty-choices", UpstreamUnavailableError, 502),
        ("=minimax", UpstreamBadRequestError, 400),
    ],
)
async def test_mid_stream_errors(
    client: OpenRouterClient, variant: str, cls: type[Exception], status: int
) -> None:
    stats = CallStats()
    seen: list[StreamEvent] = []
    req = request(f"[[sim:mid-stream-error{variant}]]")
    with pytest.raises(cls) as info:
        await drain(client.stream(req, deadline=deadline_in(5), stats=stats), seen)
    assert getattr(info.value, "status", None) == status
    assert isinstance(seen[0], StreamStarted)
    assert not any(isinstance(e, StreamFinished) for e in seen)
    assert "Worker local" not in str(info.value)  # metadata.raw stays out
    if variant == "=minimax":
        # The error chunk carried usage: kept for the ledger.
        assert stats.usage is not None
        assert stats.usage.completion_tokens > 0


async def test_drop_is_truncation(client: OpenRouterClient) -> None:
    with pytest.raises(StreamTruncatedError) as info:
        await collect(client, "[[sim:drop-after=2]]")
    assert info.value.reason == "UPSTREAM_STREAM_TRUNCATED"


async def test_no_finish_then_done(client: OpenRouterClient) -> None:
    finished = check_shape(await collect(client, "[[sim:no-finish]] [[sim:tokens=3]]"))
    assert finished.finish_reason is FinishReason.UNSPECIFIED
    assert finished.usage is not None


async def test_malformed_chunk(client: OpenRouterClient) -> None:
    stats = CallStats()
    with pytest.raises(UpstreamProtocolError):
        await collect(client, "[[sim:malformed]]", stats)
    assert stats.attempts == 1


async def test_html_instead_of_event_stream(client: OpenRouterClient) -> None:
    with pytest.raises(UpstreamProtocolError):
        await collect(client, "[[sim:bad-content-type]]")


async def test_deadline_mid_stream(client: OpenRouterClient) -> None:
    seen: list[StreamEvent] = []
    started = deadline_in(0)
    stream = client.stream(request("[[sim:pace=50]] [[sim:tokens=100]]"), deadline=deadline_in(0.3))
    with pytest.raises(DeadlineExceededError):
        await drain(stream, seen)
    assert 0.29 <= deadline_in(0) - started < 0.5
    assert any(isinstance(e, ContentDelta) for e in seen)


async def test_silence_mid_stream_is_read_timeout(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(read_timeout_ms=150)
    await client.start()
    with pytest.raises(UpstreamUnavailableError) as info:
        await collect(client, "[[sim:pace=400]] [[sim:tokens=3]]")
    assert info.value.reason == "UPSTREAM_TIMEOUT"
    # The role chunk was relayed before the silence: no retry.
    assert len(sim.state.requests) == 1


async def test_stream_and_unary_agree(client: OpenRouterClient) -> None:
    unary = await client.complete(request("[[sim:tokens=7]]"), deadline=deadline_in(5))
    streamed = await collect(client, "[[sim:tokens=7]]")
    assert text_of(streamed) == unary.content
