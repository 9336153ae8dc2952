"""Protobuf <-> domain conversion; protobuf stops here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.completion import (
    AudioPart,
    Blob,
    Completion,
    CompletionRequest,
    ContentDelta,
    FileParser,
    FilePart,
    FinishReason,
    ImageDetail,
    ImagePart,
    MediaSource,
    MediaUrl,
    Message,
    Part,
    PdfEngine,
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    StreamStarted,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolDefinition,
    Usage,
    VideoPart,
)
from service.domain.models import ModelInfo
from service.domain.quotas import LimitUsage, QuotaStatus
from service.domain.structured import StructuredMode, StructuredResult
from service.domain.usage import UsageTotals
from service.errors import FieldViolation

_ROLES: dict[int, Role] = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_DEVELOPER: Role.DEVELOPER,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
}
_TOOL_CHOICE_MODES: dict[int, ToolChoiceMode] = {
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}
_IMAGE_DETAILS: dict[int, ImageDetail] = {
    pb.IMAGE_DETAIL_AUTO: ImageDetail.AUTO,
    pb.IMAGE_DETAIL_LOW: ImageDetail.LOW,
    pb.IMAGE_DETAIL_HIGH: ImageDetail.HIGH,
    pb.IMAGE_DETAIL_ORIGINAL: ImageDetail.ORIGINAL,
}
_PDF_ENGINES: dict[int, PdfEngine] = {
    pb.PDF_ENGINE_NATIVE: PdfEngine.NATIVE,
    pb.PDF_ENGINE_CLOUDFLARE_AI: PdfEngine.CLOUDFLARE_AI,
    pb.PDF_ENGINE_MISTRAL_OCR: PdfEngine.MISTRAL_OCR,
}
_FINISH: dict[FinishReason, pb.FinishReason.ValueType] = {
    FinishReason.UNSPECIFIED: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


def _integral(value: Any) -> Any:
    """Struct holds numbers as doubles; JSON Schema keywords such as minItems want integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _integral(json_format.MessageToDict(value))
    return result


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _source(
    holder: pb.ImagePart | pb.FilePart | pb.VideoPart,
    field: str,
    violations: list[FieldViolation],
) -> MediaSource:
    which = holder.WhichOneof("source")
    if which == "url":
        return MediaUrl(holder.url)
    if which == "inline_data":
        return Blob(holder.inline_data.mime_type, holder.inline_data.data)
    violations.append(FieldViolation(field, "set url or inline_data"))
    return MediaUrl("https://unset.invalid/")  # refused above: never sent


def _part(part: pb.Part, field: str, violations: list[FieldViolation]) -> Part:
    which = part.WhichOneof("data")
    if which == "text":
        return TextPart(part.text)
    if which == "image":
        detail = _IMAGE_DETAILS.get(part.image.detail)
        return ImagePart(_source(part.image, f"{field}.image", violations), detail)
    if which == "file":
        source = _source(part.file, f"{field}.file", violations)
        return FilePart(source, part.file.filename)
    if which == "audio":
        return AudioPart(part.audio.data, part.audio.format)
    if which == "video":
        return VideoPart(_source(part.video, f"{field}.video", violations))
    violations.append(FieldViolation(field, "set text, image, file, audio or video"))
    # Kept in place (never sent: the request is refused) so later indices stay true; not
    # empty, so the domain does not report the same part a second time.
    return TextPart(" ")


def _messages(messages: Sequence[pb.Message], violations: list[FieldViolation]) -> list[Message]:
    result = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            violations.append(FieldViolation(f"messages[{i}].role", "must be set"))
            # Kept in place (never sent: the request is refused) so later indices stay true.
            role = Role.USER
        result.append(
            Message(
                role=role,
                content=message.content,
                name=message.name or None,
                tool_call_id=message.tool_call_id or None,
                tool_calls=tuple(
                    ToolCall(id=c.id, name=c.name, arguments=c.arguments_json or "{}")
                    for c in message.tool_calls
                ),
                parts=tuple(
                    _part(part, f"messages[{i}].parts[{j}]", violations)
                    for j, part in enumerate(message.parts)
                ),
            )
        )
    return result


def _file_parser(
    message: pb.CompleteRequest | pb.StreamCompleteRequest | pb.CompleteStructuredRequest,
) -> FileParser | None:
    if not message.HasField("file_parser"):
        return None
    return FileParser(pdf_engine=_PDF_ENGINES.get(message.file_parser.pdf_engine))


def _sampling(params: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        top_k=params.top_k if params.HasField("top_k") else None,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        frequency_penalty=(
            params.frequency_penalty if params.HasField("frequency_penalty") else None
        ),
        presence_penalty=params.presence_penalty if params.HasField("presence_penalty") else None,
        repetition_penalty=(
            params.repetition_penalty if params.HasField("repetition_penalty") else None
        ),
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )


def _tool_choice(
    message: pb.CompleteRequest | pb.StreamCompleteRequest, violations: list[FieldViolation]
) -> ToolChoice | None:
    if not message.HasField("tool_choice"):
        return None
    choice = message.tool_choice
    which = choice.WhichOneof("choice")
    if which == "function_name":
        return ToolChoice(ToolChoiceMode.FUNCTION, choice.function_name)
    mode = _TOOL_CHOICE_MODES.get(choice.mode)
    if mode is None:
        violations.append(FieldViolation("tool_choice", "set mode or function_name"))
        return None
    return ToolChoice(mode)


def completion_request(
    message: pb.CompleteRequest | pb.StreamCompleteRequest | pb.CompleteStructuredRequest,
) -> CompletionRequest:
    """The domain request as the caller sent it (validation of values happens in the domain)."""
    violations: list[FieldViolation] = []
    messages = _messages(message.messages, violations)
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice = None
    if not isinstance(message, pb.CompleteStructuredRequest):
        tools = tuple(
            ToolDefinition(
                name=t.name,
                description=t.description,
                parameters=struct_to_dict(t.parameters) if t.HasField("parameters") else {},
                strict=t.strict if t.HasField("strict") else None,
            )
            for t in message.tools
        )
        tool_choice = _tool_choice(message, violations)
    return CompletionRequest(
        model=message.model,
        messages=tuple(messages),
        sampling=_sampling(message.sampling),
        fallback_models=tuple(message.fallback_models),
        tools=tools,
        tool_choice=tool_choice,
        file_parser=_file_parser(message),
        decode_violations=tuple(violations),
    )


def usage(value: Usage | None) -> pb.Usage:
    if value is None:
        return pb.Usage()
    return pb.Usage(
        prompt_tokens=value.prompt_tokens,
        completion_tokens=value.completion_tokens,
        total_tokens=value.total_tokens,
        reasoning_tokens=value.reasoning_tokens,
        cached_tokens=value.cached_tokens,
        cost_usd=value.cost_usd or 0.0,
    )


def finish_reason(value: FinishReason) -> pb.FinishReason.ValueType:
    return _FINISH[value]


def complete_response(completion: Completion) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        id=completion.id,
        model=completion.model,
        provider=completion.provider,
        content=completion.content,
        reasoning=completion.reasoning,
        tool_calls=[
            pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments)
            for c in completion.tool_calls
        ],
        finish_reason=_FINISH[completion.finish_reason],
        native_finish_reason=completion.native_finish_reason,
        usage=usage(completion.usage),
    )


_MODES: dict[StructuredMode, pb.StructuredMode.ValueType] = {
    StructuredMode.NATIVE: pb.STRUCTURED_MODE_NATIVE,
    StructuredMode.JSON_OBJECT: pb.STRUCTURED_MODE_JSON_OBJECT,
    StructuredMode.INSTRUCTIONS: pb.STRUCTURED_MODE_INSTRUCTIONS,
}


def structured_response(result: StructuredResult) -> pb.CompleteStructuredResponse:
    completion = result.completion
    return pb.CompleteStructuredResponse(
        id=completion.id,
        model=completion.model,
        provider=completion.provider,
        json=result.json_text,
        value=dict_to_struct(result.value),
        schema_name=result.schema_name,
        schema_version=result.schema_version,
        mode=_MODES[result.mode],
        fallback_used=result.fallback_used,
        repaired=result.repaired,
        attempts=result.attempts,
        finish_reason=_FINISH[completion.finish_reason],
        usage=usage(result.usage),
    )


def stream_response(event: StreamEvent) -> pb.StreamCompleteResponse:
    if isinstance(event, ContentDelta):
        return pb.StreamCompleteResponse(delta=pb.StreamDelta(content=event.text))
    if isinstance(event, ReasoningDelta):
        return pb.StreamCompleteResponse(delta=pb.StreamDelta(reasoning=event.text))
    if isinstance(event, ToolCallDelta):
        return pb.StreamCompleteResponse(
            delta=pb.StreamDelta(
                tool_calls=[
                    pb.ToolCallDelta(
                        index=event.index,
                        id=event.id or "",
                        name=event.name or "",
                        arguments=event.arguments,
                    )
                ]
            )
        )
    if isinstance(event, StreamStarted):
        return pb.StreamCompleteResponse(
            start=pb.StreamStart(id=event.id, model=event.model, provider=event.provider)
        )
    return pb.StreamCompleteResponse(
        end=pb.StreamEnd(
            finish_reason=_FINISH[event.finish_reason],
            native_finish_reason=event.native_finish_reason,
            usage=usage(event.usage),
        )
    )


def model(info: ModelInfo) -> pb.Model:
    return pb.Model(
        id=info.id,
        name=info.name,
        context_length=info.context_length,
        max_completion_tokens=info.max_completion_tokens or 0,
        pricing=pb.ModelPricing(
            prompt_usd_per_token=format(info.pricing.prompt, "f"),
            completion_usd_per_token=format(info.pricing.completion, "f"),
            request_usd=format(info.pricing.request, "f"),
        ),
        supports_structured_outputs=info.supports_structured_outputs,
        supports_response_format=info.supports_response_format,
        supports_tools=info.supports_tools,
    )


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _quota(
    kind: pb.QuotaKind.ValueType,
    usage: LimitUsage[int] | LimitUsage[Decimal] | None,
    *,
    known: bool,
) -> list[pb.Quota]:
    if usage is None:
        return []
    if not known:
        return [pb.Quota(kind=kind, limit=float(usage.limit), usage_unknown=True)]
    return [
        pb.Quota(
            kind=kind,
            limit=float(usage.limit),
            used=float(usage.used),
            remaining=float(max(usage.remaining, 0)),
            reset_time=timestamp(usage.resets_at),
        )
    ]


def usage_response(
    caller_id: str, since: datetime, until: datetime, totals: UsageTotals, quotas: QuotaStatus
) -> pb.GetUsageResponse:
    known = quotas.known
    return pb.GetUsageResponse(
        caller_id=caller_id,
        start_time=timestamp(since),
        end_time=timestamp(until),
        request_count=totals.requests,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        cost_usd=float(totals.cost_usd),
        quotas=[
            *_quota(pb.QUOTA_KIND_REQUESTS_PER_MINUTE, quotas.requests_per_minute, known=known),
            *_quota(pb.QUOTA_KIND_TOKENS_PER_MINUTE, quotas.tokens_per_minute, known=known),
            *_quota(pb.QUOTA_KIND_USD_PER_DAY, quotas.usd_per_day, known=known),
        ],
    )
