"""Streams with the new delta kinds (reasoning pieces and signatures, encrypted reasoning,
citations, logprobs, refusals, images, unknown keys), decoded whole and split at every byte
boundary: the same domain events either way."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from service.domain.completion import (
    Blob,
    ContentDelta,
    OutputDelta,
    ReasoningDetail,
    ReasoningDetailType,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    UnsupportedOutput,
    UrlCitation,
)
from service.upstream.sse import SSEDecoder
from service.upstream.streaming import StreamAssembler

PIXEL = b"\x89PNG\r\n\x1a\n" + b"tiny-image-bytes"
TEXT = "reasoning.text"
CLAUDE = "anthropic-claude-v1"


def chunk(delta: dict[str, Any], **choice: Any) -> bytes:
    body = {
        "id": "gen-1",
        "provider": "P",
        "model": "m",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", **delta}, **choice}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def detail(**fields: Any) -> dict[str, Any]:
    return {"type": TEXT, **fields, "format": CLAUDE, "index": 0}


TRANSCRIPT = b"".join(
    [
        b": OPENROUTER PROCESSING\n\n",
        chunk({"content": "", "reasoning": None, "reasoning_details": []}),
        chunk(
            {"content": "", "reasoning": None, "reasoning_details": [detail(text="", signature="")]}
        ),
        chunk({"content": "", "reasoning": "Two", "reasoning_details": [detail(text="Two")]}),
        chunk(
            {
                "content": "",
                "reasoning": " and two.",
                "reasoning_details": [detail(text=" and two.")],
            }
        ),
        chunk({"content": "", "reasoning": None, "reasoning_details": [detail(signature="c2ln")]}),
        b": OPENROUTER PROCESSING\r\n\r\n",
        chunk(
            {
                "content": "",
                "reasoning": None,
                "reasoning_details": [
                    {
                        "type": "reasoning.encrypted",
                        "data": "gAAAA-opaque",
                        "id": "rs_1",
                        "format": "openai-responses-v1",
                        "index": 0,
                    }
                ],
            }
        ),
        chunk(
            {"content": "Four"},
            logprobs={
                "content": [
                    {
                        "token": "Four",
                        "logprob": -0.5,
                        "bytes": [70, 111, 117, 114],
                        "top_logprobs": [],
                    }
                ]
            },
        ),
        chunk(
            {
                "content": "",
                "annotations": [
                    {
                        "type": "url_citation",
                        "url_citation": {
                            "url": "https://a.example/x",
                            "title": "",
                            "content": "c",
                            "start_index": 0,
                            "end_index": 4,
                        },
                    }
                ],
            }
        ),
        chunk({"content": "", "refusal": "No."}),
        chunk({"content": "", "audio": {"data": "UklGRg==", "transcript": "Four"}}),
        chunk(
            {
                "content": "",
                "images": [
                    {
                        "type": "image_url",
                        "index": 0,
                        "image_url": {
                            "url": "data:image/png;base64," + base64.b64encode(PIXEL).decode()
                        },
                    }
                ],
            },
            finish_reason="stop",
            native_finish_reason="STOP",
        ),
        b'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1300,'
        b'"total_tokens":1309,"cost":0.04,"completion_tokens_details":{"image_tokens":1290}}}\n\n',
        b"data: [DONE]\n\n",
    ]
)


def run(pieces: list[bytes]) -> list[StreamEvent]:
    decoder = SSEDecoder()
    assembler = StreamAssembler(lambda: 1.0)
    events: list[StreamEvent] = []
    for piece in pieces:
        for sse in decoder.feed(piece):
            events.extend(assembler.on_event(sse))
    for sse in decoder.close():
        events.extend(assembler.on_event(sse))
    events.append(assembler.finish())
    return events


def test_every_new_delta_kind_becomes_one_event() -> None:
    events = run([TRANSCRIPT])
    assert isinstance(events[0], StreamStarted)
    deltas = [e for e in events if isinstance(e, OutputDelta)]
    # The empty opening `reasoning_details: []` makes no event; every other chunk one.
    assert [d.reasoning for d in deltas[:4]] == ["", "Two", " and two.", ""]
    assert deltas[0].reasoning_details == (
        ReasoningDetail(ReasoningDetailType.TEXT, format=CLAUDE, index=0, text="", signature=""),
    )
    assert deltas[3].reasoning_details[0].signature == "c2ln"
    assert deltas[4].reasoning_details[0].data == "gAAAA-opaque"
    assert deltas[5].content == "Four"
    assert deltas[5].logprobs is not None
    assert deltas[5].logprobs.content[0].bytes == b"Four"
    assert deltas[6].annotations == (UrlCitation("https://a.example/x", "", "c", 0, 4),)
    assert deltas[7].refusal == "No."
    assert deltas[8].images[0].source == Blob("image/png", PIXEL)
    assert deltas[8].images[0].index == 0
    assert not any(isinstance(e, ContentDelta) for e in events)  # all in rich deltas
    finished = events[-1]
    assert isinstance(finished, StreamFinished)
    assert finished.reasoning_details == (
        ReasoningDetail(
            ReasoningDetailType.TEXT, format=CLAUDE, index=0, text="Two and two.", signature="c2ln"
        ),
        ReasoningDetail(
            ReasoningDetailType.ENCRYPTED,
            id="rs_1",
            format="openai-responses-v1",
            index=0,
            data="gAAAA-opaque",
        ),
    )
    assert finished.unsupported == (UnsupportedOutput("delta.audio", 1),)
    assert finished.usage is not None
    assert finished.usage.completion_image_tokens == 1290


def test_split_at_every_byte_boundary_gives_the_same_events() -> None:
    whole = run([TRANSCRIPT])
    for at in range(1, len(TRANSCRIPT)):
        assert run([TRANSCRIPT[:at], TRANSCRIPT[at:]]) == whole, f"split at byte {at}"


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    pieces = [TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))]
    assert run(pieces) == run([TRANSCRIPT])
