"""Request validation and limits: sizes, parameter ranges, history trimming, ``max_tokens``.

Every violation names the field as the contract spells it (``messages[2].content``,
``sampling.temperature``) so a caller's program can point at its own mistake.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.domain.completion import (
    AudioPart,
    Blob,
    CompletionRequest,
    FilePart,
    ImagePart,
    MediaSource,
    Message,
    Modality,
    Part,
    Role,
    SamplingParams,
    TextPart,
    VideoPart,
    annotation_bytes,
    cache_marks,
    part_bytes,
)
from service.domain.evolve import evolve
from service.domain.providers import preference_violations
from service.domain.server_tools import WebSearchMode, check_web_search
from service.errors import FieldViolation, InvalidRequestError

MAX_FALLBACK_MODELS = 3
MAX_CACHE_MARKS = 4
"""Anthropic's limit on cache breakpoints; a request with more fails upstream."""
MAX_TOOLS = 64
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 64
MAX_END_USER_ID_CHARS = 128
MAX_SESSION_ID_CHARS = 256
"""OpenRouter's limit for ``session_id``."""
MAX_MODEL_CHARS = 256
"""OpenRouter's model ids are far shorter (~60 characters with a variant suffix)."""
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEPT_ON_TRIM = frozenset({Role.SYSTEM, Role.DEVELOPER})
MIB = 1024 * 1024
MAX_URL_CHARS = 8192
MAX_FILENAME_CHARS = 255
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
VIDEO_TYPES = frozenset({"video/mp4", "video/mpeg", "video/mov", "video/webm"})
AUDIO_FORMATS = frozenset({"wav", "mp3", "aiff", "aac", "ogg", "flac", "m4a", "pcm16", "pcm24"})
# Any registered-looking `type/subtype` (RFC 6838 restricted names) for documents.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$")
# Providers fetch these; anything else (file:, ftp:, gopher:, javascript:) has no business
# in a prompt, and data: URLs would slip media past the byte limits and media-type checks.
_URL_SCHEMES = frozenset({"https", "http"})


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_messages: int = 256
    max_message_chars: int = 200_000
    max_total_chars: int = 1_000_000
    max_history_turns: int = 64
    default_max_tokens: int = 1024
    max_tokens_cap: int = 16_384
    max_parts_per_message: int = 64
    max_part_bytes: int = 10 * MIB
    max_media_bytes: int = 20 * MIB
    """Inline media bytes of one request, all parts together."""
    max_embedding_inputs: int = 2048
    """Inputs of one Embed call (OpenAI's own limit per request)."""


def _range(
    violations: list[FieldViolation],
    field: str,
    value: float | None,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        violations.append(FieldViolation(field, "must be a finite number"))
        return
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        violations.append(FieldViolation(field, f"must be in {bracket}{low:g}, {high:g}]"))


def _check_sampling(
    sampling: SamplingParams, limits: RequestLimits, violations: list[FieldViolation]
) -> None:
    _range(violations, "sampling.temperature", sampling.temperature, 0.0, 2.0)
    _range(violations, "sampling.top_p", sampling.top_p, 0.0, 1.0, low_open=True)
    _range(violations, "sampling.top_k", sampling.top_k, 0, 1000)
    _range(violations, "sampling.max_tokens", sampling.max_tokens, 1, limits.max_tokens_cap)
    _range(violations, "sampling.frequency_penalty", sampling.frequency_penalty, -2.0, 2.0)
    _range(violations, "sampling.presence_penalty", sampling.presence_penalty, -2.0, 2.0)
    _range(
        violations,
        "sampling.repetition_penalty",
        sampling.repetition_penalty,
        0.0,
        2.0,
        low_open=True,
    )
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        violations.append(FieldViolation("sampling.stop", f"at most {MAX_STOP_SEQUENCES} entries"))
    for i, stop in enumerate(sampling.stop):
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            violations.append(
                FieldViolation(f"sampling.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")
            )


def _check_messages(
    messages: Sequence[Message], limits: RequestLimits, violations: list[FieldViolation]
) -> None:
    if not messages:
        violations.append(FieldViolation("messages", "must hold at least one message"))
        return
    if len(messages) > limits.max_messages:
        violations.append(
            FieldViolation("messages", f"at most {limits.max_messages} messages are accepted")
        )
        return
    total = 0
    media = 0
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        chars = message.text_chars
        total += chars
        if chars > limits.max_message_chars:
            where = f"{field}.parts" if message.parts else f"{field}.content"
            violations.append(
                FieldViolation(where, f"longer than {limits.max_message_chars} characters")
            )
        if message.content and message.parts:
            violations.append(FieldViolation(f"{field}.parts", "set content or parts, not both"))
        elif (
            not message.content
            and not message.parts
            and not (message.role is Role.ASSISTANT and message.tool_calls)
        ):
            violations.append(FieldViolation(f"{field}.content", "must not be empty"))
        media += _check_parts(message, field, limits, violations)
        if message.name and len(message.name) > MAX_NAME_CHARS:
            violations.append(FieldViolation(f"{field}.name", f"at most {MAX_NAME_CHARS} chars"))
        if message.role is Role.TOOL and not message.tool_call_id:
            violations.append(
                FieldViolation(f"{field}.tool_call_id", "is required for a tool message")
            )
        if message.role is not Role.TOOL and message.tool_call_id:
            violations.append(
                FieldViolation(f"{field}.tool_call_id", "is only allowed on a tool message")
            )
        if message.tool_calls and message.role is not Role.ASSISTANT:
            violations.append(
                FieldViolation(f"{field}.tool_calls", "is only allowed on an assistant message")
            )
        for j, call in enumerate(message.tool_calls):
            if not call.id or not call.name:
                violations.append(
                    FieldViolation(f"{field}.tool_calls[{j}]", "needs an id and a name")
                )
        for name, given in (
            ("reasoning_details", message.reasoning_details),
            ("annotations", message.annotations),
        ):
            if given and message.role is not Role.ASSISTANT:
                violations.append(
                    FieldViolation(f"{field}.{name}", "is only allowed on an assistant message")
                )
        media += sum(annotation_bytes(a) for a in message.annotations)
    if total > limits.max_total_chars:
        violations.append(
            FieldViolation("messages", f"longer than {limits.max_total_chars} characters in all")
        )
    if media > limits.max_media_bytes:
        violations.append(
            FieldViolation("messages", f"more than {limits.max_media_bytes} bytes of media in all")
        )


def _check_parts(
    message: Message, field: str, limits: RequestLimits, violations: list[FieldViolation]
) -> int:
    """Check a message's parts; returns the inline media bytes they carry."""
    if len(message.parts) > limits.max_parts_per_message:
        violations.append(
            FieldViolation(f"{field}.parts", f"at most {limits.max_parts_per_message} parts")
        )
    media = 0
    for j, part in enumerate(message.parts):
        where = f"{field}.parts[{j}]"
        if isinstance(part, TextPart):
            if not part.text:
                violations.append(FieldViolation(f"{where}.text", "must not be empty"))
            continue
        if message.role is Role.ASSISTANT:
            # OpenAI-style assistant content holds text (and refusals) only.
            violations.append(FieldViolation(where, "an assistant message takes text parts only"))
            continue
        size = part_bytes(part)
        media += size
        _check_media(part, where, size, limits, violations)
    return media


def _check_media(
    part: Part, where: str, size: int, limits: RequestLimits, violations: list[FieldViolation]
) -> None:
    if isinstance(part, AudioPart):
        if not part.data:
            violations.append(FieldViolation(f"{where}.audio.data", "must not be empty"))
        elif size > limits.max_part_bytes:
            violations.append(
                FieldViolation(f"{where}.audio.data", f"larger than {limits.max_part_bytes} bytes")
            )
        if part.format.lower() not in AUDIO_FORMATS:
            allowed = ", ".join(sorted(AUDIO_FORMATS))
            violations.append(FieldViolation(f"{where}.audio.format", f"must be one of {allowed}"))
        return
    if isinstance(part, ImagePart):
        _check_source(part.source, f"{where}.image", IMAGE_TYPES, limits, violations)
    elif isinstance(part, VideoPart):
        _check_source(part.source, f"{where}.video", VIDEO_TYPES, limits, violations)
    elif isinstance(part, FilePart):
        if not 1 <= len(part.filename) <= MAX_FILENAME_CHARS:
            violations.append(
                FieldViolation(
                    f"{where}.file.filename", f"must be 1 to {MAX_FILENAME_CHARS} characters"
                )
            )
        _check_source(part.source, f"{where}.file", None, limits, violations)


def check_media_part(
    part: Part, where: str, limits: RequestLimits, violations: list[FieldViolation]
) -> int:
    """Check one part of any kind outside a message (an embedding input's); returns the
    inline media bytes it carries."""
    if isinstance(part, TextPart):
        if not part.text:
            violations.append(FieldViolation(f"{where}.text", "must not be empty"))
        return 0
    size = part_bytes(part)
    _check_media(part, where, size, limits, violations)
    return size


def _check_source(
    source: MediaSource,
    where: str,
    types: frozenset[str] | None,
    limits: RequestLimits,
    violations: list[FieldViolation],
) -> None:
    """``types`` None: any well-formed media type (documents)."""
    if isinstance(source, Blob):
        mime = source.mime_type.lower()
        if types is not None and mime not in types:
            allowed = ", ".join(sorted(types))
            violations.append(
                FieldViolation(f"{where}.inline_data.mime_type", f"must be one of {allowed}")
            )
        elif types is None and not _MEDIA_TYPE.match(mime):
            violations.append(
                FieldViolation(f"{where}.inline_data.mime_type", "must be a media type (a/b)")
            )
        if not source.data:
            violations.append(FieldViolation(f"{where}.inline_data.data", "must not be empty"))
        elif len(source.data) > limits.max_part_bytes:
            violations.append(
                FieldViolation(
                    f"{where}.inline_data.data", f"larger than {limits.max_part_bytes} bytes"
                )
            )
        return
    problem = url_problem(source.url)
    if problem is not None:
        violations.append(FieldViolation(f"{where}.url", problem))


def url_problem(url: str) -> str | None:
    """Why a caller's media URL is refused, or None. The URL itself is never echoed: a signed
    URL carries a token."""
    if not url:
        return "must not be empty"
    if len(url) > MAX_URL_CHARS:
        return f"longer than {MAX_URL_CHARS} characters"
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        return "data: URLs are not accepted; send the bytes as inline_data"
    if scheme not in _URL_SCHEMES:
        return "must be an https or http URL"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if not parts.hostname or any(c.isspace() or ord(c) < 0x20 for c in url):
        return "is not a valid URL"
    return None


def _check_reasoning(
    request: CompletionRequest, limits: RequestLimits, violations: list[FieldViolation]
) -> None:
    reasoning = request.reasoning
    if reasoning is None or reasoning.max_tokens is None:
        return
    if reasoning.effort is not None:
        violations.append(
            FieldViolation("reasoning.max_tokens", "set effort or max_tokens, not both")
        )
    answer = request.sampling.max_tokens or limits.default_max_tokens
    if not 1 <= reasoning.max_tokens < answer:
        # Reasoning tokens are part of the completion: a budget of all of it leaves no answer
        # (Anthropic refuses it outright).
        violations.append(
            FieldViolation("reasoning.max_tokens", f"must be at least 1 and below {answer}")
        )


MAX_TOP_LOGPROBS = 20
# Audio answers need streaming and a voice; this contract does not carry them yet.
_OUTPUT_MODALITIES = frozenset({Modality.TEXT, Modality.IMAGE})


IMAGE_OUTPUT_TOKENS = 2_000
"""Completion tokens one generated image can take (1,290 recorded for a 1024x1024 Gemini image;
providers count them against ``max_tokens``)."""


def default_max_tokens(request: CompletionRequest, limits: RequestLimits) -> int:
    """``max_tokens`` for a request that sets none. An image counts against it, so a request
    for image output gets room for one image besides the text: with the text default alone
    (1,024), an image of ~1,290 tokens would be cut off."""
    if Modality.IMAGE in request.output_modalities:
        return limits.default_max_tokens + IMAGE_OUTPUT_TOKENS
    return limits.default_max_tokens


def _check_outputs(request: CompletionRequest, violations: list[FieldViolation]) -> None:
    for i, modality in enumerate(request.output_modalities):
        if modality not in _OUTPUT_MODALITIES:
            violations.append(
                FieldViolation(f"output_modalities[{i}]", "must be MODALITY_TEXT or MODALITY_IMAGE")
            )
    if request.top_logprobs is not None:
        if not request.logprobs:
            violations.append(FieldViolation("top_logprobs", "requires logprobs"))
        elif not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
            violations.append(FieldViolation("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}]"))


def _check_tools(request: CompletionRequest, violations: list[FieldViolation]) -> None:
    if len(request.tools) > MAX_TOOLS:
        violations.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    names = set()
    for i, tool in enumerate(request.tools):
        if not _TOOL_NAME.match(tool.name):
            violations.append(
                FieldViolation(f"tools[{i}].name", "must be 1 to 64 of a-z, A-Z, 0-9, _ and -")
            )
        if tool.name in names:
            violations.append(FieldViolation(f"tools[{i}].name", "is given twice"))
        names.add(tool.name)
    choice = request.tool_choice
    if choice is not None:
        if not request.tools:
            violations.append(FieldViolation("tool_choice", "requires tools"))
        elif choice.function_name is not None and choice.function_name not in names:
            violations.append(FieldViolation("tool_choice.function_name", "names no tool of tools"))


def _check_server_tools(request: CompletionRequest, violations: list[FieldViolation]) -> None:
    search = request.web_search
    if search is not None:
        check_web_search(search, violations)
    tool_search = search is not None and search.mode is WebSearchMode.TOOL
    if request.parallel_tool_calls is not None and not (request.tools or tool_search):
        violations.append(
            FieldViolation("parallel_tool_calls", "requires tools or a server-tool web search")
        )
    if len(request.session_id) > MAX_SESSION_ID_CHARS:
        violations.append(
            FieldViolation("session_id", f"at most {MAX_SESSION_ID_CHARS} characters")
        )
    marks = len(cache_marks(request.messages, request.tools)) + (request.cache_control is not None)
    if marks > MAX_CACHE_MARKS:
        violations.append(
            FieldViolation("messages", f"at most {MAX_CACHE_MARKS} prompt-cache marks in all")
        )


def trim_history(messages: Sequence[Message], max_turns: int) -> tuple[Message, ...]:
    """Keep every system/developer message and the last ``max_turns`` others, in order.

    Deterministic: the same input always keeps the same messages, so retries and replicas
    send the same prompt.
    """
    others = [i for i, m in enumerate(messages) if m.role not in _KEPT_ON_TRIM]
    if len(others) <= max_turns:
        return tuple(messages)
    dropped = set(others[: len(others) - max_turns])
    kept = [m for i, m in enumerate(messages) if i not in dropped]
    # A tool result whose assistant call was trimmed away would be rejected upstream.
    while True:
        first = next((i for i, m in enumerate(kept) if m.role not in _KEPT_ON_TRIM), None)
        if first is None or kept[first].role is not Role.TOOL:
            break
        del kept[first]
    return tuple(kept)


def identifier_violations(
    model: str, fallback_models: Sequence[str], end_user_id: str
) -> list[FieldViolation]:
    """The caller's identifiers that are too long (or empty where they must not be).

    Checked before anything stores, logs or echoes them: a model name becomes a ledger
    column, a log field and a span attribute, and an error may quote it."""
    violations: list[FieldViolation] = []
    if len(model) > MAX_MODEL_CHARS:
        violations.append(FieldViolation("model", f"at most {MAX_MODEL_CHARS} characters"))
    if len(fallback_models) > MAX_FALLBACK_MODELS:
        violations.append(
            FieldViolation("fallback_models", f"at most {MAX_FALLBACK_MODELS} models")
        )
    for i, fallback in enumerate(fallback_models[:MAX_FALLBACK_MODELS]):
        if not fallback:
            violations.append(FieldViolation(f"fallback_models[{i}]", "must not be empty"))
        elif len(fallback) > MAX_MODEL_CHARS:
            violations.append(
                FieldViolation(f"fallback_models[{i}]", f"at most {MAX_MODEL_CHARS} characters")
            )
    if len(end_user_id) > MAX_END_USER_ID_CHARS:
        violations.append(
            FieldViolation("end_user_id", f"at most {MAX_END_USER_ID_CHARS} characters")
        )
    return violations


def prepare(
    request: CompletionRequest,
    limits: RequestLimits,
    *,
    end_user_id: str = "",
    **updates: Any,
) -> CompletionRequest:
    """Validate ``request`` and return it ready to send: history trimmed, max_tokens set,
    and ``updates`` (model, user, trace headers…) applied in the same, single copy.

    Raises ``InvalidRequestError`` listing every bad field at once.
    """
    violations: list[FieldViolation] = list(request.decode_violations)
    _check_messages(request.messages, limits, violations)
    _check_sampling(request.sampling, limits, violations)
    _check_reasoning(request, limits, violations)
    _check_outputs(request, violations)
    _check_tools(request, violations)
    _check_server_tools(request, violations)
    violations += identifier_violations(request.model, request.fallback_models, end_user_id)
    if request.provider is not None:
        violations.extend(preference_violations(request.provider))
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidRequestError(f"{first.field}: {first.description}{more}", violations)

    sampling = request.sampling
    if sampling.max_tokens is None:
        # Always sent: without it OpenRouter's 402 pre-flight assumes the model's maximum.
        sampling = evolve(sampling, max_tokens=default_max_tokens(request, limits))
    return evolve(
        request,
        messages=trim_history(request.messages, limits.max_history_turns),
        sampling=sampling,
        **updates,
    )
