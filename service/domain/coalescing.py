"""Stream events that arrived together, merged into as few deltas as keep their meaning.

When the relay has fallen behind (a slow loop, a busy machine) several upstream events are
already buffered by the time it reads again. Sending each as its own message costs a gRPC
message apiece, so the relay falls further behind exactly when it can least afford to;
merging them costs one message for the lot. An event is never held back to wait for others:
only what was already read is merged, so an idle stream relays every event as it comes.

A run of consecutive deltas of one kind becomes one delta:

* text: ``content`` joined (and its log probabilities, token by token, in order);
* reasoning: ``reasoning`` joined, its ``reasoning_details`` pieces kept as they came, in
  order (a caller merges pieces by index, as it would across messages);
* tool calls: the pieces in order, each piece that continues the call before it (same
  index, no new id or name) appended to that call's arguments;
* refusal: ``refusal`` joined (and its log probabilities).

Kinds are never merged with each other, so the order between, say, reasoning and the answer
that follows it is kept exactly; deltas with images, annotations or several kinds at once
(rare: an image arrives whole) are never merged, nor are the stream's start and end.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto

from service.domain.completion import (
    ContentDelta,
    Logprobs,
    OutputDelta,
    ReasoningDelta,
    ReasoningDetail,
    StreamEvent,
    ToolCallDelta,
)


class _Kind(Enum):
    TEXT = auto()
    REASONING = auto()
    TOOL = auto()
    REFUSAL = auto()


def coalesce(events: Sequence[StreamEvent]) -> Sequence[StreamEvent]:
    """``events`` (in order) with each run of same-kind deltas merged into one."""
    if len(events) < 2:
        return events
    out: list[StreamEvent] = []
    run: list[StreamEvent] = []
    run_kind: _Kind | None = None
    for event in events:
        kind = _kind(event)
        if kind is not None and kind is run_kind:
            run.append(event)
            continue
        if run:
            out.append(_merge(run_kind, run))
        if kind is None:
            out.append(event)
            run, run_kind = [], None
        else:
            run, run_kind = [event], kind
    if run:
        out.append(_merge(run_kind, run))
    return out


def _kind(event: StreamEvent) -> _Kind | None:
    if isinstance(event, ContentDelta):
        return _Kind.TEXT
    if isinstance(event, ReasoningDelta):
        return _Kind.REASONING
    if isinstance(event, ToolCallDelta):
        return _Kind.TOOL
    if not isinstance(event, OutputDelta) or event.images or event.annotations:
        return None
    logprobs = event.logprobs
    if event.content and not (event.reasoning or event.reasoning_details):
        if event.tool_calls or event.refusal or (logprobs is not None and logprobs.refusal):
            return None
        return _Kind.TEXT
    if event.reasoning or event.reasoning_details:
        if event.content or event.tool_calls or event.refusal or logprobs is not None:
            return None
        return _Kind.REASONING
    if event.tool_calls:
        if event.refusal or logprobs is not None:
            return None
        return _Kind.TOOL
    if event.refusal and (logprobs is None or not logprobs.content):
        return _Kind.REFUSAL
    return None


def _merge(kind: _Kind | None, run: list[StreamEvent]) -> StreamEvent:
    if len(run) == 1:
        return run[0]
    if kind is _Kind.TEXT:
        return _merge_text(run)
    if kind is _Kind.REASONING:
        return _merge_reasoning(run)
    if kind is _Kind.TOOL:
        return _merge_tools(run)
    return _merge_refusal(run)


def _merge_text(run: list[StreamEvent]) -> StreamEvent:
    texts: list[str] = []
    logprobs: Logprobs | None = None
    rich = False
    for event in run:
        if isinstance(event, ContentDelta):
            texts.append(event.text)
        elif isinstance(event, OutputDelta):
            rich = True
            texts.append(event.content)
            logprobs = _add(logprobs, event.logprobs)
    if not rich:
        return ContentDelta("".join(texts))
    return OutputDelta(content="".join(texts), logprobs=logprobs)


def _merge_reasoning(run: list[StreamEvent]) -> StreamEvent:
    texts: list[str] = []
    details: list[ReasoningDetail] = []
    rich = False
    for event in run:
        if isinstance(event, ReasoningDelta):
            texts.append(event.text)
        elif isinstance(event, OutputDelta):
            rich = True
            texts.append(event.reasoning)
            details.extend(event.reasoning_details)
    if not rich:
        return ReasoningDelta("".join(texts))
    return OutputDelta(reasoning="".join(texts), reasoning_details=tuple(details))


def _merge_tools(run: list[StreamEvent]) -> StreamEvent:
    calls: list[ToolCallDelta] = []
    for event in run:
        if isinstance(event, ToolCallDelta):
            pieces: Sequence[ToolCallDelta] = (event,)
        elif isinstance(event, OutputDelta):
            pieces = event.tool_calls
        else:
            pieces = ()
        for piece in pieces:
            last = calls[-1] if calls else None
            if (
                last is not None
                and piece.index == last.index
                and piece.id is None
                and piece.name is None
            ):
                calls[-1] = ToolCallDelta(
                    last.index, last.id, last.name, last.arguments + piece.arguments
                )
            else:
                calls.append(piece)
    if len(calls) == 1:
        return calls[0]
    return OutputDelta(tool_calls=tuple(calls))


def _merge_refusal(run: list[StreamEvent]) -> StreamEvent:
    texts: list[str] = []
    logprobs: Logprobs | None = None
    for event in run:
        if isinstance(event, OutputDelta):  # the only event that carries a refusal
            texts.append(event.refusal)
            logprobs = _add(logprobs, event.logprobs)
    return OutputDelta(refusal="".join(texts), logprobs=logprobs)


def _add(first: Logprobs | None, second: Logprobs | None) -> Logprobs | None:
    if first is None:
        return second
    if second is None:
        return first
    return first + second
