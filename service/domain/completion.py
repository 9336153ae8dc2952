"""What a completion is: the request the gateway sends on, and the answer it relays back.

These are plain frozen dataclasses, free of protobuf, JSON and HTTP: the api layer converts
protobuf into them, the upstream layer converts them into OpenRouter's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool | None = None


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
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    decode_violations: tuple[FieldViolation, ...] = ()
    """Problems found while decoding the caller's message (an unset enum, say), reported
    together with the domain's own checks so the caller sees every bad field at once."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost of one generation; ``cost_usd`` is None when OpenRouter gave none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        cost: float | None
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            # Summed as decimals: OpenRouter's costs are short decimals, and float addition would
            # turn 0.0000642 + 0.0000642 into 0.00012839999999999998 in the ledger.
            total = Decimal(repr(self.cost_usd or 0.0)) + Decimal(repr(other.cost_usd or 0.0))
            cost = float(total)
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=cost,
        )


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
class StreamFinished:
    """Last event of a complete stream: why it ended and what it cost."""

    finish_reason: FinishReason
    native_finish_reason: str
    usage: Usage | None


StreamEvent = StreamStarted | ContentDelta | ReasoningDelta | ToolCallDelta | StreamFinished


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
