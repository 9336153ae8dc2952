"""The SSE decoder: recorded samples split at every position and in every line ending."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from service.upstream.sse import SSEDecoder, SSEEvent

from . import samples

EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
STREAMS: dict[str, Callable[[str], bytes]] = {
    "grok": samples.grok_stream,
    "minimax": samples.minimax_stream,
    "documented-error": samples.documented_error_stream,
}


def decode(*parts: bytes) -> tuple[list[SSEEvent], int]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for part in parts:
        events.extend(decoder.feed(part))
    events.extend(decoder.close())
    return events, decoder.comments


def expected_data(name: str) -> list[str]:
    chunks = {
        "grok": samples.GROK_CHUNKS,
        "minimax": samples.MINIMAX_CHUNKS,
        "documented-error": samples.DOCUMENTED_CHUNKS,
    }[name]
    data = [orjson.dumps(chunk).decode() for chunk in chunks]
    return data if name == "documented-error" else [*data, "[DONE]"]


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@pytest.mark.parametrize("name", STREAMS.keys())
def test_every_split_position_gives_the_same_events(name: str, eol: str) -> None:
    raw = STREAMS[name](eol)
    whole, comments = decode(raw)
    assert [e.data for e in whole] == expected_data(name)
    assert all(e.event == "message" for e in whole)
    assert comments == {"grok": samples.GROK_KEEPALIVES, "minimax": 0, "documented-error": 2}[name]
    for i in range(len(raw) + 1):
        assert decode(raw[:i], raw[i:]) == (whole, comments), f"split at {i}"


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@pytest.mark.parametrize("name", STREAMS.keys())
def test_single_bytes_give_the_same_events(name: str, eol: str) -> None:
    raw = STREAMS[name](eol)
    singles = [raw[i : i + 1] for i in range(len(raw))]
    assert decode(*singles) == decode(raw)


def test_three_way_splits_around_crlf_and_comment_bursts() -> None:
    raw = samples.sse_bytes(samples.GROK_CHUNKS[:2], keepalives=3, eol="\r\n")
    whole = decode(raw)
    for i in range(0, len(raw), 7):
        for j in range(i, len(raw), 11):
            assert decode(raw[:i], raw[i:j], raw[j:]) == whole


def test_cr_at_end_of_one_read_and_lf_at_start_of_next_is_one_line_end() -> None:
    events, _ = decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert [e.data for e in events] == ["a\nb"]


def test_lone_cr_then_data_in_next_read() -> None:
    events, _ = decode(b"data: a\r", b"\r", b"data: b\r\r")
    assert [e.data for e in events] == ["a", "b"]


def test_multi_line_data_is_joined_with_newline() -> None:
    events, _ = decode(b"data: first\ndata:second\ndata:  third\ndata\n\n")
    assert [e.data for e in events] == ["first\nsecond\n third\n"]


def test_event_id_and_retry_fields() -> None:
    events, _ = decode(
        b"event: update\nid: 7\nretry: 1500\ndata: x\n\n"
        b"data: y\n\n"
        b"id: bad\x00id\nretry: soon\ndata: z\n\n"
    )
    assert events == [
        SSEEvent(data="x", event="update", id="7", retry=1500),
        SSEEvent(data="y", event="message", id="7", retry=1500),
        SSEEvent(data="z", event="message", id="7", retry=1500),
    ]


def test_comments_between_data_lines_and_in_bursts_are_skipped() -> None:
    events, comments = decode(b": a\n:b\n\n: c\n\ndata: 1\n: mid\ndata: 2\n\n")
    assert [e.data for e in events] == ["1\n2"]
    assert comments == 4


def test_blank_lines_without_data_dispatch_nothing() -> None:
    events, _ = decode(b"\n\n\r\n\revent: ping\n\n")
    assert events == []


def test_empty_data_line_dispatches_an_empty_event() -> None:
    events, _ = decode(b"data:\n\n")
    assert [e.data for e in events] == [""]


def test_bom_at_start_is_dropped_even_when_split() -> None:
    raw = b"\xef\xbb\xbfdata: a\n\n"
    for i in range(len(raw) + 1):
        events, _ = decode(raw[:i], raw[i:])
        assert [e.data for e in events] == ["a"]
    # Only at the very start: later it is part of the field name, which is then ignored.
    events, _ = decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    assert [e.data for e in events] == ["a"]


def test_unknown_fields_are_ignored() -> None:
    events, _ = decode(b"foo: bar\ndata: a\n\n")
    assert [e.data for e in events] == ["a"]


def test_utf8_split_inside_a_character() -> None:
    raw = "data: héllo ✓\n\n".encode()
    for i in range(len(raw) + 1):
        events, _ = decode(raw[:i], raw[i:])
        assert [e.data for e in events] == ["héllo ✓"]


def test_close_dispatches_complete_lines_but_drops_an_unterminated_one() -> None:
    events, _ = decode(b"data: [DONE]\n")
    assert [e.data for e in events] == ["[DONE]"]
    events, _ = decode(b'data: {"id": "gen-1", "cho')
    assert events == []
    events, _ = decode(b"data: a\ndata: cut")
    assert [e.data for e in events] == ["a"]


def test_long_line_in_many_reads() -> None:
    payload = b"x" * 100_000
    raw = b"data: " + payload + b"\n\n"
    parts = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]
    events, _ = decode(*parts)
    assert [e.data for e in events] == [payload.decode()]


def test_feed_after_events_keeps_state_per_decoder() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("a")]
    assert decoder.close() == []
