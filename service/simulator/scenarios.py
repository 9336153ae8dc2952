"""Per-request scenario directives: how a test tells the simulator which fault to play.

A directive is ``[[sim:NAME]]`` or ``[[sim:NAME=VALUE]]`` anywhere in the text of any message
(string content or ``text`` parts); several may be combined. Unknown names and bad values are
answered with HTTP 400 (message starting "Simulator directive error") so a typo fails loudly.

==============================  ==========================================================
Directive                       Effect
==============================  ==========================================================
``error=CODE``                  Reply HTTP CODE with OpenRouter's body for it. CODE is one of
                                400 401 402 403 404 408 413 422 429 500 502 503 524 529
                                (other 4xx/5xx get a generic body), ``400-echo`` (a
                                provider 400 quoting the input in message and
                                ``metadata.raw``), ``403-guardrail``,
                                ``403-key``, ``429-openrouter`` (free-tier limit with
                                X-RateLimit-* headers) or ``new-shape`` (429 availability
                                body without ``error.code``).
``retry-after=SECONDS``         Retry-After for 429/503/new-shape (default 1; may be 0.2).
``fail-times=N``                With ``error``: fail the first N identical requests, then
                                succeed (counted per canonical body; reset clears).
``fail-primary``                The primary model fails; the first valid ``models`` fallback
                                serves (502 if there is none).
``choice-error``                Unary: HTTP 200, partial content, choice ``finish_reason``
                                "error" with ``error{code:502,...}``.
``mid-stream-error[=VARIANT]``  Stream: a few tokens then an error chunk. VARIANT:
                                (none) documented shape, no [DONE]; ``minimax`` length finish,
                                error chunk with usage, [DONE]; ``string-code``
                                ``"code":"server_error"``; ``empty-choices`` ``choices:[]``.
``drop-after=N``                Stream: N tokens then close the socket (no finish, no [DONE]).
                                Unary: close the socket without a response.
``hang``                        Never answer (stream: headers + keep-alives, then silence)
                                until the client leaves; the disconnect is recorded.
``delay=MS``                    Wait before the response headers.
``pace=MS``                     Pause between stream chunks, on a schedule: the k-th chunk
                                is due k pauses after the first, so a late write is
                                followed by shorter pauses rather than a slower stream.
``jitter=MS``                   With ``pace``: each pause drawn uniformly from pace ± MS.
``stamp``                       Stream: every text token starts with ``@`` and the 19-digit
                                ``time.time_ns()`` at which it was written (benchmarks
                                measure relay lag from it).
``tokens=N``                    Plain-text reply length (default from config), capped by
                                ``max_tokens``/``max_completion_tokens`` (finish "length").
``malformed``                   Unary: 200 with a non-JSON body. Stream: one broken data line.
``bad-content-type``            200 with ``text/html`` (a proxy's error page).
``json=MODE``                   Structured reply: ``valid`` (default), ``invalid`` (prose),
                                ``fenced`` (```json fences + prose), ``wrong-shape`` (violates
                                the schema), ``wrong-once`` (wrong until the conversation
                                grows), ``truncated`` (cut off, finish "length").
``tool-call[=NAME]``            Call the named (or first) tool; arguments fit its schema.
``reasoning[=N]``               N reasoning tokens (default 8) in message/delta ``reasoning``.
``usage-shape=SHAPE``           Stream usage chunk: ``after-finish`` (default), ``empty``
                                (``choices:[]``), ``missing`` (no ``choices``), ``none``.
                                ``usage-shape-empty`` / ``usage-shape-missing`` are aliases.
``no-finish``                   Stream: no finish_reason chunk.
``crlf`` / ``cr``               Stream line endings ``\\r\\n`` / ``\\r``.
``byok``                        The organisation's own provider key serves: ``is_byok``
                                true, ``cost`` a 5% fee on the inference (plus tool fees),
                                ``upstream_inference_cost`` the provider's bill.
``split=N``                     Stream: every frame written N bytes at a time (1: byte by
                                byte), so the gateway reads events cut at any offset.
``keepalive=N``                 N leading ``: OPENROUTER PROCESSING`` comments.
``images=N``                    N generated images (default 1 when ``modalities`` asks for
                                images of an image model; this directive needs that too).
``citations=N``                 N ``url_citation`` annotations on the answer.
``searches=N``                  With the web-search server tool: the model searches N times
                                (at most the tool's ``max_uses``).
``refusal``                     The model refuses: ``refusal`` text, empty content.
``unknown-output=KINDS``        Output the contract does not carry, comma-separated:
                                ``audio`` (``message.audio`` / ``delta.audio``),
                                ``annotation`` (a ``file_annotation``), ``reasoning`` (a
                                ``reasoning.server_tool_call`` detail), ``content-part``
                                (unary: content as parts with an unknown part type).
``serve-provider=SLUG``         Misbehave: that provider serves (``provider`` in the answer,
                                its prices billed), whatever the ``provider`` preferences say.
==============================  ==========================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

_E = TypeVar("_E", bound=StrEnum)

UNKNOWN_KINDS = frozenset({"audio", "annotation", "reasoning", "content-part"})

DIRECTIVE_MARKER = b"[[sim:"

_DIRECTIVE = re.compile(r"\[\[sim:([A-Za-z0-9_-]+)(?:=([^\]]*))?\]\]")

NAMED_ERRORS = frozenset({"400-echo", "403-guardrail", "403-key", "429-openrouter", "new-shape"})


class DirectiveError(ValueError):
    """A directive the simulator does not understand; the request gets HTTP 400."""


class JsonMode(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    FENCED = "fenced"
    WRONG_SHAPE = "wrong-shape"
    WRONG_ONCE = "wrong-once"
    TRUNCATED = "truncated"


class UsageShape(StrEnum):
    AFTER_FINISH = "after-finish"
    EMPTY = "empty"
    MISSING = "missing"
    NONE = "none"


class MidStreamError(StrEnum):
    DOCUMENTED = "documented"
    MINIMAX = "minimax"
    STRING_CODE = "string-code"
    EMPTY_CHOICES = "empty-choices"


@dataclass(frozen=True, slots=True)
class Scenario:
    """What one request asked for; the defaults are a well-behaved model."""

    error: str | None = None
    retry_after: float | None = None
    fail_times: int | None = None
    fail_primary: bool = False
    choice_error: bool = False
    mid_stream_error: MidStreamError | None = None
    drop_after: int | None = None
    hang: bool = False
    delay_ms: float = 0.0
    pace_ms: float | None = None
    jitter_ms: float = 0.0
    stamp: bool = False
    tokens: int | None = None
    malformed: bool = False
    bad_content_type: bool = False
    json_mode: JsonMode | None = None
    tool_call: bool = False
    tool_name: str | None = None
    reasoning_tokens: int = 0
    usage_shape: UsageShape = UsageShape.AFTER_FINISH
    no_finish: bool = False
    line_ending: str = "\n"
    keepalive: int | None = None
    images: int | None = None
    citations: int = 0
    searches: int | None = None
    refusal: bool = False
    unknown_outputs: frozenset[str] = frozenset()
    serve_provider: str | None = None
    split: int | None = None
    byok: bool = False


DEFAULT_SCENARIO = Scenario()


def message_texts(messages: Any) -> Iterator[tuple[str, str]]:
    """(role, text) for every text fragment of every message, skipping other part types."""
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else ""
        content = message.get("content")
        if isinstance(content, str):
            yield role, content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield role, part["text"]


def strip_directives(text: str) -> str:
    """The text as a model would read it, without simulator directives."""
    return " ".join(_DIRECTIVE.sub(" ", text).split())


def parse_scenario(messages: Any) -> Scenario:
    """Collect the directives of all messages into one Scenario (later ones win)."""
    return parse_directives(text for _, text in message_texts(messages))


def parse_directives(texts: Iterable[str]) -> Scenario:
    changes: dict[str, Any] = {}
    for text in texts:
        if "[[sim:" not in text:
            continue
        for match in _DIRECTIVE.finditer(text):
            name = match.group(1).lower()
            value = match.group(2)
            changes.update(_apply(name, value.strip() if value is not None else None))
    if not changes:
        return DEFAULT_SCENARIO
    scenario = replace(DEFAULT_SCENARIO, **changes)
    if scenario.fail_times is not None and scenario.error is None:
        raise DirectiveError("fail-times needs an error=CODE directive")
    return scenario


def _apply(name: str, value: str | None) -> dict[str, Any]:
    flag = _FLAGS.get(name)
    if flag is not None:
        _no_value(name, value)
        return dict(flag)
    match name:
        case "error":
            return {"error": _error_code(_required(name, value))}
        case "retry-after":
            return {"retry_after": _number(name, value, minimum=0.0)}
        case "fail-times":
            return {"fail_times": _integer(name, value, minimum=0)}
        case "mid-stream-error":
            variant = MidStreamError.DOCUMENTED if value is None else _enum(MidStreamError, value)
            return {"mid_stream_error": variant}
        case "drop-after":
            return {"drop_after": _integer(name, value, minimum=0)}
        case "delay":
            return {"delay_ms": _number(name, value, minimum=0.0)}
        case "pace":
            return {"pace_ms": _number(name, value, minimum=0.0)}
        case "jitter":
            return {"jitter_ms": _number(name, value, minimum=0.0)}
        case "tokens":
            return {"tokens": _integer(name, value, minimum=1)}
        case "json":
            return {"json_mode": JsonMode.VALID if value is None else _enum(JsonMode, value)}
        case "tool-call":
            return {"tool_call": True, "tool_name": value or None}
        case "reasoning":
            count = 8 if value is None else _integer(name, value, minimum=1)
            return {"reasoning_tokens": count}
        case "usage-shape":
            return {"usage_shape": _enum(UsageShape, _required(name, value))}
        case "keepalive":
            return {"keepalive": _integer(name, value, minimum=0)}
        case "images":
            return {"images": _integer(name, value, minimum=1)}
        case "citations":
            return {"citations": _integer(name, value, minimum=1)}
        case "searches":
            return {"searches": _integer(name, value, minimum=1)}
        case "unknown-output":
            kinds = frozenset(k.strip().lower() for k in _required(name, value).split(","))
            unknown = kinds - UNKNOWN_KINDS
            if unknown:
                raise DirectiveError(f"unknown-output: {', '.join(sorted(unknown))} not known")
            return {"unknown_outputs": kinds}
        case "serve-provider":
            return {"serve_provider": _required(name, value).lower()}
        case "split":
            return {"split": _integer(name, value, minimum=1)}
    raise DirectiveError(f"unknown directive [[sim:{name}]]")


_FLAGS: dict[str, dict[str, Any]] = {
    "refusal": {"refusal": True},
    "byok": {"byok": True},
    "stamp": {"stamp": True},
    "fail-primary": {"fail_primary": True},
    "choice-error": {"choice_error": True},
    "hang": {"hang": True},
    "malformed": {"malformed": True},
    "bad-content-type": {"bad_content_type": True},
    "no-finish": {"no_finish": True},
    "crlf": {"line_ending": "\r\n"},
    "cr": {"line_ending": "\r"},
    "usage-shape-empty": {"usage_shape": UsageShape.EMPTY},
    "usage-shape-missing": {"usage_shape": UsageShape.MISSING},
    "usage-shape-none": {"usage_shape": UsageShape.NONE},
}


def _no_value(name: str, value: str | None) -> None:
    if value is not None:
        raise DirectiveError(f"[[sim:{name}]] takes no value")


def _required(name: str, value: str | None) -> str:
    if not value:
        raise DirectiveError(f"[[sim:{name}=...]] needs a value")
    return value


def _error_code(value: str) -> str:
    lowered = value.lower()
    if lowered in NAMED_ERRORS:
        return lowered
    if lowered.isdigit() and 400 <= int(lowered) <= 599:
        return lowered
    raise DirectiveError(f"error={value} is not a 4xx/5xx code or a named error")


def _integer(name: str, value: str | None, *, minimum: int) -> int:
    try:
        number = int(_required(name, value))
    except ValueError:
        raise DirectiveError(f"[[sim:{name}={value}]] needs an integer") from None
    if number < minimum:
        raise DirectiveError(f"[[sim:{name}={value}]] must be >= {minimum}")
    return number


def _number(name: str, value: str | None, *, minimum: float) -> float:
    try:
        number = float(_required(name, value))
    except ValueError:
        raise DirectiveError(f"[[sim:{name}={value}]] needs a number") from None
    if not number >= minimum:  # also rejects NaN
        raise DirectiveError(f"[[sim:{name}={value}]] must be >= {minimum}")
    return number


def _enum(kind: type[_E], value: str) -> _E:
    try:
        return kind(value.lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise DirectiveError(f"{value!r} is not one of: {allowed}") from None
