"""Protobuf conversion of StreamCompleteStructured's events."""

from __future__ import annotations

from llmgateway.v1 import completion_service_pb2 as pb

from service.api.convert import (
    STRUCTURED_MODES,
    annotations_out,
    dict_to_struct,
    finish_reason,
    reasoning_details_out,
    unsupported_out,
    usage,
)
from service.domain.completion import ContentDelta, ReasoningDelta, StreamStarted
from service.domain.structured_stream import StructuredEvent


def structured_stream_response(event: StructuredEvent) -> pb.StreamCompleteStructuredResponse:
    if isinstance(event, ContentDelta):
        return pb.StreamCompleteStructuredResponse(delta=pb.StructuredDelta(json=event.text))
    if isinstance(event, ReasoningDelta):
        return pb.StreamCompleteStructuredResponse(delta=pb.StructuredDelta(reasoning=event.text))
    if isinstance(event, StreamStarted):
        return pb.StreamCompleteStructuredResponse(
            start=pb.StreamStart(id=event.id, model=event.model, provider=event.provider)
        )
    return pb.StreamCompleteStructuredResponse(
        end=pb.StructuredEnd(
            json=event.json_text,
            value=dict_to_struct(event.value),
            schema_name=event.schema_name,
            schema_version=event.schema_version,
            mode=STRUCTURED_MODES[event.mode],
            fallback_used=event.fallback_used,
            repaired=event.extracted,
            finish_reason=finish_reason(event.finish_reason),
            native_finish_reason=event.native_finish_reason,
            usage=usage(event.usage),
            reasoning_details=reasoning_details_out(event.reasoning_details),
            unsupported_outputs=unsupported_out(event.unsupported),
            annotations=annotations_out(event.annotations),
        )
    )
