"""Structured output, streamed: the JSON as the model writes it, validated once it is whole.

A stream cannot take back what it sent, so there is no corrective re-ask: the pieces go to
the caller as they come, and at the end the joined text is read and validated like a unary
reply. A valid one ends the stream with ``StructuredFinished``; an invalid one raises
``SchemaValidationError`` instead, so such a stream never ends OK.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from service.domain.completion import (
    Annotation,
    ContentDelta,
    FinishReason,
    OutputDelta,
    ReasoningDelta,
    ReasoningDetail,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    ToolCallDelta,
    UnsupportedOutput,
    Usage,
    add_unsupported,
)
from service.domain.schemas import RegisteredSchema, summarize_findings
from service.domain.structured import StructuredMode, check_text, schema_failure


@dataclass(frozen=True, slots=True)
class StructuredFinished:
    """The end of a structured stream whose JSON matched its schema."""

    json_text: str
    """The validated value as compact JSON (fences, prose and whitespace gone)."""
    value: Any
    schema_name: str
    schema_version: int
    mode: StructuredMode
    extracted: bool
    """The JSON had to be cut out of prose or fences."""
    finish_reason: FinishReason
    native_finish_reason: str
    usage: Usage | None
    reasoning_details: tuple[ReasoningDetail, ...] = ()
    """The stream's reasoning blocks, merged, to send back on the next turn."""
    unsupported: tuple[UnsupportedOutput, ...] = ()
    """What the stream held that a structured answer does not carry (images, refusals…)."""
    annotations: tuple[Annotation, ...] = ()
    """The stream's annotations (citations, parsed files), in order."""

    @property
    def fallback_used(self) -> bool:
        return self.mode is not StructuredMode.NATIVE


StructuredEvent = StreamStarted | ContentDelta | ReasoningDelta | StructuredFinished


async def structured_events(
    events: AsyncIterator[StreamEvent], schema: RegisteredSchema, mode: StructuredMode
) -> AsyncGenerator[StructuredEvent, None]:
    """Relay ``events`` (pieces of JSON text, reasoning), then validate the whole text."""
    pieces: list[str] = []
    dropped: dict[str, int] = {}
    annotations: list[Annotation] = []
    async for event in events:
        if isinstance(event, ContentDelta):
            pieces.append(event.text)
            yield event
        elif isinstance(event, OutputDelta):
            # Text and reasoning go on; the kinds a structured answer has no place for are
            # counted, never dropped silently.
            if event.reasoning:
                yield ReasoningDelta(event.reasoning)
            if event.content:
                pieces.append(event.content)
                yield ContentDelta(event.content)
            annotations.extend(event.annotations)
            for kind, present in (
                ("delta.images", len(event.images)),
                ("delta.refusal", int(bool(event.refusal))),
            ):
                if present:
                    dropped[kind] = dropped.get(kind, 0) + present
        elif isinstance(event, StreamFinished):
            add_unsupported(dropped, event.unsupported)
            finished = _finish(event, "".join(pieces), schema, mode, dropped)
            yield dataclasses.replace(finished, annotations=tuple(annotations))
            return
        elif isinstance(event, ToolCallDelta):
            # No tools are offered; a provider that calls one anyway has answered no JSON.
            continue
        else:
            yield event


def _finish(
    event: StreamFinished,
    text: str,
    schema: RegisteredSchema,
    mode: StructuredMode,
    dropped: dict[str, int],
) -> StructuredFinished:
    checked = check_text(text, event.finish_reason, schema)
    if not checked.ok:
        findings = summarize_findings(checked.findings, more=checked.more_findings)
        why = (
            "was cut off by the token limit before its JSON was complete"
            if checked.cut_off
            else "did not match the schema"
        )
        raise schema_failure(schema, mode, 1, findings, f"the model's streamed output {why}")
    return StructuredFinished(
        json_text=orjson.dumps(checked.value).decode(),
        value=checked.value,
        schema_name=schema.name,
        schema_version=schema.version,
        mode=mode,
        extracted=checked.extracted,
        finish_reason=event.finish_reason,
        native_finish_reason=event.native_finish_reason,
        usage=event.usage,
        reasoning_details=event.reasoning_details,
        unsupported=tuple(UnsupportedOutput(k, n) for k, n in sorted(dropped.items())),
    )
