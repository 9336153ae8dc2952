"""Structured completion orchestration against a scripted backend: modes, repairs, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    FinishReason,
    Message,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Usage,
)
from service.domain.models import ModelInfo
from service.domain.schemas import RegisteredSchema, SchemaRegistry
from service.domain.structured import (
    DEFAULT_TEMPERATURE,
    RESPONSE_HEALING,
    RepairKind,
    StructuredCompleter,
    StructuredMode,
    StructuredResult,
    build_request,
    choose_mode,
)
from service.errors import SchemaValidationError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SECRET = "secret-user-data-7"
GOOD = {"answer": "hello", "followUps": [], "safety": {"flagged": False, "reason": None}}
GOOD_TEXT = json.dumps(GOOD, indent=2)
WRONG_TEXT = json.dumps({"answer": SECRET, "followUps": "none"})

NATIVE = ModelInfo("openai/gpt-4o-mini", supported_parameters=frozenset({"structured_outputs"}))
JSON_ONLY = ModelInfo(
    "anthropic/claude-3.5-haiku", supported_parameters=frozenset({"response_format"})
)
PLAIN = ModelInfo("mistralai/mistral-7b-instruct", supported_parameters=frozenset({"temperature"}))


@pytest.fixture(scope="module")
def schema() -> RegisteredSchema:
    return SchemaRegistry.load(SCHEMAS).get("chat_reply_v1")


def _base(*messages: Message, temperature: float | None = None) -> CompletionRequest:
    return CompletionRequest(
        model="openai/gpt-4o-mini",
        messages=messages or (Message(Role.USER, "Say hello"),),
        sampling=SamplingParams(temperature=temperature, max_tokens=500),
    )


def _reply(
    content: str, *, tokens: int = 10, finish: FinishReason = FinishReason.STOP
) -> Completion:
    return Completion(
        id=f"gen-{tokens}",
        model="openai/gpt-4o-mini",
        provider="OpenAI",
        content=content,
        finish_reason=finish,
        usage=Usage(prompt_tokens=100, completion_tokens=tokens, total_tokens=100 + tokens),
    )


class ScriptedBackend:
    """Answers each call with the next scripted completion and records the requests."""

    def __init__(self, *replies: Completion) -> None:
        self.replies = list(replies)
        self.requests: list[CompletionRequest] = []

    async def complete(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Completion:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if stats is not None:
            stats.attempts = 2
            stats.retries = 1
            stats.generation_id = reply.id
            stats.usage = reply.usage
        return reply


async def _run(
    schema: RegisteredSchema,
    backend: ScriptedBackend,
    model: ModelInfo | None = NATIVE,
    *,
    base: CompletionRequest | None = None,
    completer: StructuredCompleter | None = None,
    stats: list[CallStats] | None = None,
) -> StructuredResult:
    runner = completer or StructuredCompleter()
    return await runner.complete(
        base or _base(),
        schema,
        model,
        deadline=float("inf"),
        backend=backend,
        attempt_stats=stats,
    )


# --- mode and request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        (NATIVE, StructuredMode.NATIVE),
        (None, StructuredMode.NATIVE),
        (JSON_ONLY, StructuredMode.JSON_OBJECT),
        (PLAIN, StructuredMode.INSTRUCTIONS),
    ],
)
def test_mode_follows_capabilities(model: ModelInfo | None, mode: StructuredMode) -> None:
    assert choose_mode(model) is mode


def test_native_request(schema: RegisteredSchema) -> None:
    base = _base()
    request = build_request(base, schema, StructuredMode.NATIVE)
    fmt = request.response_format
    assert fmt is not None
    assert fmt.kind is ResponseFormatKind.JSON_SCHEMA
    assert (fmt.name, fmt.strict) == ("chat_reply_v1", True)
    assert fmt.schema == schema.wire_schema
    assert request.require_parameters
    assert request.plugins == (RESPONSE_HEALING,)
    assert request.sampling.temperature == DEFAULT_TEMPERATURE
    assert request.sampling.max_tokens == 500
    assert request.messages == base.messages


def test_callers_temperature_and_plugins_are_kept(schema: RegisteredSchema) -> None:
    base = CompletionRequest(
        model="m",
        messages=(Message(Role.USER, "hi"),),
        sampling=SamplingParams(temperature=0.9),
        plugins=("moderation", RESPONSE_HEALING),
    )
    request = build_request(base, schema, StructuredMode.NATIVE)
    assert request.sampling.temperature == 0.9
    assert request.plugins == ("moderation", RESPONSE_HEALING)


def test_json_object_request_puts_the_schema_in_the_system_prompt(
    schema: RegisteredSchema,
) -> None:
    base = _base(Message(Role.SYSTEM, "You are terse."), Message(Role.USER, "hi"))
    request = build_request(base, schema, StructuredMode.JSON_OBJECT)
    assert request.response_format is not None
    assert request.response_format.kind is ResponseFormatKind.JSON_OBJECT
    assert request.plugins == (RESPONSE_HEALING,)
    assert request.require_parameters
    assert len(request.messages) == 2
    system = request.messages[0].content
    assert system.startswith("You are terse.\n\nReply with only a JSON value")
    assert f"```json\n{schema.schema_json}\n```" in system
    assert request.messages[1] == base.messages[1]


def test_instructions_request_has_no_response_format(schema: RegisteredSchema) -> None:
    base = _base(Message(Role.USER, "hi"))
    request = build_request(base, schema, StructuredMode.INSTRUCTIONS)
    assert request.response_format is None
    assert request.plugins == ()
    assert not request.require_parameters
    assert request.messages[0].role is Role.SYSTEM
    assert schema.schema_json in request.messages[0].content
    assert request.messages[1:] == base.messages


# --- orchestration -------------------------------------------------------------------------


async def test_a_conforming_reply(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(GOOD_TEXT))
    result = await _run(schema, backend)
    assert result.value == GOOD
    assert result.json_text == json.dumps(GOOD, separators=(",", ":"))
    assert (result.schema_name, result.schema_version) == ("chat_reply_v1", 1)
    assert result.mode is StructuredMode.NATIVE
    assert not result.fallback_used
    assert not result.repaired
    assert result.attempts == 1
    assert result.completion.id == "gen-10"
    assert result.retries == 1


async def test_fenced_reply_is_extracted_locally(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(f"Here you go:\n```json\n{GOOD_TEXT}\n```"))
    result = await _run(schema, backend, PLAIN)
    assert result.value == GOOD
    assert result.repairs == (RepairKind.EXTRACTED,)
    assert result.fallback_used
    assert result.attempts == 1


async def test_wrong_then_right_reasks_once_and_sums_usage(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(WRONG_TEXT, tokens=7), _reply(GOOD_TEXT, tokens=11))
    stats: list[CallStats] = []
    result = await _run(schema, backend, stats=stats)
    assert result.attempts == 2
    assert result.repairs == (RepairKind.REASKED,)
    assert result.usage == Usage(prompt_tokens=200, completion_tokens=18, total_tokens=218)
    assert result.completion.id == "gen-11"
    assert [s.generation_id for s in result.call_stats] == ["gen-7", "gen-11"]
    assert result.retries == 2
    assert stats == list(result.call_stats)
    first, second = backend.requests
    assert second.response_format == first.response_format
    assert second.messages[: len(first.messages)] == first.messages
    assistant, correction = second.messages[len(first.messages) :]
    assert assistant == Message(Role.ASSISTANT, WRONG_TEXT)
    assert correction.role is Role.USER
    assert correction.content.startswith("Your previous reply did not match the schema: ")
    assert "/followUps: expected array, got string" in correction.content
    assert "missing required property 'safety'" in correction.content
    assert SECRET not in correction.content
    assert correction.content.endswith("Reply again with only JSON that matches the schema.")


async def test_wrong_twice_fails_with_findings_and_no_content(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(WRONG_TEXT), _reply(f"No. {SECRET}"))
    stats: list[CallStats] = []
    with pytest.raises(SchemaValidationError) as caught:
        await _run(schema, backend, stats=stats)
    error = caught.value
    assert error.reason == "SCHEMA_VALIDATION_FAILED"
    assert "did not match the schema after a repair attempt" in error.message
    assert error.metadata["schema"] == "chat_reply_v1"
    assert error.metadata["attempts"] == "2"
    assert error.metadata["mode"] == "native"
    assert error.metadata["findings"].startswith("(root): not valid JSON")
    assert len(error.metadata["findings"]) <= 500
    assert SECRET not in error.message
    assert SECRET not in str(error.metadata)
    assert len(stats) == 2


async def test_cut_off_reply_is_not_reasked(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply('{"answer": "a very long', finish=FinishReason.LENGTH))
    with pytest.raises(SchemaValidationError) as caught:
        await _run(schema, backend)
    assert len(backend.requests) == 1
    assert caught.value.metadata["attempts"] == "1"
    assert "raise max_tokens" in caught.value.metadata["findings"]
    assert "cut off by the token limit" in caught.value.message


async def test_empty_reply_is_reasked_without_an_empty_assistant_turn(
    schema: RegisteredSchema,
) -> None:
    backend = ScriptedBackend(_reply(""), _reply(GOOD_TEXT))
    result = await _run(schema, backend)
    assert result.attempts == 2
    extra = backend.requests[1].messages[len(backend.requests[0].messages) :]
    assert [m.role for m in extra] == [Role.USER]
    assert "the reply was empty" in extra[0].content


async def test_no_reask_once_the_deadline_has_passed(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(WRONG_TEXT), _reply(GOOD_TEXT))
    late = StructuredCompleter(clock=lambda: 1000.0)
    with pytest.raises(SchemaValidationError) as caught:
        await late.complete(_base(), schema, NATIVE, deadline=999.0, backend=backend)
    assert "no time was left" in caught.value.message
    assert len(backend.requests) == 1


async def test_completer_default_temperature_is_configurable(schema: RegisteredSchema) -> None:
    backend = ScriptedBackend(_reply(GOOD_TEXT))
    await _run(schema, backend, completer=StructuredCompleter(default_temperature=0.2))
    assert backend.requests[0].sampling.temperature == 0.2
