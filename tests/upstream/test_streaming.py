"""The stream state machine on recorded streams: events, usage placement, errors, EOF."""

from __future__ import annotations

from typing import Any

import pytest

from service.domain.completion import (
    ContentDelta,
    FinishReason,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    Usage,
)
from service.errors import (
    StreamTruncatedError,
    UpstreamBadRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
)
from service.upstream import wire
from service.upstream.sse import SSEDecoder
from service.upstream.streaming import StreamAssembler

from . import samples


def run(raw: bytes, *, eof: bool = True) -> tuple[list[StreamEvent], StreamAssembler]:
    decoder = SSEDecoder()
    assembler = StreamAssembler(lambda: 42.0)
    out: list[StreamEvent] = []
    for event in [*decoder.feed(raw), *decoder.close()]:
        out.extend(assembler.on_event(event))
        if assembler.done:
            break
    if eof or assembler.done:
        out.append(assembler.finish())
    return out, assembler


def feed_all(assembler: StreamAssembler, raw: bytes) -> None:
    for event in SSEDecoder().feed(raw):
        assembler.on_event(event)


def chunk(choices: Any = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "gen-1", "model": "m", "provider": "P", **fields}
    if choices is not None:
        body["choices"] = choices
    return body


def delta(content: str = "", finish: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]


def test_grok_stream() -> None:
    events, assembler = run(samples.grok_stream())
    assert events == [
        StreamStarted(samples.GROK_ID, "x-ai/grok-4", "xAI", 1770044155),
        ContentDelta("I'm"),
        ContentDelta(" fine"),
        ContentDelta(", thanks"),
        StreamFinished(FinishReason.STOP, "completed", wire.parse_usage(samples.GROK_USAGE)),
    ]
    assert assembler.first_token_at == 42.0


@pytest.mark.parametrize("shape", ["one-empty-delta", "empty", "missing"])
def test_usage_after_finish_in_all_three_shapes(shape: str) -> None:
    usage_choices: Any = {"one-empty-delta": delta(), "empty": [], "missing": None}[shape]
    raw = samples.sse_bytes(
        [
            chunk(delta("a")),
            chunk(delta("", "length")),
            chunk(usage_choices, usage={"prompt_tokens": 1, "completion_tokens": 2}),
        ]
    )
    events, _ = run(raw)
    assert events[-1] == StreamFinished(FinishReason.LENGTH, "", Usage(1, 2, 3))
    assert [e for e in events if isinstance(e, StreamFinished)] == [events[-1]]


def test_minimax_error_after_finish_raises_and_keeps_usage() -> None:
    with pytest.raises(UpstreamBadRequestError) as info:
        run(samples.minimax_stream())
    assert "Token limit reached" not in info.value.message
    # The assembler kept the usage for the ledger even though the stream failed.
    assembler = StreamAssembler(lambda: 0.0)
    with pytest.raises(UpstreamBadRequestError):
        feed_all(assembler, samples.minimax_stream())
    assert assembler.usage == Usage(43, 10, 53, cost_usd=0.0)
    assert assembler.finish_reason == "length"


def test_documented_mid_stream_error() -> None:
    with pytest.raises(UpstreamRateLimitError):
        run(samples.documented_error_stream())


def test_eof_after_finish_without_done_finishes_cleanly() -> None:
    raw = samples.sse_bytes([chunk(delta("a")), chunk(delta("", "stop"))], done=False)
    events, _ = run(raw)
    assert events[-1] == StreamFinished(FinishReason.STOP, "", None)


def test_eof_before_finish_is_truncation() -> None:
    raw = samples.sse_bytes([chunk(delta("a"))], done=False)
    with pytest.raises(StreamTruncatedError):
        run(raw)


def test_no_finish_then_done() -> None:
    events, _ = run(samples.sse_bytes([chunk(delta("a"))]))
    assert events[-1] == StreamFinished(FinishReason.UNSPECIFIED, "", None)


def test_done_only_still_starts_first() -> None:
    events, _ = run(b"data: [DONE]\n\n")
    assert events == [StreamStarted("", "", ""), StreamFinished(FinishReason.UNSPECIFIED, "", None)]


def test_events_after_done_are_ignored() -> None:
    raw = samples.sse_bytes([chunk(delta("a", "stop"))]) + b'data: {"id": "x"}\n\n'
    events, assembler = run(raw)
    assert assembler.done
    assert sum(isinstance(e, StreamFinished) for e in events) == 1


def test_malformed_chunk_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        run(b'data: {"id": "gen-1", "choices": [}\n\n')


def test_empty_content_is_not_relayed_and_started_is_first() -> None:
    raw = samples.sse_bytes([{"choices": delta("")}, {"choices": delta("x")}])
    events, _ = run(raw)
    assert events[0] == StreamStarted("", "", "")
    assert events[1] == ContentDelta("x")
    assert len(events) == 3
