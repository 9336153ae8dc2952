"""Structured output: get JSON that matches a schema out of any model, checked by the gateway.

The mode follows what the model's catalog entry supports: native ``json_schema`` response
formats, else ``json_object`` plus the schema in the system prompt, else the prompt alone.
Whatever the mode, the gateway validates the reply itself, extracts JSON wrapped in prose or
fences, and re-asks once with the validator's findings before giving up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import orjson

from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    FinishReason,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextPart,
    Usage,
)
from service.domain.json_extract import parse_reply, parse_strict
from service.domain.models import ModelInfo
from service.domain.schemas import Finding, RegisteredSchema, summarize_findings
from service.errors import SchemaValidationError

DEFAULT_TEMPERATURE = 0.0
"""Used when the caller set none. Greedy decoding gives the most format-faithful, repeatable
JSON; the re-ask does not need sampling variety because it carries the findings."""

RESPONSE_HEALING = "response-healing"
"""OpenRouter's plugin that repairs fences, prose and trailing commas in non-streamed JSON."""

MAX_ATTEMPTS = 2
"""The first answer plus one corrective re-ask."""

SCHEMA_INSTRUCTION = (
    "Reply with only a JSON value that matches the JSON Schema below: no prose before or "
    "after it, no Markdown fences, no comments. Every property in the schema is required; "
    "use null where the schema allows it and a value is unknown.\n"
    "JSON Schema:\n"
    "```json\n"
    "{schema}\n"
    "```"
)
"""Added to the system prompt when the model cannot enforce the schema itself."""

REASK_INSTRUCTION = (
    "Your previous reply did not match the schema: {findings}. "
    "Reply again with only JSON that matches the schema."
)

_PROMPT_ROLES = (Role.SYSTEM, Role.DEVELOPER)


class StructuredMode(StrEnum):
    """How the schema was conveyed to the model."""

    NATIVE = "native"
    """``response_format: json_schema`` with ``strict``; the provider constrains decoding."""
    JSON_OBJECT = "json_object"
    """``response_format: json_object`` (valid JSON guaranteed) plus the schema in the prompt."""
    INSTRUCTIONS = "instructions"
    """The schema in the prompt only; the model may answer anything."""


class RepairKind(StrEnum):
    EXTRACTED = "extracted"
    """The JSON was cut out of fences or prose by the gateway."""
    REASKED = "reasked"
    """The model was asked again with the validator's findings."""


class StructuredBackend(Protocol):
    """The one call structured output needs; ``ports.CompletionBackend`` satisfies it."""

    async def complete(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Completion: ...


@dataclass(frozen=True, slots=True)
class StructuredResult:
    """A reply that matched its schema, and what it took to get it.

    ``json_text`` is the validated value re-serialised as compact JSON (fences, prose and
    whitespace gone), not the model's raw text, which stays in ``completion.content``.
    ``usage`` is summed over all attempts; ``call_stats`` has one entry per attempt.
    """

    json_text: str
    value: Any
    schema_name: str
    schema_version: int
    mode: StructuredMode
    repairs: tuple[RepairKind, ...]
    attempts: int
    completion: Completion
    usage: Usage
    call_stats: tuple[CallStats, ...]

    @property
    def fallback_used(self) -> bool:
        return self.mode is not StructuredMode.NATIVE

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)

    @property
    def retries(self) -> int:
        """Transport retries inside the upstream client, over all attempts."""
        return sum(stats.retries for stats in self.call_stats)


def choose_mode(model: ModelInfo | None) -> StructuredMode:
    """The strongest mode the model supports; an unknown model is assumed native, so with
    ``require_parameters`` OpenRouter itself says whether any endpoint can serve it."""
    if model is None or model.supports_structured_outputs:
        return StructuredMode.NATIVE
    if model.supports_response_format:
        return StructuredMode.JSON_OBJECT
    return StructuredMode.INSTRUCTIONS


def build_request(
    base: CompletionRequest,
    schema: RegisteredSchema,
    mode: StructuredMode,
    *,
    default_temperature: float = DEFAULT_TEMPERATURE,
    stream: bool = False,
) -> CompletionRequest:
    """``base`` rewritten to ask for ``schema`` in ``mode`` (the first attempt's request).

    Any ``response_format`` already on ``base`` is replaced; the caller's plugins, sampling
    (temperature included, when set) and other fields are kept. A ``stream`` gets no
    response-healing plugin: OpenRouter heals non-streamed replies only.
    """
    sampling = base.sampling
    if sampling.temperature is None:
        sampling = replace(sampling, temperature=default_temperature)
    messages = base.messages
    response_format: ResponseFormat | None = None
    require_parameters = base.require_parameters
    plugins = base.plugins
    if mode is StructuredMode.NATIVE:
        response_format = ResponseFormat(
            kind=ResponseFormatKind.JSON_SCHEMA,
            name=schema.name,
            schema=schema.wire_schema,
            strict=schema.strict,
        )
    else:
        messages = with_schema_instruction(messages, schema)
        if mode is StructuredMode.JSON_OBJECT:
            response_format = ResponseFormat(kind=ResponseFormatKind.JSON_OBJECT)
    if response_format is not None:
        # Support varies per endpoint, not per model: make OpenRouter route only to endpoints
        # that honour response_format rather than to one that silently ignores it.
        require_parameters = True
        # Healing only acts on non-streamed replies with a response_format; without one it
        # would be a no-op, so it is not sent then.
        if not stream and RESPONSE_HEALING not in plugins:
            plugins = (*plugins, RESPONSE_HEALING)
    return replace(
        base,
        messages=messages,
        sampling=sampling,
        response_format=response_format,
        require_parameters=require_parameters,
        plugins=plugins,
    )


def schema_instruction(schema: RegisteredSchema) -> str:
    return SCHEMA_INSTRUCTION.format(schema=schema.schema_json)


def with_schema_instruction(
    messages: tuple[Message, ...], schema: RegisteredSchema
) -> tuple[Message, ...]:
    """The instruction appended to a leading system (or developer) message, else prepended as
    one: several system messages, or one after the first turn, confuse some providers."""
    instruction = schema_instruction(schema)
    if messages and messages[0].role in _PROMPT_ROLES:
        first = messages[0]
        if first.parts:
            return (replace(first, parts=(*first.parts, TextPart(instruction))), *messages[1:])
        content = f"{first.content}\n\n{instruction}" if first.content.strip() else instruction
        return (replace(first, content=content), *messages[1:])
    return (Message(role=Role.SYSTEM, content=instruction), *messages)


@dataclass(frozen=True, slots=True)
class CheckedReply:
    """One reply read and validated."""

    value: Any = None
    ok: bool = False
    extracted: bool = False
    findings: tuple[Finding, ...] = ()
    more_findings: bool = False
    cut_off: bool = False
    """The reply hit the token limit before its JSON was complete."""


def check_reply(completion: Completion, schema: RegisteredSchema) -> CheckedReply:
    return check_text(completion.content, completion.finish_reason, schema)


def check_text(content: str, finish_reason: FinishReason, schema: RegisteredSchema) -> CheckedReply:
    """A reply's text (whole, or a stream's pieces joined) read and validated."""
    parsed = parse_reply(content)
    if not parsed.ok:
        if finish_reason is FinishReason.LENGTH:
            message = (
                "the reply was cut off at the token limit (finish_reason length) before the "
                "JSON was complete; raise max_tokens"
            )
            return CheckedReply(findings=(Finding("", message),), cut_off=True)
        return CheckedReply(findings=(Finding("", parsed.problem),))
    outcome = schema.validate_value(parsed.value)
    return CheckedReply(
        value=parsed.value,
        ok=outcome.ok,
        extracted=parsed.extracted,
        findings=outcome.findings,
        more_findings=outcome.more_findings,
    )


class StructuredCompleter:
    """Runs structured completions: mode choice, validation, extraction and one re-ask.

    Stateless apart from its settings; one instance serves every request.
    """

    def __init__(
        self,
        *,
        default_temperature: float = DEFAULT_TEMPERATURE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.default_temperature = default_temperature
        # Same clock as the deadline (loop.time()); injectable for tests.
        self._clock = clock

    async def complete(
        self,
        base: CompletionRequest,
        schema: RegisteredSchema,
        model: ModelInfo | None,
        *,
        deadline: float,
        backend: StructuredBackend,
        attempt_stats: list[CallStats] | None = None,
    ) -> StructuredResult:
        """A reply to ``base`` that matches ``schema``, or ``SchemaValidationError``.

        ``deadline`` (absolute ``loop.time()``) bounds all attempts together. Each attempt's
        ``CallStats`` is appended to ``attempt_stats`` before the call, so a caller can account
        for what was spent even when this raises.
        """
        mode = choose_mode(model)
        request = build_request(base, schema, mode, default_temperature=self.default_temperature)
        stats_log = attempt_stats if attempt_stats is not None else []
        first_stats = len(stats_log)
        usage = Usage()
        repairs: list[RepairKind] = []
        attempt = 0
        while True:
            attempt += 1
            stats = CallStats()
            stats_log.append(stats)
            completion = await backend.complete(request, deadline=deadline, stats=stats)
            usage = usage + completion.usage
            checked = check_reply(completion, schema)
            if checked.ok:
                if checked.extracted:
                    repairs.append(RepairKind.EXTRACTED)
                return StructuredResult(
                    json_text=orjson.dumps(checked.value).decode(),
                    value=checked.value,
                    schema_name=schema.name,
                    schema_version=schema.version,
                    mode=mode,
                    repairs=tuple(repairs),
                    attempts=attempt,
                    completion=completion,
                    usage=usage,
                    call_stats=tuple(stats_log[first_stats:]),
                )
            findings = summarize_findings(checked.findings, more=checked.more_findings)
            if checked.cut_off:
                # The same budget would cut a re-ask off too; only the caller can fix this.
                why = "was cut off by the token limit before its JSON was complete"
            elif attempt >= MAX_ATTEMPTS:
                why = "did not match the schema after a repair attempt"
            elif self._now() >= deadline:
                why = "did not match the schema, and no time was left for a repair attempt"
            else:
                why = ""
            if why:
                raise schema_failure(schema, mode, attempt, findings, f"the model's output {why}")
            repairs.append(RepairKind.REASKED)
            request = replace(
                request, messages=_reask_messages(request.messages, completion, findings)
            )

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()


def _reask_messages(
    messages: tuple[Message, ...], completion: Completion, findings: str
) -> tuple[Message, ...]:
    reask = Message(role=Role.USER, content=REASK_INSTRUCTION.format(findings=findings))
    if not completion.content.strip():
        # Providers reject empty assistant turns; the findings already say it was empty.
        return (*messages, reask)
    return (*messages, Message(role=Role.ASSISTANT, content=completion.content), reask)


JSON_OBJECT_SCHEMA = "json_object"
"""The ``schema`` ErrorInfo metadata of a JSON-mode answer that is not a JSON object."""


def check_json_object(content: str, finish_reason: FinishReason) -> None:
    """JSON mode (``response_format: json_object``) promises one JSON object: an answer
    that is not one fails with ``SchemaValidationError``, never passes as OK. An answer of
    tool calls only (no content) has nothing to check."""
    if not content and finish_reason is FinishReason.TOOL_CALLS:
        return
    ok, value, problem = parse_strict(content)
    if ok and isinstance(value, dict):
        return
    if finish_reason is FinishReason.LENGTH:
        finding = (
            "the reply was cut off at the token limit (finish_reason length); raise max_tokens"
        )
    elif not content.strip():
        finding = "the reply was empty"
    elif ok:
        finding = f"the reply is JSON but not an object: {_json_kind(value)}"
    else:
        finding = f"the reply is {problem}"
    raise SchemaValidationError(
        "the model's output in JSON mode is not a JSON object",
        metadata={"schema": JSON_OBJECT_SCHEMA, "findings": finding},
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def schema_failure(
    schema: RegisteredSchema, mode: StructuredMode, attempts: int, findings: str, message: str
) -> SchemaValidationError:
    # No reply content here: findings are content-free by construction (see schemas.Finding).
    return SchemaValidationError(
        f"{message} (schema {schema.name})",
        metadata={
            "schema": schema.name,
            "findings": findings,
            "attempts": str(attempts),
            "mode": mode.value,
        },
    )
