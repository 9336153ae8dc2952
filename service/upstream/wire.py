"""OpenRouter's JSON, both ways: domain request -> body, and bodies/chunks -> domain values.

Pure functions over ``dict``s and bytes (orjson), no I/O. Parsers are lenient about what
real traffic varies in (``content`` ``''`` vs ``null``, ``provider`` missing, usage without
``cost``, string or int error codes) and strict about what they cannot do without (a JSON
object, a ``choices`` list in a non-streamed answer).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from service.domain.completion import (
    AudioPart,
    Completion,
    CompletionRequest,
    FilePart,
    FinishReason,
    ImagePart,
    Message,
    Modality,
    Part,
    ReasoningConfig,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    ToolDefinition,
    Usage,
    count_unsupported,
)
from service.domain.models import ModelInfo
from service.domain.ports import GenerationStats
from service.domain.providers import MAX_PRICE_KINDS, ProviderPreferences
from service.errors import UpstreamError
from service.upstream import server_tools
from service.upstream.errors import error_from_payload, protocol_error
from service.upstream.outputs import Extras, annotation_json, detail_json, read_extras, url_of
from service.upstream.pricing import parse_pricing
from service.upstream.readers import as_dict as _dict
from service.upstream.readers import as_float_or_none as _float_or_none
from service.upstream.readers import as_int as _int
from service.upstream.readers import as_str as _str

DONE = "[DONE]"
"""The data of the SSE event that ends an OpenRouter stream."""


# --- request -----------------------------------------------------------------------------


def build_body(request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/chat/completions`` body; sampling knobs left unset are not sent at all."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "stream": stream,
    }
    if request.fallback_models:
        # Primary first; OpenRouter tries the list in order and bills the one that served.
        models = [request.model]
        for name in request.fallback_models:
            if name not in models:
                models.append(name)
        if len(models) > 1:
            body["models"] = models
    s = request.sampling
    for key, value in (
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("top_k", s.top_k),
        ("max_tokens", s.max_tokens),
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
        ("repetition_penalty", s.repetition_penalty),
        ("seed", s.seed),
    ):
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop"] = list(s.stop)
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        if choice.mode is ToolChoiceMode.FUNCTION:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
        else:
            body["tool_choice"] = choice.mode.value
    if request.user:
        body["user"] = request.user
    if request.reasoning is not None:
        body["reasoning"] = _reasoning(request.reasoning)
    if request.output_modalities:
        body["modalities"] = [m.value for m in request.output_modalities]
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    fmt = request.response_format
    if fmt is not None:
        if fmt.kind is ResponseFormatKind.JSON_SCHEMA:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": fmt.name or "response",
                    "strict": fmt.strict,
                    "schema": dict(fmt.schema or {}),
                },
            }
        else:
            body["response_format"] = {"type": "json_object"}
    provider = provider_object(request)
    if provider:
        body["provider"] = provider
    plugins: list[dict[str, Any]] = [{"id": plugin} for plugin in request.plugins]
    parser = request.file_parser
    if parser is not None and parser.pdf_engine is not None:
        plugins.append({"id": "file-parser", "pdf": {"engine": parser.pdf_engine.value}})
    if plugins:
        body["plugins"] = plugins
    if request.web_search is not None:
        server_tools.add_web_search(body, request.web_search)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.cache_control is not None:
        body["cache_control"] = server_tools.cache_control(request.cache_control)
    if request.session_id:
        body["session_id"] = request.session_id
    return body


def provider_object(request: CompletionRequest) -> dict[str, Any]:
    """OpenRouter's ``provider`` object: the merged preferences, with ``require_parameters``
    also set when the gateway itself needs it (a native JSON Schema)."""
    return provider_json(request.provider, require_parameters=request.require_parameters)


def provider_json(
    prefs: ProviderPreferences | None, *, require_parameters: bool = False
) -> dict[str, Any]:
    """``prefs`` as OpenRouter's ``provider`` object (empty: send none)."""
    out: dict[str, Any] = {}
    if prefs is not None:
        if prefs.order:
            out["order"] = list(prefs.order)
        if prefs.only is not None:
            out["only"] = list(prefs.only)
        if prefs.ignore:
            out["ignore"] = list(prefs.ignore)
        if prefs.allow_fallbacks is not None:
            out["allow_fallbacks"] = prefs.allow_fallbacks
        if prefs.sort is not None:
            out["sort"] = prefs.sort.value
        if prefs.quantizations is not None:
            out["quantizations"] = [q.value for q in prefs.quantizations]
        prices = {
            kind: _number(value)
            for kind in MAX_PRICE_KINDS
            if (value := getattr(prefs.max_price, kind)) is not None
        }
        if prices:
            out["max_price"] = prices
        if prefs.require_parameters is not None:
            out["require_parameters"] = prefs.require_parameters
        if prefs.data_collection is not None:
            out["data_collection"] = prefs.data_collection.value
        if prefs.zdr is not None:
            out["zdr"] = prefs.zdr
    if require_parameters:
        out["require_parameters"] = True
    return out


def _number(value: Decimal) -> int | float:
    # OpenRouter's guide sends prices as JSON numbers ({"prompt": 1, "completion": 2}).
    return int(value) if value == value.to_integral_value() else float(value)


def encode_body(request: CompletionRequest, *, stream: bool) -> bytes:
    return orjson.dumps(build_body(request, stream=stream))


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role.value}
    if message.parts:
        out["content"] = [_part(part) for part in message.parts]
    elif message.role is Role.ASSISTANT and message.tool_calls and not message.content:
        out["content"] = None
    else:
        out["content"] = message.content
    if message.name:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_details:
        out["reasoning_details"] = [detail_json(d) for d in message.reasoning_details]
    if message.annotations:
        out["annotations"] = [annotation_json(a) for a in message.annotations]
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return out


def _reasoning(config: ReasoningConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.effort is not None:
        out["effort"] = config.effort.value
    if config.max_tokens is not None:
        out["max_tokens"] = config.max_tokens
    if config.exclude is not None:
        out["exclude"] = config.exclude
    if config.enabled is not None:
        out["enabled"] = config.enabled
    if config.summary is not None:
        out["summary"] = config.summary.value
    return out


def content_part(part: Part) -> dict[str, Any]:
    """One content part as OpenRouter takes it (in a message, or an embedding input)."""
    return _part(part)


def _part(part: Part) -> dict[str, Any]:
    """One content part as OpenRouter's ``messages[].content[]`` takes it, with its
    prompt-cache mark."""
    out = _part_body(part)
    if part.cache is not None:
        out["cache_control"] = server_tools.cache_control(part.cache)
    return out


def _part_body(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        image: dict[str, Any] = {"url": url_of(part.source)}
        if part.detail is not None:
            image["detail"] = part.detail.value
        return {"type": "image_url", "image_url": image}
    if isinstance(part, FilePart):
        return {
            "type": "file",
            "file": {"filename": part.filename, "file_data": url_of(part.source)},
        }
    if isinstance(part, AudioPart):
        # Raw base64, no data: prefix, as OpenRouter's input_audio wants it.
        data = base64.b64encode(part.data).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": part.format.lower()}}
    return {"type": "video_url", "video_url": {"url": url_of(part.source)}}


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    out: dict[str, Any] = {"type": "function", "function": function}
    if tool.cache is not None:
        out["cache_control"] = server_tools.cache_control(tool.cache)
    return out


# --- loading ------------------------------------------------------------------------


def load_json(data: bytes | str, what: str) -> Any:
    """orjson.loads, with a parse failure mapped to ``UpstreamProtocolError``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise protocol_error(f"{what} is not valid JSON") from exc


def load_object(data: bytes | str, what: str) -> dict[str, Any]:
    value = load_json(data, what)
    if type(value) is not dict:
        raise protocol_error(f"{what} is not a JSON object")
    return value


# --- usage and answers -------------------------------------------------------------------


def parse_usage(value: object) -> Usage | None:
    """``usage`` as sent (cost, cached and reasoning tokens optional); None when absent."""
    if not isinstance(value, dict):
        return None
    prompt = _int(value.get("prompt_tokens"))
    completion = _int(value.get("completion_tokens"))
    total = value.get("total_tokens")
    prompt_details = _dict(value.get("prompt_tokens_details"))
    completion_details = _dict(value.get("completion_tokens_details"))
    cost_details = _dict(value.get("cost_details"))
    # The recordings and the OAS say server_tool_use_details; OpenRouter's guides say
    # server_tool_use (the Responses naming): either is read.
    tool_use = _dict(value.get("server_tool_use_details") or value.get("server_tool_use"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_int(total) if total is not None else prompt + completion,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")),
        cost_usd=_float_or_none(value.get("cost")),
        prompt_image_tokens=_int(prompt_details.get("image_tokens")),
        prompt_audio_tokens=_int(prompt_details.get("audio_tokens")),
        prompt_video_tokens=_int(prompt_details.get("video_tokens")),
        completion_image_tokens=_int(completion_details.get("image_tokens")),
        completion_audio_tokens=_int(completion_details.get("audio_tokens")),
        cache_write_tokens=_int(prompt_details.get("cache_write_tokens")),
        web_search_requests=_int(tool_use.get("web_search_requests")),
        server_tool_calls=_int(tool_use.get("tool_calls_executed")),
        upstream_cost_usd=_float_or_none(cost_details.get("upstream_inference_cost")),
        upstream_prompt_cost_usd=_float_or_none(cost_details.get("upstream_inference_prompt_cost")),
        upstream_completion_cost_usd=_float_or_none(
            cost_details.get("upstream_inference_completions_cost")
        ),
        byok=value.get("is_byok") is True,
    )


def _reasoning_text(holder: Mapping[str, Any], extras: Extras | None) -> str:
    reasoning = holder.get("reasoning")
    if isinstance(reasoning, str):
        return reasoning
    # Some routes (o3, grok) only fill ``reasoning_details``: read its text and summaries.
    return extras.reasoning_text if extras is not None else ""


def _arguments(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # A provider that sends arguments as an object: keep them as the JSON text we promise.
    return orjson.dumps(value).decode()


def choice_error(choice: Mapping[str, Any]) -> UpstreamError | None:
    """The mapped error of a choice that carries ``error`` (a 200 that is really a failure)."""
    error = choice.get("error")
    if isinstance(error, dict):
        return error_from_payload(error, http_status=200)
    return None


def parse_completion(data: Mapping[str, Any]) -> Completion:
    """A non-streamed answer; raises the mapped error when its choice carries ``error``."""
    top_error = data.get("error")
    if isinstance(top_error, dict):
        raise error_from_payload(top_error, http_status=200)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise protocol_error("the answer has no choices")
    choice: Mapping[str, Any] = choices[0]
    error = choice_error(choice)
    if error is not None:
        raise error
    message = _dict(choice.get("message"))
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls")
    if isinstance(raw_calls, list):
        for raw in raw_calls:
            if not isinstance(raw, dict):
                continue
            function = _dict(raw.get("function"))
            calls.append(
                ToolCall(
                    id=_str(raw.get("id")),
                    name=_str(function.get("name")),
                    arguments=_arguments(function.get("arguments")),
                )
            )
    extras = read_extras(message, choice.get("logprobs"), "message")
    if extras is None:
        extras = _NO_EXTRAS
    content = extras.content if extras.content is not None else _str(message.get("content"))
    return Completion(
        id=_str(data.get("id")),
        model=_str(data.get("model")),
        provider=_str(data.get("provider")),
        content=content,
        finish_reason=FinishReason.parse(choice.get("finish_reason")),
        native_finish_reason=_str(choice.get("native_finish_reason")),
        reasoning=_reasoning_text(message, extras),
        tool_calls=tuple(calls),
        usage=parse_usage(data.get("usage")) or Usage(),
        created=_int(data.get("created")),
        reasoning_details=extras.reasoning_details,
        images=extras.images,
        annotations=extras.annotations,
        refusal=extras.refusal,
        logprobs=extras.logprobs,
        unsupported=count_unsupported(extras.unsupported),
    )


_NO_EXTRAS = Extras()


# --- stream chunks -----------------------------------------------------------------------


class StreamChunk(NamedTuple):
    """One ``chat.completion.chunk`` reduced to what the gateway relays.

    ``finish_reason`` is None while the model is still going (the raw string otherwise);
    ``error`` is set when the chunk carries a top-level ``error`` (the stream is cut).
    A NamedTuple because one is built per token and a frozen dataclass costs more to build.
    """

    id: str
    model: str
    provider: str
    created: int
    content: str
    reasoning: str
    tool_calls: tuple[ToolCallDelta, ...]
    finish_reason: str | None
    native_finish_reason: str | None
    usage: Usage | None
    error: UpstreamError | None
    extra: Extras | None
    """Reasoning blocks, images, citations, refusal, logprobs or unsupported outputs; None in
    the common chunk that has none of them."""


def parse_chunk(data: str | bytes) -> StreamChunk:
    """Parse one SSE ``data`` payload (not ``[DONE]``); malformed JSON is a protocol error.

    Runs once per token, so it reads each field once and checks types with ``type() is``
    (JSON decoding only ever makes exact ``dict``/``list``/``str``).
    """
    obj = load_object(data, "a stream chunk")
    get = obj.get
    content = ""
    reasoning = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish: str | None = None
    native: str | None = None
    error: UpstreamError | None = None
    extra: Extras | None = None
    choices = get("choices")
    # The usage chunk comes with ``choices`` missing, empty, or one empty delta: all fine.
    if type(choices) is list and choices and type(choices[0]) is dict:
        choice: dict[str, Any] = choices[0]
        delta = choice.get("delta")
        if type(delta) is dict:
            extra = read_extras(delta, choice.get("logprobs"), "delta")
            text = delta.get("content")
            if type(text) is str:
                content = text
            elif extra is not None and extra.content is not None:
                content = extra.content
            thought = delta.get("reasoning")
            if type(thought) is str:
                reasoning = thought
            elif extra is not None:
                reasoning = extra.reasoning_text
            raw_calls = delta.get("tool_calls")
            if type(raw_calls) is list and raw_calls:
                tool_calls = tuple(_tool_call_delta(raw, i) for i, raw in enumerate(raw_calls))
        fr = choice.get("finish_reason")
        if type(fr) is str and fr:
            finish = fr
        nfr = choice.get("native_finish_reason")
        if type(nfr) is str and nfr:
            native = nfr
        if "error" in choice:
            error = choice_error(choice)
    error_obj = get("error")
    if type(error_obj) is dict:
        # The top-level error is the documented one; it wins over a choice's.
        error = error_from_payload(error_obj, http_status=200)
    usage = get("usage")
    gen_id, model, provider, created = get("id"), get("model"), get("provider"), get("created")
    # Positional: keyword construction of a NamedTuple is measurably slower per token.
    return StreamChunk(
        gen_id if type(gen_id) is str else "",
        model if type(model) is str else "",
        provider if type(provider) is str else "",
        created if type(created) is int else 0,
        content,
        reasoning,
        tool_calls,
        finish,
        native,
        parse_usage(usage) if usage is not None else None,
        error,
        extra,
    )


def _tool_call_delta(raw: object, position: int) -> ToolCallDelta:
    item = _dict(raw)
    function = _dict(item.get("function"))
    index = item.get("index")
    name = function.get("name")
    call_id = item.get("id")
    return ToolCallDelta(
        index=index if isinstance(index, int) and not isinstance(index, bool) else position,
        id=call_id if isinstance(call_id, str) and call_id else None,
        name=name if isinstance(name, str) and name else None,
        arguments=_arguments(function.get("arguments")),
    )


# --- catalog and generation stats --------------------------------------------------------


def parse_models(data: Mapping[str, Any]) -> list[ModelInfo]:
    """``GET /models`` -> ModelInfo list; entries without an ``id`` are skipped."""
    entries = data.get("data")
    if not isinstance(entries, list):
        raise protocol_error("the model list has no data array")
    models: list[ModelInfo] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        pricing, peak = parse_pricing(entry.get("pricing"))
        top = _dict(entry.get("top_provider"))
        max_out = top.get("max_completion_tokens")
        params = entry.get("supported_parameters")
        architecture = _dict(entry.get("architecture"))
        models.append(
            ModelInfo(
                id=entry["id"],
                name=_str(entry.get("name")),
                context_length=_int(entry.get("context_length")) or _int(top.get("context_length")),
                max_completion_tokens=_int(max_out) if max_out is not None else None,
                pricing=pricing,
                peak_pricing=peak,
                supported_parameters=frozenset(
                    p for p in (params if isinstance(params, list) else ()) if isinstance(p, str)
                ),
                input_modalities=_modalities(architecture.get("input_modalities")),
                output_modalities=_modalities(architecture.get("output_modalities")),
            )
        )
    return models


_MODALITIES = {m.value: m for m in Modality}


def _modalities(value: object) -> frozenset[Modality] | None:
    """The modalities the gateway knows of; None when the entry lists none (unknown).

    Kinds the contract has no part for (``embeddings``, ``rerank`` …) are left out: nothing a
    caller sends or asks for can be of those kinds."""
    if not isinstance(value, list):
        return None
    return frozenset(_MODALITIES[v] for v in value if isinstance(v, str) and v in _MODALITIES)


def parse_generation(data: Mapping[str, Any]) -> GenerationStats:
    """``GET /generation`` -> GenerationStats; native token counts win where present."""
    gen = data.get("data")
    if not isinstance(gen, dict):
        raise protocol_error("the generation record has no data object")

    def tokens(native: str, plain: str) -> int:
        value = gen.get(native)
        return _int(value) if value is not None else _int(gen.get(plain))

    return GenerationStats(
        id=_str(gen.get("id")),
        model=_str(gen.get("model")),
        total_cost_usd=_float_or_none(gen.get("total_cost")) or 0.0,
        prompt_tokens=tokens("native_tokens_prompt", "tokens_prompt"),
        completion_tokens=tokens("native_tokens_completion", "tokens_completion"),
        reasoning_tokens=_int(gen.get("native_tokens_reasoning")),
        cached_tokens=_int(gen.get("native_tokens_cached")),
        cancelled=gen.get("cancelled") is True,
        finish_reason=_str(gen.get("finish_reason")),
    )
