"""Protobuf <-> domain conversion; protobuf stops here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.api import convert_tools
from service.domain.accounting import tool_cost
from service.domain.completion import (
    Annotation,
    AudioPart,
    Blob,
    Completion,
    CompletionRequest,
    ContentDelta,
    FileAnnotation,
    FileParser,
    FilePart,
    FinishReason,
    GeneratedImage,
    ImageDetail,
    ImagePart,
    Logprobs,
    MediaSource,
    MediaUrl,
    Message,
    Modality,
    OutputDelta,
    Part,
    PdfEngine,
    ReasoningConfig,
    ReasoningDelta,
    ReasoningDetail,
    ReasoningDetailType,
    ReasoningEffort,
    ReasoningSummary,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    StreamEvent,
    StreamStarted,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    ToolDefinition,
    UnsupportedOutput,
    UrlCitation,
    Usage,
    VideoPart,
)
from service.domain.cost_kinds import CostKind, CostSplit
from service.domain.models import ModelInfo, ModelPricing
from service.domain.providers import (
    MAX_PRICE_KINDS,
    DataCollection,
    MaxPrice,
    ProviderPreferences,
    ProviderSort,
    Quantization,
)
from service.domain.quotas import LimitUsage, QuotaStatus
from service.domain.structured import StructuredMode, StructuredResult
from service.domain.usage import MediaTotals, UsageTotals
from service.errors import FieldViolation, InvalidRequestError

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
_MODALITIES: dict[pb.Modality.ValueType, Modality] = {
    pb.MODALITY_TEXT: Modality.TEXT,
    pb.MODALITY_IMAGE: Modality.IMAGE,
    pb.MODALITY_FILE: Modality.FILE,
    pb.MODALITY_AUDIO: Modality.AUDIO,
    pb.MODALITY_VIDEO: Modality.VIDEO,
    pb.MODALITY_EMBEDDINGS: Modality.EMBEDDINGS,
}
_MODALITIES_OUT = {modality: value for value, modality in _MODALITIES.items()}
# The contract's order (text, image, file, audio, video, embeddings), not the catalog's.
_MODALITY_ORDER = list(_MODALITIES.values())
_DETAIL_TYPES: dict[pb.ReasoningDetailType.ValueType, ReasoningDetailType] = {
    pb.REASONING_DETAIL_TYPE_TEXT: ReasoningDetailType.TEXT,
    pb.REASONING_DETAIL_TYPE_SUMMARY: ReasoningDetailType.SUMMARY,
    pb.REASONING_DETAIL_TYPE_ENCRYPTED: ReasoningDetailType.ENCRYPTED,
}
_DETAIL_TYPES_OUT: dict[ReasoningDetailType, pb.ReasoningDetailType.ValueType] = {
    kind: number for number, kind in _DETAIL_TYPES.items()
}
_EFFORTS: dict[int, ReasoningEffort] = {
    pb.REASONING_EFFORT_NONE: ReasoningEffort.NONE,
    pb.REASONING_EFFORT_MINIMAL: ReasoningEffort.MINIMAL,
    pb.REASONING_EFFORT_LOW: ReasoningEffort.LOW,
    pb.REASONING_EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    pb.REASONING_EFFORT_HIGH: ReasoningEffort.HIGH,
    pb.REASONING_EFFORT_XHIGH: ReasoningEffort.XHIGH,
    pb.REASONING_EFFORT_MAX: ReasoningEffort.MAX,
}
_SUMMARIES: dict[int, ReasoningSummary] = {
    pb.REASONING_SUMMARY_VERBOSITY_AUTO: ReasoningSummary.AUTO,
    pb.REASONING_SUMMARY_VERBOSITY_CONCISE: ReasoningSummary.CONCISE,
    pb.REASONING_SUMMARY_VERBOSITY_DETAILED: ReasoningSummary.DETAILED,
}
_SORTS: dict[int, ProviderSort] = {
    pb.PROVIDER_SORT_PRICE: ProviderSort.PRICE,
    pb.PROVIDER_SORT_THROUGHPUT: ProviderSort.THROUGHPUT,
    pb.PROVIDER_SORT_LATENCY: ProviderSort.LATENCY,
}
_DATA_COLLECTION: dict[int, DataCollection] = {
    pb.DATA_COLLECTION_ALLOW: DataCollection.ALLOW,
    pb.DATA_COLLECTION_DENY: DataCollection.DENY,
}
# QUANTIZATION_INT4 -> int4 …: the enum's names are the wire values in upper case.
_QUANTIZATIONS: dict[int, Quantization] = {
    pb.Quantization.Value(f"QUANTIZATION_{q.name}"): q for q in Quantization
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


def _tool_parameters(tool: pb.Tool, field: str, violations: list[FieldViolation]) -> dict[str, Any]:
    if not tool.HasField("parameters"):
        return {}
    try:
        return struct_to_dict(tool.parameters)
    except ValueError:  # a NaN or infinite number: JSON (and so the schema sent on) has none
        violations.append(FieldViolation(field, "numbers must be finite"))
        return {}


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
    cache = None
    if part.HasField("cache_control"):
        cache = convert_tools.cache_control(
            part.cache_control, f"{field}.cache_control", violations
        )
    if which == "text":
        return TextPart(part.text, cache)
    if which == "image":
        detail = _IMAGE_DETAILS.get(part.image.detail)
        return ImagePart(_source(part.image, f"{field}.image", violations), detail, cache)
    if which == "file":
        source = _source(part.file, f"{field}.file", violations)
        return FilePart(source, part.file.filename, cache)
    if which == "audio":
        return AudioPart(part.audio.data, part.audio.format, cache)
    if which == "video":
        return VideoPart(_source(part.video, f"{field}.video", violations), cache)
    violations.append(FieldViolation(field, "set text, image, file, audio or video"))
    # Kept in place (never sent: the request is refused) so later indices stay true; not
    # empty, so the domain does not report the same part a second time.
    return TextPart(" ")


def parts(
    values: Sequence[pb.Part], field: str, violations: list[FieldViolation]
) -> tuple[Part, ...]:
    """Parts outside a message (an embedding input's), ``field`` naming their list."""
    return tuple(_part(part, f"{field}[{j}]", violations) for j, part in enumerate(values))


def _messages(messages: Sequence[pb.Message], violations: list[FieldViolation]) -> list[Message]:
    result = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            violations.append(FieldViolation(f"messages[{i}].role", "must be set"))
            # Kept in place (never sent: the request is refused) so later indices stay true.
            role = Role.USER
        # The repeated fields are mostly empty: a generator is made only for those that are
        # not (four empty generators cost more than the rest of a text message's conversion).
        calls, parts, details, notes = (
            message.tool_calls,
            message.parts,
            message.reasoning_details,
            message.annotations,
        )
        result.append(
            Message(
                role=role,
                content=message.content,
                name=message.name or None,
                tool_call_id=message.tool_call_id or None,
                tool_calls=tuple(
                    ToolCall(id=c.id, name=c.name, arguments=c.arguments_json or "{}")
                    for c in calls
                )
                if calls
                else (),
                parts=tuple(
                    _part(part, f"messages[{i}].parts[{j}]", violations)
                    for j, part in enumerate(parts)
                )
                if parts
                else (),
                reasoning_details=tuple(
                    _detail_in(detail, f"messages[{i}].reasoning_details[{k}]", violations)
                    for k, detail in enumerate(details)
                )
                if details
                else (),
                annotations=tuple(
                    _annotation_in(note, f"messages[{i}].annotations[{k}]", violations)
                    for k, note in enumerate(notes)
                )
                if notes
                else (),
            )
        )
    return result


def _annotation_in(note: pb.Annotation, field: str, violations: list[FieldViolation]) -> Annotation:
    which = note.WhichOneof("kind")
    if which == "file":
        parts = []
        for j, part in enumerate(note.file.content):
            converted = _part(part, f"{field}.file.content[{j}]", violations)
            if not isinstance(converted, TextPart | ImagePart):
                violations.append(
                    FieldViolation(f"{field}.file.content[{j}]", "must be a text or image part")
                )
            parts.append(converted)
        return FileAnnotation(note.file.hash, note.file.name, tuple(parts))
    if which is None:
        violations.append(FieldViolation(field, "set url_citation or file"))
    cite = note.url_citation
    return UrlCitation(cite.url, cite.title, cite.content, cite.start_index, cite.end_index)


def _detail_in(
    detail: pb.ReasoningDetail, field: str, violations: list[FieldViolation]
) -> ReasoningDetail:
    kind = _DETAIL_TYPES.get(detail.type)
    if kind is None:
        violations.append(FieldViolation(f"{field}.type", "must be set"))
        kind = ReasoningDetailType.TEXT
    has = detail.HasField
    return ReasoningDetail(
        type=kind,
        id=detail.id if has("id") else None,
        format=detail.format if has("format") else None,
        index=detail.index if has("index") else None,
        text=detail.text if has("text") else None,
        signature=detail.signature if has("signature") else None,
        summary=detail.summary if has("summary") else None,
        data=detail.data if has("data") else None,
    )


def reasoning_details_out(details: Sequence[ReasoningDetail]) -> list[pb.ReasoningDetail]:
    # Only the fields that were sent: unset stays unset, so a block comes back as it went.
    return [
        pb.ReasoningDetail(
            type=_DETAIL_TYPES_OUT[d.type],
            id=d.id,
            format=d.format,
            index=d.index,
            text=d.text,
            signature=d.signature,
            summary=d.summary,
            data=d.data,
        )
        for d in details
    ]


def _blob_or_url(source: MediaSource) -> dict[str, Any]:
    if isinstance(source, Blob):
        return {"inline_data": pb.Blob(mime_type=source.mime_type, data=source.data)}
    return {"url": source.url}


def _images_out(values: Sequence[GeneratedImage]) -> list[pb.GeneratedImage]:
    return [pb.GeneratedImage(index=v.index, **_blob_or_url(v.source)) for v in values]


def _part_out(part: Part) -> pb.Part:
    if isinstance(part, TextPart):
        return pb.Part(text=part.text)
    if isinstance(part, ImagePart):
        return pb.Part(image=pb.ImagePart(**_blob_or_url(part.source)))
    raise AssertionError(f"no annotation holds a {type(part).__name__}")


def annotations_out(values: Sequence[Annotation]) -> list[pb.Annotation]:
    out = []
    for value in values:
        if isinstance(value, UrlCitation):
            cite = pb.UrlCitation(
                url=value.url,
                title=value.title,
                content=value.content,
                start_index=value.start_index,
                end_index=value.end_index,
            )
            out.append(pb.Annotation(url_citation=cite))
        else:
            parts = [_part_out(part) for part in value.content]
            file = pb.FileAnnotation(hash=value.hash, name=value.name, content=parts)
            out.append(pb.Annotation(file=file))
    return out


def _tokens(values: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=v.token,
            logprob=v.logprob,
            token_bytes=v.bytes,
            top_logprobs=[
                pb.TopLogprob(token=t.token, logprob=t.logprob, token_bytes=t.bytes)
                for t in v.top_logprobs
            ],
        )
        for v in values
    ]


def _logprobs_out(value: Logprobs | None) -> pb.Logprobs | None:
    if value is None:
        return None
    return pb.Logprobs(content=_tokens(value.content), refusal=_tokens(value.refusal))


def unsupported_out(values: Sequence[UnsupportedOutput]) -> list[pb.UnsupportedOutput]:
    return [pb.UnsupportedOutput(kind=v.kind, count=v.count) for v in values]


def _reasoning(message: AnyCompletionRequest) -> ReasoningConfig | None:
    if not message.HasField("reasoning"):
        return None
    config = message.reasoning
    has = config.HasField
    return ReasoningConfig(
        effort=_EFFORTS.get(config.effort),
        max_tokens=config.max_tokens if has("max_tokens") else None,
        exclude=config.exclude if has("exclude") else None,
        enabled=config.enabled if has("enabled") else None,
        summary=_SUMMARIES.get(config.summary),
    )


def _output_modality(
    value: pb.Modality.ValueType, field: str, violations: list[FieldViolation]
) -> Modality:
    modality = _MODALITIES.get(value)
    if modality is None:
        violations.append(FieldViolation(field, "must be set"))
        return Modality.TEXT
    return modality


def model_filter(
    request: pb.ListModelsRequest,
) -> tuple[frozenset[Modality], frozenset[Modality]]:
    """The input and output modalities a ListModels call asks for; INVALID_ARGUMENT for an
    unset or unknown one."""
    violations: list[FieldViolation] = []
    found: list[frozenset[Modality]] = []
    for name, values in (
        ("input_modalities", request.input_modalities),
        ("output_modalities", request.output_modalities),
    ):
        kinds = set()
        for i, value in enumerate(values):
            modality = _MODALITIES.get(value)
            if modality is None:
                violations.append(FieldViolation(f"{name}[{i}]", "must be a known Modality"))
            else:
                kinds.add(modality)
        found.append(frozenset(kinds))
    if violations:
        first = violations[0]
        raise InvalidRequestError(f"{first.field}: {first.description}", violations)
    return found[0], found[1]


AnyCompletionRequest = (
    pb.CompleteRequest
    | pb.StreamCompleteRequest
    | pb.CompleteStructuredRequest
    | pb.StreamCompleteStructuredRequest
)


def _file_parser(message: AnyCompletionRequest) -> FileParser | None:
    if not message.HasField("file_parser"):
        return None
    return FileParser(pdf_engine=_PDF_ENGINES.get(message.file_parser.pdf_engine))


def _decimal(text: str, field: str, violations: list[FieldViolation]) -> Decimal | None:
    if not text:
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        violations.append(FieldViolation(field, "must be a decimal number, e.g. 1.5"))
        return None
    return value


def provider_preferences(
    message: AnyCompletionRequest | pb.EmbedRequest, violations: list[FieldViolation]
) -> ProviderPreferences | None:
    if not message.HasField("provider"):
        return None
    p = message.provider
    quantizations = []
    for i, value in enumerate(p.quantizations):
        quantization = _QUANTIZATIONS.get(value)
        if quantization is None:
            violations.append(FieldViolation(f"provider.quantizations[{i}]", "must be set"))
        else:
            quantizations.append(quantization)
    prices = {
        kind: _decimal(getattr(p.max_price, kind), f"provider.max_price.{kind}", violations)
        for kind in MAX_PRICE_KINDS
    }
    return ProviderPreferences(
        order=tuple(p.order),
        only=tuple(p.only) or None,
        ignore=tuple(p.ignore),
        allow_fallbacks=p.allow_fallbacks if p.HasField("allow_fallbacks") else None,
        sort=_SORTS.get(p.sort),
        quantizations=tuple(quantizations) or None,
        max_price=MaxPrice(**prices),
        require_parameters=p.require_parameters if p.HasField("require_parameters") else None,
        data_collection=_DATA_COLLECTION.get(p.data_collection),
        zdr=p.zdr if p.HasField("zdr") else None,
    )


_NO_SAMPLING = SamplingParams()
"""What an unset ``sampling`` converts to (immutable, so one is shared by every call)."""


def _sampling(message: AnyCompletionRequest) -> SamplingParams:
    if not message.HasField("sampling"):
        return _NO_SAMPLING
    params = message.sampling
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


def completion_request(message: AnyCompletionRequest) -> CompletionRequest:
    """The domain request as the caller sent it (validation of values happens in the domain)."""
    violations: list[FieldViolation] = []
    messages = _messages(message.messages, violations)
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice = None
    outputs: tuple[Modality, ...] = ()
    logprobs = False
    top_logprobs: int | None = None
    response_format = None
    parallel = None
    if isinstance(message, pb.CompleteRequest | pb.StreamCompleteRequest):
        if message.HasField("parallel_tool_calls"):
            parallel = message.parallel_tool_calls
        outputs = tuple(
            _output_modality(value, f"output_modalities[{i}]", violations)
            for i, value in enumerate(message.output_modalities)
        )
        logprobs = message.logprobs
        top_logprobs = message.top_logprobs if message.HasField("top_logprobs") else None
        response_format = _response_format(message.response_format, violations)
        tools = tuple(
            ToolDefinition(
                name=t.name,
                description=t.description,
                parameters=_tool_parameters(t, f"tools[{i}].parameters", violations),
                strict=t.strict if t.HasField("strict") else None,
                cache=(
                    convert_tools.cache_control(
                        t.cache_control, f"tools[{i}].cache_control", violations
                    )
                    if t.HasField("cache_control")
                    else None
                ),
            )
            for i, t in enumerate(message.tools)
        )
        tool_choice = _tool_choice(message, violations)
    provider = provider_preferences(message, violations)
    return CompletionRequest(
        model=message.model,
        messages=tuple(messages),
        sampling=_sampling(message),
        fallback_models=tuple(message.fallback_models),
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        file_parser=_file_parser(message),
        reasoning=_reasoning(message),
        output_modalities=outputs,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        provider=provider,
        web_search=(
            convert_tools.web_search(message.web_search, violations)
            if message.HasField("web_search")
            else None
        ),
        parallel_tool_calls=parallel,
        cache_control=(
            convert_tools.cache_control(message.cache_control, "cache_control", violations)
            if message.HasField("cache_control")
            else None
        ),
        session_id=message.session_id,
        decode_violations=tuple(violations),
    )


def _response_format(
    value: pb.ResponseFormat.ValueType, violations: list[FieldViolation]
) -> ResponseFormat | None:
    if value == pb.RESPONSE_FORMAT_JSON_OBJECT:
        return ResponseFormat(kind=ResponseFormatKind.JSON_OBJECT)
    if value not in (pb.RESPONSE_FORMAT_UNSPECIFIED, pb.RESPONSE_FORMAT_TEXT):
        violations.append(FieldViolation("response_format", "is not a known ResponseFormat"))
    return None


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
        prompt_image_tokens=value.prompt_image_tokens,
        prompt_audio_tokens=value.prompt_audio_tokens,
        prompt_video_tokens=value.prompt_video_tokens,
        completion_image_tokens=value.completion_image_tokens,
        completion_audio_tokens=value.completion_audio_tokens,
        cache_write_tokens=value.cache_write_tokens,
        web_search_requests=value.web_search_requests,
        server_tool_calls=value.server_tool_calls,
        upstream_inference_cost_usd=value.upstream_cost_usd,
        upstream_inference_prompt_cost_usd=value.upstream_prompt_cost_usd,
        upstream_inference_completion_cost_usd=value.upstream_completion_cost_usd,
        byok=value.byok,
        tool_cost_usd=_optional_amount(tool_cost(value)),
    )


def _optional_amount(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


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
        reasoning_details=reasoning_details_out(completion.reasoning_details),
        images=_images_out(completion.images),
        annotations=annotations_out(completion.annotations),
        refusal=completion.refusal,
        logprobs=_logprobs_out(completion.logprobs),
        unsupported_outputs=unsupported_out(completion.unsupported),
    )


STRUCTURED_MODES: dict[StructuredMode, pb.StructuredMode.ValueType] = {
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
        mode=STRUCTURED_MODES[result.mode],
        fallback_used=result.fallback_used,
        repaired=result.repaired,
        attempts=result.attempts,
        finish_reason=_FINISH[completion.finish_reason],
        usage=usage(result.usage),
        annotations=annotations_out(completion.annotations),
    )


def _tool_call_delta(delta: ToolCallDelta) -> pb.ToolCallDelta:
    return pb.ToolCallDelta(
        index=delta.index, id=delta.id or "", name=delta.name or "", arguments=delta.arguments
    )


def stream_response(event: StreamEvent) -> pb.StreamCompleteResponse:
    if isinstance(event, ContentDelta):
        return pb.StreamCompleteResponse(delta=pb.StreamDelta(content=event.text))
    if isinstance(event, ReasoningDelta):
        return pb.StreamCompleteResponse(delta=pb.StreamDelta(reasoning=event.text))
    if isinstance(event, ToolCallDelta):
        return pb.StreamCompleteResponse(delta=pb.StreamDelta(tool_calls=[_tool_call_delta(event)]))
    if isinstance(event, OutputDelta):
        return pb.StreamCompleteResponse(
            delta=pb.StreamDelta(
                content=event.content,
                reasoning=event.reasoning,
                tool_calls=[_tool_call_delta(call) for call in event.tool_calls],
                reasoning_details=reasoning_details_out(event.reasoning_details),
                images=_images_out(event.images),
                annotations=annotations_out(event.annotations),
                refusal=event.refusal,
                logprobs=_logprobs_out(event.logprobs),
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
            reasoning_details=reasoning_details_out(event.reasoning_details),
            unsupported_outputs=unsupported_out(event.unsupported),
        )
    )


def _usd(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def pricing(value: ModelPricing) -> pb.ModelPricing:
    if value.variable:
        # Not free: unknown until the router picks a model. No amount at all.
        return pb.ModelPricing(variable=True)
    return pb.ModelPricing(
        prompt_usd_per_token=_usd(value.prompt),
        completion_usd_per_token=_usd(value.completion),
        request_usd=_usd(value.request),
        image_usd=_usd(value.image),
        image_output_usd=_usd(value.image_output),
        image_token_usd=_usd(value.image_token),
        audio_usd_per_token=_usd(value.audio),
        audio_output_usd_per_token=_usd(value.audio_output),
        audio_cache_usd_per_token=_usd(value.audio_cache),
        web_search_usd=_usd(value.web_search),
        internal_reasoning_usd_per_token=_usd(value.internal_reasoning),
        cache_read_usd_per_token=_usd(value.cache_read),
        cache_write_usd_per_token=_usd(value.cache_write),
        cache_write_1h_usd_per_token=_usd(value.cache_write_1h),
    )


def model(info: ModelInfo, *, price_capped: bool = False) -> pb.Model:
    return pb.Model(
        id=info.id,
        name=info.name,
        context_length=info.context_length,
        max_completion_tokens=info.max_completion_tokens or 0,
        pricing=pricing(info.pricing),
        supports_structured_outputs=info.supports_structured_outputs,
        supports_response_format=info.supports_response_format,
        supports_tools=info.supports_tools,
        supports_reasoning=info.supports_reasoning,
        input_modalities=_modalities_out(info.input_modalities),
        output_modalities=_modalities_out(info.output_modalities),
        price_capped=price_capped,
    )


def _modalities_out(values: frozenset[Modality] | None) -> list[pb.Modality.ValueType]:
    return [_MODALITIES_OUT[m] for m in _MODALITY_ORDER if values is not None and m in values]


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


def _media_totals(media: MediaTotals) -> dict[str, Any]:
    kinds = (
        (pb.MODALITY_IMAGE, media.image_inputs, media.image_input_bytes),
        (pb.MODALITY_FILE, media.file_inputs, media.file_input_bytes),
        (pb.MODALITY_AUDIO, media.audio_inputs, media.audio_input_bytes),
        (pb.MODALITY_VIDEO, media.video_inputs, media.video_input_bytes),
    )
    return {
        "prompt_image_tokens": media.prompt_image_tokens,
        "prompt_audio_tokens": media.prompt_audio_tokens,
        "prompt_video_tokens": media.prompt_video_tokens,
        "completion_image_tokens": media.completion_image_tokens,
        "completion_audio_tokens": media.completion_audio_tokens,
        "media_inputs": [
            pb.MediaInputTotal(modality=kind, parts=parts, bytes=size)
            for kind, parts, size in kinds
            if parts
        ],
        "images_generated": media.images_out,
        "unsupported_outputs": media.unsupported_outputs,
    }


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
        **_media_totals(totals.media),
        cache_read_tokens=totals.tools.cache_read_tokens,
        cache_write_tokens=totals.tools.cache_write_tokens,
        web_search_requests=totals.tools.web_search_requests,
        server_tool_calls=totals.tools.server_tool_calls,
        tool_cost_usd=float(totals.tools.tool_cost_usd),
        quotas=[
            *_quota(pb.QUOTA_KIND_REQUESTS_PER_MINUTE, quotas.requests_per_minute, known=known),
            *_quota(pb.QUOTA_KIND_TOKENS_PER_MINUTE, quotas.tokens_per_minute, known=known),
            *_quota(pb.QUOTA_KIND_USD_PER_DAY, quotas.usd_per_day, known=known),
        ],
        providers=[
            pb.ProviderUsage(
                provider=p.provider,
                request_count=p.requests,
                prompt_tokens=p.prompt_tokens,
                completion_tokens=p.completion_tokens,
                cost_usd=float(p.cost_usd),
                costs=_kind_costs(p.costs),
            )
            for p in totals.by_provider
        ],
        costs=_kind_costs(totals.costs),
    )


_COST_KINDS: Mapping[CostKind, pb.CostKind.ValueType] = {
    kind: pb.CostKind.Value(f"COST_KIND_{kind.name}") for kind in CostKind
}


def _kind_costs(costs: CostSplit) -> list[pb.KindCost]:
    # Normalised, the same amount reads the same from either ledger (PostgreSQL's sums keep
    # trailing zeros): 0.0000642, never 0.000064200 or 6.42E-5.
    return [
        pb.KindCost(
            kind=_COST_KINDS[kind], cost_usd=float(usd), cost_usd_decimal=_usd(usd.normalize())
        )
        for kind, usd in costs.parts
    ]
