"""Merging stream events that arrived together: what comes out means what went in."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from service.domain.coalescing import coalesce
from service.domain.completion import (
    Blob,
    ContentDelta,
    FinishReason,
    GeneratedImage,
    Logprobs,
    OutputDelta,
    ReasoningDelta,
    ReasoningDetail,
    ReasoningDetailType,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    TokenLogprob,
    ToolCallDelta,
    UrlCitation,
)

START = StreamStarted("gen-1", "m", "p")
END = StreamFinished(FinishReason.STOP, "stop", None)


def _detail(text: str, index: int = 0) -> ReasoningDetail:
    return ReasoningDetail(ReasoningDetailType.TEXT, index=index, text=text, format="unknown")


def _logprob(token: str) -> Logprobs:
    return Logprobs(content=(TokenLogprob(token, -0.5),))


def test_one_event_and_none_come_back_as_they_were() -> None:
    assert coalesce([]) == []
    single = [ContentDelta("a")]
    assert coalesce(single) is single


def test_a_run_of_text_becomes_one_delta_between_start_and_end() -> None:
    events: list[StreamEvent] = [
        START,
        ContentDelta("Hel"),
        ContentDelta("lo"),
        ContentDelta(" you"),
        END,
    ]
    assert coalesce(events) == [START, ContentDelta("Hello you"), END]


def test_kinds_are_never_merged_with_each_other() -> None:
    events: list[StreamEvent] = [
        ReasoningDelta("think"),
        ReasoningDelta("ing"),
        ContentDelta("An"),
        ContentDelta("swer"),
        ToolCallDelta(0, "call_1", "f", ""),
        ToolCallDelta(0, None, None, '{"a"'),
        ToolCallDelta(0, None, None, ":1}"),
    ]
    assert coalesce(events) == [
        ReasoningDelta("thinking"),
        ContentDelta("Answer"),
        ToolCallDelta(0, "call_1", "f", '{"a":1}'),
    ]


def test_tool_call_pieces_merge_per_call_and_a_new_call_starts_a_new_piece() -> None:
    events = [
        ToolCallDelta(0, "call_1", "f", "{"),
        ToolCallDelta(0, None, None, "}"),
        ToolCallDelta(1, "call_2", "g", "{"),
        ToolCallDelta(1, None, None, "}"),
        # A piece that names a call again (a provider restarting index 0) is kept apart.
        ToolCallDelta(0, "call_3", "h", "[]"),
    ]
    assert coalesce(events) == [
        OutputDelta(
            tool_calls=(
                ToolCallDelta(0, "call_1", "f", "{}"),
                ToolCallDelta(1, "call_2", "g", "{}"),
                ToolCallDelta(0, "call_3", "h", "[]"),
            )
        )
    ]


def test_reasoning_pieces_keep_every_detail_in_order() -> None:
    first = OutputDelta(reasoning="a", reasoning_details=(_detail("a"),))
    signature = ReasoningDetail(ReasoningDetailType.TEXT, index=0, signature="sig")
    second = OutputDelta(reasoning="", reasoning_details=(signature,))
    plain = ReasoningDelta("b")
    assert coalesce([first, plain, second]) == [
        OutputDelta(reasoning="ab", reasoning_details=(_detail("a"), signature))
    ]


def test_text_with_log_probabilities_keeps_them_token_by_token() -> None:
    events = [
        OutputDelta(content="Hi", logprobs=_logprob("Hi")),
        OutputDelta(content=" there", logprobs=_logprob(" there")),
    ]
    assert coalesce(events) == [
        OutputDelta(content="Hi there", logprobs=_logprob("Hi") + _logprob(" there"))
    ]


def test_refusal_pieces_are_joined() -> None:
    events = [OutputDelta(refusal="I can"), OutputDelta(refusal="not")]
    assert coalesce(events) == [OutputDelta(refusal="I cannot")]


def test_images_annotations_and_mixed_deltas_are_never_merged() -> None:
    image = OutputDelta(images=(GeneratedImage(Blob("image/png", b"png")),))
    cited = OutputDelta(content="x", annotations=(UrlCitation("https://example.com"),))
    mixed = OutputDelta(content="y", reasoning="z")
    events: list[StreamEvent] = [
        ContentDelta("a"),
        image,
        image,
        cited,
        ContentDelta("b"),
        mixed,
        ContentDelta("c"),
    ]
    assert coalesce(events) == events


# --- properties over any sequence --------------------------------------------------------

_text = st.text(alphabet="ab ", min_size=1, max_size=4)
_tool = st.one_of(
    st.builds(ToolCallDelta, st.integers(0, 2), st.just("call_x"), st.just("f"), _text),
    st.builds(ToolCallDelta, st.integers(0, 2), st.none(), st.none(), _text),
)
_event: st.SearchStrategy[StreamEvent] = st.one_of(
    st.builds(ContentDelta, _text),
    st.builds(ReasoningDelta, _text),
    _tool,
    st.builds(lambda t: OutputDelta(content=t, logprobs=_logprob(t)), _text),
    st.builds(lambda t: OutputDelta(reasoning=t, reasoning_details=(_detail(t),)), _text),
    st.builds(lambda t: OutputDelta(refusal=t), _text),
    st.builds(lambda t: OutputDelta(content=t, reasoning=t), _text),
    st.just(START),
    st.just(END),
)


def _field(events: Sequence[StreamEvent], name: str) -> str:
    out = []
    for event in events:
        if isinstance(event, ContentDelta | ReasoningDelta):
            kind = "content" if isinstance(event, ContentDelta) else "reasoning"
            out.append(event.text if kind == name else "")
        elif isinstance(event, OutputDelta):
            out.append(getattr(event, name))
    return "".join(out)


def _tool_pieces(events: Sequence[StreamEvent]) -> list[ToolCallDelta]:
    pieces: list[ToolCallDelta] = []
    for event in events:
        if isinstance(event, ToolCallDelta):
            pieces.append(event)
        elif isinstance(event, OutputDelta):
            pieces.extend(event.tool_calls)
    return pieces


def _calls(pieces: Sequence[ToolCallDelta]) -> list[tuple[int, str | None, str | None, str]]:
    """The calls the pieces describe, as a caller reassembles them."""
    calls: list[tuple[int, str | None, str | None, str]] = []
    for piece in pieces:
        if calls and piece.id is None and piece.name is None and calls[-1][0] == piece.index:
            index, call_id, name, arguments = calls[-1]
            calls[-1] = (index, call_id, name, arguments + piece.arguments)
        else:
            calls.append((piece.index, piece.id, piece.name, piece.arguments))
    return calls


def _logprob_tokens(events: Sequence[StreamEvent]) -> list[str]:
    return [
        entry.token
        for event in events
        if isinstance(event, OutputDelta) and event.logprobs is not None
        for entry in event.logprobs.content
    ]


def _kinds(events: Sequence[StreamEvent]) -> list[str]:
    """The order of kinds, each run shown once."""
    names: list[str] = []
    for event in events:
        name = type(event).__name__
        if isinstance(event, OutputDelta):
            name = "+".join(
                field
                for field in ("content", "reasoning", "tool_calls", "refusal")
                if getattr(event, field)
            )
        name = {"ContentDelta": "content", "ReasoningDelta": "reasoning"}.get(name, name)
        name = {"ToolCallDelta": "tool_calls"}.get(name, name)
        if not names or names[-1] != name or name in ("StreamStarted", "StreamFinished"):
            names.append(name)
    return names


@given(st.lists(_event, max_size=30))
def test_merging_keeps_every_piece_of_content_in_order(events: list[StreamEvent]) -> None:
    merged = list(coalesce(events))
    for name in ("content", "reasoning", "refusal"):
        assert _field(merged, name) == _field(events, name)
    assert _calls(_tool_pieces(merged)) == _calls(_tool_pieces(events))
    details = [d for e in events if isinstance(e, OutputDelta) for d in e.reasoning_details]
    assert [d for e in merged if isinstance(e, OutputDelta) for d in e.reasoning_details] == (
        details
    )
    assert _logprob_tokens(merged) == _logprob_tokens(events)
    assert _kinds(merged) == _kinds(events)
    # Never more messages than events, and merging what was merged changes nothing.
    assert len(merged) <= len(events)
    assert list(coalesce(merged)) == merged
