"""Turns decoded SSE events of one OpenRouter stream into domain stream events, without I/O.

OpenRouter's streams vary (see the research notes, section 3): usage may come in a chunk after
the finish chunk, with ``choices`` missing, empty or one empty delta; an error chunk may come
after a finish reason; ``[DONE]`` may be missing. This state machine absorbs all of that so
the HTTP client only moves bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from service.domain.completion import (
    ContentDelta,
    FinishReason,
    OutputDelta,
    ReasoningDelta,
    ReasoningDetail,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    Usage,
    count_unsupported,
    merge_reasoning_details,
)
from service.upstream.errors import truncated_error
from service.upstream.outputs import Extras
from service.upstream.sse import SSEEvent
from service.upstream.wire import DONE, StreamChunk, parse_chunk


class StreamAssembler:
    """Feed it every ``SSEEvent``; it returns the domain events to relay, in order.

    ``StreamFinished`` is not returned by ``on_event``: once ``done`` is set (``[DONE]``
    seen), or at EOF, call ``finish()``, so the caller can close the connection first.
    A chunk with a top-level ``error`` raises the mapped domain error from ``on_event``.
    """

    __slots__ = (
        "_clock",
        "_details",
        "_unsupported",
        "created",
        "done",
        "finish_reason",
        "first_token_at",
        "generation_id",
        "model",
        "native_finish_reason",
        "provider",
        "started",
        "usage",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.started = False
        self.done = False
        self.generation_id = ""
        self.model = ""
        self.provider = ""
        self.created = 0
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None
        self.usage: Usage | None = None
        self.first_token_at: float | None = None
        # Reasoning pieces, merged into blocks at the end; outputs the contract cannot carry.
        self._details: list[ReasoningDetail] = []
        self._unsupported: list[str] = []

    def on_event(self, event: SSEEvent) -> list[StreamEvent]:
        if self.done:
            return []
        data = event.data
        if data == DONE:
            self.done = True
            return [] if self.started else [self._started()]
        chunk = parse_chunk(data)
        return self._on_chunk(chunk)

    def finish(self) -> StreamFinished:
        """The final event: after ``[DONE]``, or at EOF once a finish reason was seen.

        EOF with neither means the connection was cut: ``StreamTruncatedError``.
        """
        if not self.done and self.finish_reason is None:
            raise truncated_error()
        return StreamFinished(
            finish_reason=FinishReason.parse(self.finish_reason),
            native_finish_reason=self.native_finish_reason or "",
            usage=self.usage,
            reasoning_details=merge_reasoning_details(self._details),
            unsupported=count_unsupported(self._unsupported),
        )

    def _started(self) -> StreamStarted:
        self.started = True
        return StreamStarted(
            id=self.generation_id, model=self.model, provider=self.provider, created=self.created
        )

    def _on_chunk(self, chunk: StreamChunk) -> list[StreamEvent]:
        if chunk.id and not self.generation_id:
            self.generation_id = chunk.id
        if chunk.model and not self.model:
            self.model = chunk.model
        if chunk.provider and not self.provider:
            self.provider = chunk.provider
        if chunk.created and not self.created:
            self.created = chunk.created
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.error is not None:
            # The stream was cut by an error, even after a finish reason (the minimax capture);
            # the usage it carried is kept above for the ledger.
            raise chunk.error
        if chunk.finish_reason is not None and self.finish_reason is None:
            self.finish_reason = chunk.finish_reason
            self.native_finish_reason = chunk.native_finish_reason
        out: list[StreamEvent] = []
        if not self.started and (self.generation_id or _has_delta(chunk)):
            out.append(self._started())
        extra = chunk.extra
        if extra is not None:
            out.extend(self._rich(chunk, extra))
        else:
            if chunk.reasoning:
                out.append(ReasoningDelta(chunk.reasoning))
            if chunk.content:
                out.append(ContentDelta(chunk.content))
            out.extend(chunk.tool_calls)
        if self.first_token_at is None and _has_delta(chunk):
            self.first_token_at = self._clock()
        return out

    def _rich(self, chunk: StreamChunk, extra: Extras) -> list[StreamEvent]:
        """A chunk with more than text: one event holding all of it (or none, when what it
        held cannot be carried and is only counted)."""
        self._details.extend(extra.reasoning_details)
        self._unsupported.extend(extra.unsupported)
        delta = OutputDelta(
            content=chunk.content,
            reasoning=chunk.reasoning,
            tool_calls=chunk.tool_calls,
            reasoning_details=extra.reasoning_details,
            images=extra.images,
            annotations=extra.annotations,
            refusal=extra.refusal,
            logprobs=extra.logprobs,
        )
        return [delta] if delta != _EMPTY else []


_EMPTY = OutputDelta()


def _has_delta(chunk: StreamChunk) -> bool:
    if chunk.content or chunk.reasoning or chunk.tool_calls:
        return True
    extra = chunk.extra
    return extra is not None and bool(
        extra.reasoning_details or extra.images or extra.annotations or extra.refusal
    )
