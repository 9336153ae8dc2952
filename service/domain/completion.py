"""What a completion is: the request the gateway sends on, and the answer it relays back.

These are plain frozen dataclasses, free of protobuf, JSON and HTTP: the api layer converts
protobuf into them, the upstream layer converts them into OpenRouter's JSON.

Prompt text, media bytes and URLs are left out of every ``repr``: a stray log line or
traceback of a request must not carry what a caller sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any

from service.domain.providers import ProviderPreferences
from service.domain.server_tools import WebSearch
from service.errors import FieldViolation


class Role(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(StrEnum):
    """OpenRouter's normalised finish reasons; UNSPECIFIED when it sent none."""

    UNSPECIFIED = ""
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"

    @classmethod
    def parse(cls, value: object) -> FinishReason:
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                return cls.UNSPECIFIED
        return cls.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str


class Modality(StrEnum):
    """What a model reads or writes, in OpenRouter's ``architecture`` vocabulary."""

    TEXT = "text"
    IMAGE = "image"
    FILE = "file"
    AUDIO = "audio"
    VIDEO = "video"
    EMBEDDINGS = "embeddings"
    """An output only: embedding models (served by Embed, not by the chat RPCs)."""


@dataclass(frozen=True, slots=True)
class Blob:
    """Media given inline: its IANA media type and raw bytes (sent upstream as a data URL)."""

    mime_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MediaUrl:
    """Media the provider fetches itself; the gateway never does (no request forgery)."""

    url: str = field(repr=False)
    """May be a signed URL with a token in it: never logged."""


MediaSource = Blob | MediaUrl


class ImageDetail(StrEnum):
    AUTO = "auto"
    LOW = "low"
    HIGH = "high"
    ORIGINAL = "original"


class CacheTtl(StrEnum):
    FIVE_MINUTES = "5m"
    ONE_HOUR = "1h"


@dataclass(frozen=True, slots=True)
class CacheControl:
    """A prompt-cache breakpoint (OpenRouter's ``cache_control: {"type": "ephemeral"}``): the
    prompt up to and including the marked part may be cached. ``ttl`` None is the provider's
    default (5 minutes); ``1h`` costs more to write (``pricing.cache_write_1h``)."""

    ttl: CacheTtl | None = None


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str = field(repr=False)
    cache: CacheControl | None = None


@dataclass(frozen=True, slots=True)
class ImagePart:
    source: MediaSource
    detail: ImageDetail | None = None
    cache: CacheControl | None = None


@dataclass(frozen=True, slots=True)
class FilePart:
    """A document (PDF and others); ``filename`` tells the provider what it is."""

    source: MediaSource
    filename: str = field(default="", repr=False)
    cache: CacheControl | None = None


@dataclass(frozen=True, slots=True)
class AudioPart:
    """Audio is inline only: OpenRouter does not accept audio URLs."""

    data: bytes = field(repr=False)
    format: str = ""
    """``wav``, ``mp3``, ``aiff``, ``aac``, ``ogg``, ``flac``, ``m4a``, ``pcm16``, ``pcm24``."""
    cache: CacheControl | None = None


@dataclass(frozen=True, slots=True)
class VideoPart:
    source: MediaSource
    cache: CacheControl | None = None


Part = TextPart | ImagePart | FilePart | AudioPart | VideoPart


def cache_marks(
    messages: Sequence[Message], tools: Sequence[ToolDefinition] = ()
) -> list[CacheControl]:
    """Every prompt-cache mark of the tools and the messages' parts, in prompt order."""
    marks = [t.cache for t in tools if t.cache is not None]
    return marks + [p.cache for m in messages for p in m.parts if p.cache is not None]


PART_MODALITY: Mapping[type[Any], Modality] = {
    TextPart: Modality.TEXT,
    ImagePart: Modality.IMAGE,
    FilePart: Modality.FILE,
    AudioPart: Modality.AUDIO,
    VideoPart: Modality.VIDEO,
}


def part_bytes(part: Part) -> int:
    """Inline bytes a part carries (0 for text and URLs)."""
    if isinstance(part, AudioPart):
        return len(part.data)
    if isinstance(part, TextPart):
        return 0
    source = part.source
    return len(source.data) if isinstance(source, Blob) else 0


class ReasoningDetailType(StrEnum):
    """OpenRouter's ``reasoning_details[].type`` values the contract carries."""

    TEXT = "reasoning.text"
    SUMMARY = "reasoning.summary"
    ENCRYPTED = "reasoning.encrypted"


@dataclass(frozen=True, slots=True)
class ReasoningDetail:
    """One reasoning block (or, in a stream, a piece of one), kept exactly as sent.

    ``None`` means "absent", so a block sent back upstream has the same fields it came with;
    ``signature`` and ``data`` are opaque and must come back byte for byte.
    """

    type: ReasoningDetailType
    id: str | None = None
    format: str | None = None
    index: int | None = None
    text: str | None = field(default=None, repr=False)
    signature: str | None = field(default=None, repr=False)
    summary: str | None = field(default=None, repr=False)
    data: str | None = field(default=None, repr=False)

    @property
    def chars(self) -> int:
        return sum(len(v) for v in (self.text, self.signature, self.summary, self.data) if v)

    @property
    def readable(self) -> str:
        """What a person can read of the block: its text or summary ('' when encrypted)."""
        return self.text or self.summary or ""


def merge_reasoning_details(pieces: Sequence[ReasoningDetail]) -> tuple[ReasoningDetail, ...]:
    """Stream pieces joined into whole blocks, as OpenRouter documents it: pieces with the
    same (type, index) are one block; their text, summary, data and signature concatenate,
    and id and format come from the first piece that has them. Order of first appearance."""
    merged: dict[tuple[ReasoningDetailType, int | None], ReasoningDetail] = {}
    for piece in pieces:
        key = (piece.type, piece.index)
        seen = merged.get(key)
        if seen is None:
            merged[key] = piece
            continue
        merged[key] = ReasoningDetail(
            type=seen.type,
            id=seen.id if seen.id is not None else piece.id,
            format=seen.format if seen.format is not None else piece.format,
            index=seen.index,
            text=_join(seen.text, piece.text),
            signature=_join(seen.signature, piece.signature),
            summary=_join(seen.summary, piece.summary),
            data=_join(seen.data, piece.data),
        )
    return tuple(merged.values())


def _join(first: str | None, second: str | None) -> str | None:
    if first is None:
        return second
    if second is None:
        return first
    return first + second


@dataclass(frozen=True, slots=True)
class UrlCitation:
    """A web source the answer cites; the indexes are a character span of the content."""

    url: str
    title: str = ""
    content: str = field(default="", repr=False)
    start_index: int = 0
    end_index: int = 0


@dataclass(frozen=True, slots=True)
class FileAnnotation:
    """A document OpenRouter parsed; sending it back on the next turn skips re-parsing."""

    hash: str
    name: str = ""
    content: tuple[Part, ...] = field(default=(), repr=False)


Annotation = UrlCitation | FileAnnotation


def annotation_chars(annotation: Annotation) -> int:
    if isinstance(annotation, UrlCitation):
        return len(annotation.url) + len(annotation.title) + len(annotation.content)
    texts = (p.text for p in annotation.content if isinstance(p, TextPart))
    return len(annotation.hash) + len(annotation.name) + sum(len(t) for t in texts)


def annotation_bytes(annotation: Annotation) -> int:
    """Inline image bytes a file annotation carries (its parsed pictures)."""
    if isinstance(annotation, UrlCitation):
        return 0
    return sum(part_bytes(p) for p in annotation.content)


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str = field(repr=False)
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    parts: tuple[Part, ...] = ()
    """Content as parts; a message sets ``content`` or ``parts``, never both."""
    reasoning_details: tuple[ReasoningDetail, ...] = ()
    """An assistant turn's reasoning blocks, sent back upstream unchanged."""
    annotations: tuple[Annotation, ...] = ()
    """An assistant turn's annotations; a parsed file's spares parsing it again."""

    @property
    def text_chars(self) -> int:
        """Characters the message carries as text: ``content``, text parts and the reasoning
        blocks sent back (their signatures and encrypted data included)."""
        chars = len(self.content) + sum(len(p.text) for p in self.parts if isinstance(p, TextPart))
        for detail in self.reasoning_details:
            chars += detail.chars
        for annotation in self.annotations:
            chars += annotation_chars(annotation)
        return chars


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool | None = None
    cache: CacheControl | None = None
    """A prompt-cache breakpoint after this tool's definition."""


class ToolChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    function_name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling knobs; ``None`` means "not sent upstream", so the model's default applies."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


class ResponseFormatKind(StrEnum):
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: ResponseFormatKind
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = True


class ReasoningEffort(StrEnum):
    NONE = "none"
    MINIMAL = "minimal"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    XHIGH = "xhigh"
    MAX = "max"


class ReasoningSummary(StrEnum):
    AUTO = "auto"
    CONCISE = "concise"
    DETAILED = "detailed"


@dataclass(frozen=True, slots=True)
class ReasoningConfig:
    """OpenRouter's ``reasoning`` object; ``None`` fields are not sent."""

    effort: ReasoningEffort | None = None
    max_tokens: int | None = None
    exclude: bool | None = None
    enabled: bool | None = None
    summary: ReasoningSummary | None = None

    @property
    def wanted(self) -> bool:
        """Whether this asks the model to reason (``{}`` does, as OpenRouter reads it)."""
        return self.enabled is not False and self.effort is not ReasoningEffort.NONE


class PdfEngine(StrEnum):
    """How OpenRouter's file-parser plugin reads PDFs."""

    NATIVE = "native"
    CLOUDFLARE_AI = "cloudflare-ai"
    MISTRAL_OCR = "mistral-ocr"


@dataclass(frozen=True, slots=True)
class FileParser:
    """The ``file-parser`` plugin's settings."""

    pdf_engine: PdfEngine | None = None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One call upstream, after validation, trimming and prompt composition.

    ``user`` is already the opaque per-end-user value for OpenRouter, never a raw caller key.
    """

    model: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = SamplingParams()
    fallback_models: tuple[str, ...] = ()
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    require_parameters: bool = False
    plugins: tuple[str, ...] = ()
    reasoning: ReasoningConfig | None = None
    output_modalities: tuple[Modality, ...] = ()
    """Empty: not sent (text only). Otherwise OpenRouter's ``modalities``."""
    logprobs: bool = False
    top_logprobs: int | None = None
    file_parser: FileParser | None = None
    provider: ProviderPreferences | None = None
    """OpenRouter's provider preferences: the caller's as sent, then (after the policy) the
    merged ones, which go upstream as the ``provider`` object."""
    web_search: WebSearch | None = None
    parallel_tool_calls: bool | None = None
    """None: not sent (the provider's default, true)."""
    cache_control: CacheControl | None = None
    """Automatic prompt caching for the whole request (OpenRouter's top-level mark)."""
    session_id: str = field(default="", repr=False)
    """OpenRouter's ``session_id`` (sticky routing): the caller's, never logged."""
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    decode_violations: tuple[FieldViolation, ...] = ()
    """Problems found while decoding the caller's message (an unset enum, say), reported
    together with the domain's own checks so the caller sees every bad field at once."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost of one generation; ``cost_usd`` is None when OpenRouter gave none.

    The per-modality counts are parts of ``prompt_tokens`` / ``completion_tokens``, as
    OpenRouter's ``*_tokens_details`` report them (0 when not reported).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None
    prompt_image_tokens: int = 0
    prompt_audio_tokens: int = 0
    prompt_video_tokens: int = 0
    completion_image_tokens: int = 0
    completion_audio_tokens: int = 0
    cache_write_tokens: int = 0
    """Of ``prompt_tokens``, those written to the prompt cache (``cache_write_tokens``)."""
    web_search_requests: int = 0
    """Searches OpenRouter ran (``server_tool_use_details.web_search_requests``)."""
    server_tool_calls: int = 0
    """Server-tool calls OpenRouter ran (``tool_calls_executed``; a search may count in both)."""
    upstream_cost_usd: float | None = None
    """What the provider billed for inference (``cost_details.upstream_inference_cost``),
    tool fees excluded; None when not reported."""
    upstream_prompt_cost_usd: float | None = None
    upstream_completion_cost_usd: float | None = None
    byok: bool = False
    """The call ran on the organisation's own provider key (``is_byok``)."""

    def __add__(self, other: Usage) -> Usage:
        values: dict[str, Any] = {
            name: _add_amounts(getattr(self, name), getattr(other, name)) for name in _AMOUNTS
        }
        values.update({name: getattr(self, name) + getattr(other, name) for name in _USAGE_COUNTS})
        return Usage(**values, byok=self.byok or other.byok)


def _add_amounts(first: float | None, second: float | None) -> float | None:
    if first is None and second is None:
        return None
    # Summed as decimals: OpenRouter's costs are short decimals, and float addition would
    # turn 0.0000642 + 0.0000642 into 0.00012839999999999998 in the ledger.
    return float(Decimal(repr(first or 0.0)) + Decimal(repr(second or 0.0)))


_AMOUNTS = (
    "cost_usd",
    "upstream_cost_usd",
    "upstream_prompt_cost_usd",
    "upstream_completion_cost_usd",
)
_USAGE_COUNTS = tuple(f.name for f in fields(Usage) if f.name not in (*_AMOUNTS, "byok"))


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image the model made: inline bytes (OpenRouter sends data URLs) or, rarely, a URL."""

    source: MediaSource
    index: int | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str = field(repr=False)
    logprob: float
    bytes: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str = field(repr=False)
    logprob: float
    bytes: bytes | None = field(default=None, repr=False)
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Logprobs:
    """Log probabilities of the answer's tokens (``content``) and of a refusal's."""

    content: tuple[TokenLogprob, ...] = ()
    refusal: tuple[TokenLogprob, ...] = ()

    def __add__(self, other: Logprobs) -> Logprobs:
        return Logprobs(self.content + other.content, self.refusal + other.refusal)


@dataclass(frozen=True, slots=True)
class UnsupportedOutput:
    """Output the upstream returned that the contract cannot carry yet: never dropped
    silently, it is counted and reported (``kind`` names where it was, e.g. ``message.audio``)."""

    kind: str
    count: int


def count_unsupported(kinds: Sequence[str]) -> tuple[UnsupportedOutput, ...]:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return tuple(UnsupportedOutput(kind, n) for kind, n in sorted(counts.items()))


def add_unsupported(seen: dict[str, int], outputs: Sequence[UnsupportedOutput]) -> None:
    for output in outputs:
        seen[output.kind] = seen.get(output.kind, 0) + output.count


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole, non-streamed answer."""

    id: str
    model: str
    provider: str
    content: str
    finish_reason: FinishReason
    native_finish_reason: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    created: int = 0
    reasoning_details: tuple[ReasoningDetail, ...] = ()
    images: tuple[GeneratedImage, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    refusal: str = field(default="", repr=False)
    logprobs: Logprobs | None = None
    unsupported: tuple[UnsupportedOutput, ...] = ()

    @property
    def produced(self) -> bool:
        """Whether the answer holds any output (for time-to-first-token)."""
        return bool(
            self.content
            or self.reasoning
            or self.tool_calls
            or self.images
            or self.refusal
            or self.reasoning_details
            or self.unsupported
        )


# --- Streaming events, in the order a stream yields them -------------------------------


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """First event: the generation id and serving model are known."""

    id: str
    model: str
    provider: str
    created: int = 0


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; ``id`` and ``name`` come with the first piece of each index."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class OutputDelta:
    """One upstream chunk that carries more than plain text: everything in it, together, so a
    caller sees a reasoning piece and its signature (or text and its citation) as one message.

    Plain content, reasoning and tool-call chunks (nearly all of them) stay the small events
    above.
    """

    content: str = field(default="", repr=False)
    reasoning: str = field(default="", repr=False)
    tool_calls: tuple[ToolCallDelta, ...] = ()
    reasoning_details: tuple[ReasoningDetail, ...] = ()
    images: tuple[GeneratedImage, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    refusal: str = field(default="", repr=False)
    logprobs: Logprobs | None = None


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """Last event of a complete stream: why it ended and what it cost.

    ``reasoning_details`` are the stream's pieces merged into whole blocks, ready to be sent
    back on the next turn; ``unsupported`` counts what the contract could not carry.
    """

    finish_reason: FinishReason
    native_finish_reason: str
    usage: Usage | None
    reasoning_details: tuple[ReasoningDetail, ...] = ()
    unsupported: tuple[UnsupportedOutput, ...] = ()


StreamEvent = (
    StreamStarted | ContentDelta | ReasoningDelta | ToolCallDelta | OutputDelta | StreamFinished
)


@dataclass(slots=True)
class CallStats:
    """What one upstream call took, filled in by the upstream client for ledger and metrics."""

    attempts: int = 0
    retries: int = 0
    relayed: bool = False
    generation_id: str = ""
    served_model: str = ""
    provider: str = ""
    usage: Usage | None = None
    first_token_at: float | None = None
    upstream_seconds: float = 0.0
