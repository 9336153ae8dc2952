"""Choose the reply a request gets: plain text, structured JSON or a tool call.

Like OpenRouter, a parameter the model does not support is ignored: `json_schema` needs
`structured_outputs`, `json_object` needs `response_format`, `tools` needs `tools`. A model
that ignores `json_schema` but supports `response_format` answers in JSON mode, and any model
follows a JSON Schema written into its system prompt (the gateway's instruction fallback).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .catalog import ModelInfo
from .generate import (
    Reply,
    ToolCall,
    cap_reply,
    json_pieces,
    random_id,
    seed_for,
    text_pieces,
)
from .outputs import REFUSAL
from .scenarios import DirectiveError, JsonMode, Scenario, message_texts, strip_directives
from .schema_instance import instance_for, schema_from_instructions, violating_instance
from .state import SimulatorState

_INSTRUCTION_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class ReplyInputs:
    """The parts of a chat request that shape the reply."""

    body: Mapping[str, Any]
    messages: Sequence[Any]
    model: ModelInfo
    scenario: Scenario
    stream: bool
    token_limit: int | None
    default_tokens: int


def compose_reply(inputs: ReplyInputs, state: SimulatorState, rng: random.Random) -> Reply:
    """The full reply, already cut at the request's token limit."""
    scenario = inputs.scenario
    reasoning: tuple[str, ...] = ()
    seed = seed_for(_last_user_text(inputs.messages))
    count = scenario.reasoning_tokens or _requested_reasoning(inputs)
    if count:
        reasoning = text_pieces(seed + 1, count)
    hidden = _reasoning_excluded(inputs.body)
    reply = _answer(inputs, state, rng, reasoning, seed)
    if hidden and reply.reasoning:
        reply = replace(reply, reasoning_hidden=True)
    if scenario.refusal and reply.tool_call is None:
        return cap_reply(replace(reply, content=(), refusal=REFUSAL), inputs.token_limit)
    images = _images_asked(inputs)
    if images:
        only_images = inputs.body.get("modalities") == ["image"]
        reply = replace(reply, images=images, content=() if only_images else reply.content)
    return reply


def _images_asked(inputs: ReplyInputs) -> int:
    """Images to generate: one (or ``images=N``) when an image model is asked for images."""
    modalities = inputs.body.get("modalities")
    if not isinstance(modalities, list) or "image" not in modalities:
        return 0
    if not inputs.model.makes("image"):
        return 0
    return inputs.scenario.images or 1


def _answer(
    inputs: ReplyInputs,
    state: SimulatorState,
    rng: random.Random,
    reasoning: tuple[str, ...],
    seed: int,
) -> Reply:
    scenario = inputs.scenario

    tool = _tool_to_call(inputs)
    if tool is not None:
        name, parameters = tool
        arguments = orjson.dumps(instance_for(parameters)).decode()
        call = ToolCall(f"call_{random_id(rng, 24)}", name, arguments)
        reply = Reply((), reasoning, call, json_pieces(arguments), "tool_calls")
        return cap_reply(reply, inputs.token_limit)

    json_reply = _json_reply(inputs, state)
    if json_reply is not None:
        text, finish_reason = json_reply
        return cap_reply(
            Reply(json_pieces(text), reasoning, None, (), finish_reason), inputs.token_limit
        )

    count = scenario.tokens or inputs.default_tokens
    return cap_reply(Reply(text_pieces(seed, count), reasoning), inputs.token_limit)


_DEFAULT_REASONING_TOKENS = 8


def _requested_reasoning(inputs: ReplyInputs) -> int:
    """Reasoning tokens a request's ``reasoning`` object asks of a model that reasons."""
    config = inputs.body.get("reasoning")
    legacy = inputs.body.get("include_reasoning") is True
    if not inputs.model.supports("reasoning") or not (isinstance(config, dict) or legacy):
        return 0
    config = config if isinstance(config, dict) else {}
    if config.get("enabled") is False or config.get("effort") == "none":
        return 0
    budget = config.get("max_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return min(budget, _DEFAULT_REASONING_TOKENS)
    return _DEFAULT_REASONING_TOKENS


def _reasoning_excluded(body: Mapping[str, Any]) -> bool:
    config = body.get("reasoning")
    return isinstance(config, dict) and config.get("exclude") is True


def _last_user_text(messages: Sequence[Any]) -> str:
    texts = [text for role, text in message_texts(messages) if role == "user"]
    return strip_directives(texts[-1]) if texts else ""


def _tool_to_call(inputs: ReplyInputs) -> tuple[str, Any] | None:
    body = inputs.body
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not inputs.model.supports("tools"):
        return None
    functions = {
        tool["function"]["name"]: tool["function"].get("parameters", {})
        for tool in tools
        if isinstance(tool, dict)
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    }
    if not functions:
        return None
    choice = body.get("tool_choice")
    forced: str | None = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name")
    wants_call = inputs.scenario.tool_call or choice == "required" or forced is not None
    # A tool result as the last message means the model now answers in text; without this a
    # directive in an earlier turn would make every follow-up another call.
    last = inputs.messages[-1] if inputs.messages else None
    answered = isinstance(last, dict) and last.get("role") == "tool"
    if choice == "none" or not wants_call or answered:
        return None
    name = inputs.scenario.tool_name or forced or next(iter(functions))
    if name not in functions:
        raise DirectiveError(f"tool-call={name} names no tool in the request")
    return name, functions[name]


def _json_reply(inputs: ReplyInputs, state: SimulatorState) -> tuple[str, str] | None:
    """(content, finish_reason) when the reply should be JSON, else None."""
    body, model, scenario = inputs.body, inputs.model, inputs.scenario
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    instructions = [
        text for role, text in message_texts(inputs.messages) if role in _INSTRUCTION_ROLES
    ]

    schema: Any = None
    if kind == "json_schema" and model.supports("structured_outputs"):
        json_schema = (
            response_format.get("json_schema") if isinstance(response_format, dict) else None
        )
        schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
        active = True
    elif kind in ("json_schema", "json_object") and model.supports("response_format"):
        active = True
    else:
        active = scenario.json_mode is not None
    if schema is None:
        schema = schema_from_instructions(instructions)
        active = active or schema is not None
    if not active:
        return None

    mode = scenario.json_mode or JsonMode.VALID
    if mode is JsonMode.WRONG_ONCE:
        key = str(seed_for(_first_user_text(inputs.messages)))
        first = state.is_first_json_attempt(key, len(inputs.messages))
        mode = JsonMode.WRONG_SHAPE if first else JsonMode.VALID

    document = instance_for(schema) if schema is not None else {"answer": _answer_text(inputs)}
    healing = _wants_healing(body, kind, stream=inputs.stream)
    match mode:
        case JsonMode.INVALID:
            return "Sure! The answer is example, and I hope that helps.", "stop"
        case JsonMode.FENCED if not healing:
            pretty = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
            return f"Here is the JSON you asked for:\n```json\n{pretty}\n```", "stop"
        case JsonMode.WRONG_SHAPE:
            wrong = violating_instance(schema) if schema is not None else ["not", "an", "object"]
            return orjson.dumps(wrong).decode(), "stop"
        case JsonMode.TRUNCATED:
            # Healing cannot repair truncation, so the plugin changes nothing here.
            text = orjson.dumps(document).decode()
            return text[: max(1, len(text) // 2)], "length"
    return orjson.dumps(document).decode(), "stop"


def _first_user_text(messages: Sequence[Any]) -> str:
    for role, text in message_texts(messages):
        if role == "user":
            return text
    return ""


def _answer_text(inputs: ReplyInputs) -> str:
    seed = seed_for(_last_user_text(inputs.messages))
    return "".join(text_pieces(seed, min(inputs.scenario.tokens or 8, 64)))


def _wants_healing(body: Mapping[str, Any], kind: Any, *, stream: bool) -> bool:
    """Response-healing runs only on non-streaming JSON-mode requests."""
    if stream or kind not in ("json_schema", "json_object"):
        return False
    plugins = body.get("plugins")
    if not isinstance(plugins, list):
        return False
    return any(
        isinstance(p, dict) and p.get("id") == "response-healing" and p.get("enabled", True)
        for p in plugins
    )
