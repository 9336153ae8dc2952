"""`POST /api/v1/chat/completions`: validation, scenario faults, unary replies and SSE streams.

Client disconnects are noticed in two ways: the app is meant to run with aiohttp's
``handler_cancellation=True`` (``run_simulator`` and ``__main__`` set it), so a lost
connection cancels the handler at whatever it awaits; and a write to a closed transport raises
``ConnectionResetError``. Either way the handler records a DisconnectRecord and a cancelled
generation. While hanging it also polls the transport, so even without handler cancellation
a disconnect is noticed within ``_HANG_POLL_S``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .catalog import (
    DEFAULT_MODEL_ID,
    IMAGE_TOKENS,
    Catalog,
    ModelInfo,
    ReasoningStyle,
)
from .context import CONTEXT_KEY, SimulatorContext
from .errors import (
    ErrorReply,
    bad_request,
    invalid_model,
    no_endpoints_for_modality,
    scenario_error,
)
from .extras import Extras
from .extras_plan import ExtrasError, cache_use, plan_web_search
from .generate import Reply, prompt_tokens, random_id, seed_for, usage_json
from .intake import Admitted, admit, check_auth, error_response
from .media import MediaError, ParsedFile, PromptMedia, pdf_engine, read_parts
from .outputs import (
    citations,
    file_annotations,
    image_entries,
    logprob_entry,
    unknown_annotations,
    unknown_message_fields,
    unknown_reasoning,
)
from .providers import RoutingError, required_parameters, route
from .reasoning import history_problem, stream_pieces, unary_details
from .replies import ReplyInputs, compose_reply
from .scenarios import (
    DEFAULT_SCENARIO,
    DIRECTIVE_MARKER,
    DirectiveError,
    MidStreamError,
    Scenario,
    UsageShape,
    message_texts,
    parse_scenario,
    strip_directives,
)
from .sse import (
    DONE,
    KEEPALIVE_COMMENT,
    ROLE_CHOICES,
    ChunkEncoder,
    SseWriter,
    annotation_choices,
    content_choices,
    content_logprob_choices,
    delta_choices,
    finish_choices,
    image_choices,
    reasoning_choices,
    reasoning_detail_choices,
    refusal_choices,
    stamped_content_choices,
    tool_arguments_choices,
    tool_call_start_choices,
)
from .state import DisconnectRecord, GenerationRecord

_HANG_POLL_S = 0.02
_MID_STREAM_ERROR_AFTER = 3
_MALFORMED_AFTER = 2
_PARTIAL_TOKENS = 3

_PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>cloudflare</center></body></html>"
)


class _RejectedError(Exception):
    """Stops request preparation with an HTTP error reply."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class _Call:
    """A validated chat request, ready to be served."""

    admitted: Admitted
    body: dict[str, Any]
    messages: list[Any]
    generation_id: str
    created: int
    model: ModelInfo
    model_id: str
    scenario: Scenario
    stream: bool
    token_limit: int | None
    prompt_tokens: int
    external_user: str | None
    media: PromptMedia
    extras: Extras


@dataclass(slots=True)
class _Progress:
    """How far serving got, for recording a disconnect at any point."""

    phase: str = "delay"
    tokens_sent: int = 0
    reasoning_sent: int = 0
    images_sent: int = 0
    first_byte_at: float | None = None
    response: web.StreamResponse | None = None
    finished: bool = False


async def handle_chat(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT_KEY]
    created = int(time.time())
    generation_id = f"gen-{created}-{random_id(ctx.rng, 20)}"
    admitted = await admit(request, ctx, generation_id=generation_id)
    auth_error = check_auth(request, ctx.config)
    if auth_error is not None:
        return error_response(auth_error)
    try:
        call = _prepare(ctx, admitted, generation_id, created)
    except _RejectedError as exc:
        return error_response(exc.reply)
    except DirectiveError as exc:
        return error_response(bad_request(f"Simulator directive error: {exc}"))

    progress = _Progress()
    try:
        return await _serve(request, ctx, call, progress)
    except DirectiveError as exc:
        return error_response(bad_request(f"Simulator directive error: {exc}"))
    except asyncio.CancelledError:
        _record_lost(ctx, call, progress)
        raise
    except ConnectionResetError:
        _record_lost(ctx, call, progress)
        # aiohttp's own write_eof on this response fails quietly (it expects ConnectionError).
        return progress.response or web.Response()


def _prepare(ctx: SimulatorContext, admitted: Admitted, generation_id: str, created: int) -> _Call:
    body = admitted.body
    if not isinstance(body, dict):
        raise _RejectedError(bad_request("Invalid JSON in request body"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _RejectedError(bad_request('Input required: specify "prompt" or "messages"'))
    # Fast mode skips the regex scan for the common case of a body without directives.
    if ctx.config.fast and DIRECTIVE_MARKER not in admitted.raw:
        scenario = DEFAULT_SCENARIO
    else:
        scenario = parse_scenario(messages)
    model, model_id = _resolve_model(body, scenario, ctx.catalog)
    try:
        # The model as the chosen provider serves it: its name and its prices.
        model = route(
            model, model_id, body, scenario.serve_provider, lambda: required_parameters(body)
        )
    except RoutingError as exc:
        raise _RejectedError(exc.reply) from None
    try:
        media = read_parts(messages)
    except MediaError as exc:
        raise _RejectedError(bad_request(str(exc))) from None
    missing = _missing_modality(media, model, body)
    if missing is not None:
        raise _RejectedError(no_endpoints_for_modality(missing))
    try:
        web = plan_web_search(body, model, model_id, scenario.searches)
        cache = cache_use(ctx.state, model, messages, body)
    except ExtrasError as exc:
        raise _RejectedError(bad_request(str(exc))) from None
    extras = Extras(web, cache, _ocr_pages(body, model, messages, media), scenario.byok)
    problem = history_problem(messages) or _session_problem(body.get("session_id"))
    if problem is not None:
        raise _RejectedError(bad_request(problem))
    user = body.get("user")
    extra = [body[key] for key in ("tools", "response_format") if body.get(key)]
    return _Call(
        admitted=admitted,
        body=body,
        messages=messages,
        generation_id=generation_id,
        created=created,
        model=model,
        model_id=model_id,
        scenario=scenario,
        stream=body.get("stream") is True,
        token_limit=_token_limit(body),
        prompt_tokens=(
            prompt_tokens(messages, extra or None)
            + media.tokens
            + (web.result_tokens if web is not None else 0)
        ),
        external_user=user if isinstance(user, str) else None,
        media=media,
        extras=extras,
    )


def _session_problem(session: Any) -> str | None:
    """OpenRouter's rule for ``session_id``: a string of at most 256 characters."""
    if session is None or (isinstance(session, str) and len(session) <= 256):
        return None
    return "session_id must be a string of at most 256 characters"


def _missing_modality(media: PromptMedia, model: ModelInfo, body: dict[str, Any]) -> str | None:
    """A kind of input the serving model cannot take (files: only with the native engine)."""
    for modality in sorted(media.modalities):
        if modality == "file" and pdf_engine(body) != "native":
            continue
        if not model.takes(modality):
            return modality
    return None


def _resolve_model(
    body: dict[str, Any], scenario: Scenario, catalog: Catalog
) -> tuple[ModelInfo, str]:
    """The model that serves: the requested one, or the first usable `models` fallback."""
    fallbacks = [m for m in body.get("models") or [] if isinstance(m, str)]
    requested = body.get("model") or (fallbacks[0] if fallbacks else DEFAULT_MODEL_ID)
    if not isinstance(requested, str):
        raise _RejectedError(bad_request("model must be a string"))
    primary = catalog.get(requested)
    if primary is not None and primary.routes_to:
        # A router serves (and bills) as the model it picks.
        routed = catalog.get(primary.routes_to)
        if routed is not None:
            primary, requested = routed, primary.routes_to
    if primary is not None and not scenario.fail_primary:
        return primary, requested
    for alternative in fallbacks:
        served = catalog.get(alternative)
        if alternative != requested and served is not None:
            return served, alternative
    if primary is None:
        raise _RejectedError(invalid_model(requested))
    raise _RejectedError(_directive_error("502", requested, primary, scenario, 0, ""))


def _token_limit(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _RejectedError(bad_request(f"{name} must be a positive integer"))
        return value
    return None


def _directive_error(
    code: str,
    model_id: str,
    model: ModelInfo,
    scenario: Scenario,
    prompt: int,
    flagged_input: str,
) -> ErrorReply:
    return scenario_error(
        code,
        model_id=model_id,
        provider_name=model.provider_name,
        retry_after=scenario.retry_after,
        flagged_input=flagged_input,
        context_length=model.context_length,
        prompt_tokens=prompt,
    )


async def _serve(
    request: web.Request, ctx: SimulatorContext, call: _Call, progress: _Progress
) -> web.StreamResponse:
    scenario = call.scenario
    if scenario.delay_ms:
        await asyncio.sleep(scenario.delay_ms / 1000)
    if scenario.error is not None and _should_fail(ctx, call):
        user_texts = [text for role, text in message_texts(call.messages) if role == "user"]
        flagged = strip_directives(user_texts[-1]) if user_texts else ""
        return error_response(
            _directive_error(
                scenario.error, call.model_id, call.model, scenario, call.prompt_tokens, flagged
            )
        )
    if scenario.bad_content_type:
        return web.Response(status=200, body=_PROXY_PAGE, content_type="text/html")
    if scenario.hang and not call.stream:
        progress.phase = "hang"
        await _until_disconnected(request)

    reply = compose_reply(
        ReplyInputs(
            body=call.body,
            messages=call.messages,
            model=call.model,
            scenario=scenario,
            stream=call.stream,
            token_limit=call.token_limit,
            default_tokens=ctx.config.default_completion_tokens,
        ),
        ctx.state,
        ctx.rng,
    )
    if call.stream:
        return await _stream(request, ctx, call, reply, progress)
    return _unary(request, ctx, call, reply, progress)


def _should_fail(ctx: SimulatorContext, call: _Call) -> bool:
    return ctx.state.should_fail(call.body, call.scenario.fail_times)


async def _until_disconnected(request: web.Request) -> None:
    """Block until the client goes away (normally ended early by handler cancellation)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        await asyncio.sleep(_HANG_POLL_S)


def _abort_connection(request: web.Request) -> None:
    # close() flushes what was already written, then FIN: the client sees a body cut short.
    transport = request.transport
    if transport is not None:
        transport.close()


def _unary(
    request: web.Request,
    ctx: SimulatorContext,
    call: _Call,
    reply: Reply,
    progress: _Progress,
) -> web.StreamResponse:
    scenario = call.scenario
    headers = {"X-Generation-Id": call.generation_id}
    progress.phase = "unary"
    if scenario.drop_after is not None:
        _abort_connection(request)
        _record_generation(ctx, call, progress, None, cancelled=False, native="network_error")
        return web.Response()

    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    message["reasoning"] = None
    kinds = scenario.unknown_outputs
    details: list[dict[str, Any]] = []
    if reply.reasoning and not reply.reasoning_hidden:
        text, details = unary_details(call.model.reasoning_style, "".join(reply.reasoning))
        message["reasoning"] = text
    details = [*details, *unknown_reasoning(kinds)]
    if details:
        message["reasoning_details"] = details
    if reply.tool_call is not None:
        message["tool_calls"] = [reply.tool_call.to_json()]
    if reply.refusal:
        message["content"] = None
        message["refusal"] = "".join(reply.refusal)
    if reply.images:
        message["images"] = image_entries(seed_for(call.generation_id), reply.images, indexed=False)
    annotations = _annotations(call, reply)
    if annotations:
        message["annotations"] = annotations
    message.update(unknown_message_fields(kinds))
    if "content-part" in kinds:
        message["content"] = [
            {"type": "text", "text": reply.text},
            {"type": "sim_widget", "sim_widget": {"id": "w1"}},
        ]
    choice: dict[str, Any] = {"logprobs": _unary_logprobs(call, reply), "index": 0}
    finish_reason = reply.finish_reason
    progress.tokens_sent = reply.completion_tokens
    progress.reasoning_sent = len(reply.reasoning)
    charged = True
    if scenario.choice_error:
        partial = reply.content[:_PARTIAL_TOKENS]
        message["content"] = "".join(partial)
        progress.tokens_sent = len(partial) + len(reply.reasoning)
        finish_reason, charged = "error", False
        choice["error"] = {
            "code": 502,
            "message": "Provider returned error: upstream connection reset",
            "metadata": {"error_type": "provider_unavailable"},
        }
    native = call.model.native_finish_reason(finish_reason)
    choice.update(finish_reason=finish_reason, native_finish_reason=native, message=message)
    payload = {
        "id": call.generation_id,
        "provider": call.model.provider_name,
        "model": call.model_id,
        "object": "chat.completion",
        "created": call.created,
        "choices": [choice],
        "usage": usage_json(
            call.model,
            call.prompt_tokens,
            progress.tokens_sent,
            progress.reasoning_sent,
            media=call.media,
            images=reply.images,
            charged=charged,
            extras=call.extras,
        ),
    }
    progress.images_sent = reply.images
    body = orjson.dumps(payload)
    if scenario.malformed:
        body = body[: len(body) // 2]
    progress.first_byte_at = time.monotonic()
    _record_generation(ctx, call, progress, finish_reason, cancelled=False, charged=charged)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def _stream(
    request: web.Request,
    ctx: SimulatorContext,
    call: _Call,
    reply: Reply,
    progress: _Progress,
) -> web.StreamResponse:
    scenario, config = call.scenario, ctx.config
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Generation-Id": call.generation_id,
        },
    )
    progress.phase = "headers"
    progress.response = response
    await response.prepare(request)

    if scenario.pace_ms is not None:
        pace = scenario.pace_ms / 1000
    else:
        pace = 0.0 if config.fast else config.token_delay_s
    writer = SseWriter(
        response,
        scenario.line_ending,
        coalesce=config.fast and pace == 0 and scenario.split is None,
        split=scenario.split,
    )
    keepalive = scenario.keepalive
    if keepalive is None:
        keepalive = 0 if config.fast else config.keepalive_comments
    progress.phase = "keepalive"
    for _ in range(keepalive):
        await writer.comment(KEEPALIVE_COMMENT)
    if scenario.hang:
        await writer.flush()
        progress.phase = "hang"
        await _until_disconnected(request)

    progress.phase = "stream"
    encoder = ChunkEncoder(
        call.generation_id, call.model.provider_name, call.model_id, call.created
    )
    await writer.data(encoder.choices(ROLE_CHOICES))
    progress.first_byte_at = time.monotonic()

    mid_error = scenario.mid_stream_error
    token_budget = reply.completion_tokens
    if scenario.drop_after is not None:
        token_budget = min(token_budget, scenario.drop_after)
    elif mid_error is not None and mid_error is not MidStreamError.MINIMAX:
        token_budget = min(token_budget, _MID_STREAM_ERROR_AFTER)
    malformed_pending = scenario.malformed
    if reply.reasoning_hidden:
        # Excluded reasoning is generated and billed, never sent.
        progress.tokens_sent += len(reply.reasoning)
        progress.reasoning_sent += len(reply.reasoning)

    pacer = _Pacer(pace, scenario.jitter_ms / 1000) if pace else None
    stamped = scenario.stamp
    for choices, tokens, is_reasoning, piece in _token_frames(reply, call):
        if progress.tokens_sent + tokens > token_budget:
            break
        if malformed_pending and progress.tokens_sent >= _MALFORMED_AFTER:
            malformed_pending = False
            await writer.data(encoder.choices(choices)[:-20])
        if pacer is not None and tokens:
            await writer.flush()
            await pacer.next()
        if stamped and piece is not None:
            # Stamped as late as possible: the time the token goes to the socket.
            choices = stamped_content_choices(f"@{time.time_ns():019d}{piece}")
        await writer.data(encoder.choices(choices))
        progress.tokens_sent += tokens
        progress.reasoning_sent += tokens if is_reasoning else 0

    if scenario.drop_after is not None:
        await writer.flush()
        _abort_connection(request)
        _record_generation(ctx, call, progress, None, cancelled=False, native="network_error")
        return response

    for extra in _extra_chunks(call, reply):
        await writer.data(encoder.choices(extra))
    images: list[dict[str, Any]] = []
    if reply.images and mid_error is None:
        images = image_entries(seed_for(call.generation_id), reply.images, indexed=True)
        progress.tokens_sent += reply.images * IMAGE_TOKENS
        progress.images_sent = reply.images
    usage = usage_json(
        call.model,
        call.prompt_tokens,
        progress.tokens_sent,
        progress.reasoning_sent,
        media=call.media,
        images=progress.images_sent,
        extras=call.extras,
    )
    if mid_error is not None and mid_error is not MidStreamError.MINIMAX:
        await writer.data(_error_chunk(encoder, mid_error, call.model.provider_name))
        await writer.flush()
        _record_generation(ctx, call, progress, "error", cancelled=False, charged=False)
        return response

    finish_reason = "length" if mid_error is MidStreamError.MINIMAX else reply.finish_reason
    if not scenario.no_finish:
        native = call.model.native_finish_reason(finish_reason)
        if images:
            # As recorded: the whole image rides in the chunk that carries the finish reason.
            await writer.data(encoder.choices(image_choices(images, finish_reason, native)))
        else:
            await writer.data(encoder.choices(finish_choices(finish_reason, native)))
    if mid_error is MidStreamError.MINIMAX:
        error = {"code": 400, "message": "Token limit reached"}
        await writer.data(
            encoder.chunk(
                b'"error":'
                + orjson.dumps(error)
                + b',"choices":'
                + ROLE_CHOICES
                + b',"usage":'
                + orjson.dumps(usage)
            )
        )
    elif call.extras.web is not None and call.extras.web.tool and not scenario.no_finish:
        # As recorded with the server tool: a second finish chunk, carrying the usage.
        native = call.model.native_finish_reason(finish_reason)
        await writer.data(encoder.choices(finish_choices(finish_reason, native), usage=usage))
    else:
        usage_chunk = _usage_chunk(encoder, scenario.usage_shape, usage)
        if usage_chunk is not None:
            await writer.data(usage_chunk)
    await writer.data(DONE)
    await writer.flush()
    _record_generation(ctx, call, progress, finish_reason, cancelled=False)
    return response


_Frame = tuple[bytes, int, bool, str | None]


def _token_frames(reply: Reply, call: _Call) -> list[_Frame]:
    """(choices JSON, tokens it carries, is reasoning, the text of a plain content piece) for
    each chunk after the role chunk."""
    model = call.model
    frames: list[_Frame] = []
    if reply.reasoning and not reply.reasoning_hidden:
        if model.reasoning_style is ReasoningStyle.PLAIN:
            frames = [(reasoning_choices(piece), 1, True, None) for piece in reply.reasoning]
        else:
            frames = [
                (reasoning_detail_choices(text, details), tokens, True, None)
                for text, details, tokens in stream_pieces(model.reasoning_style, reply.reasoning)
            ]
    if reply.tool_call is not None:
        start = tool_call_start_choices(reply.tool_call.id, reply.tool_call.name)
        frames.append((start, 0, False, None))
        frames.extend((tool_arguments_choices(piece), 1, False, None) for piece in reply.arguments)
    elif reply.refusal:
        frames.extend((refusal_choices(piece), 1, False, None) for piece in reply.refusal)
    else:
        top = _logprobs_asked(call)
        if top is None:
            frames.extend((content_choices(piece), 1, False, piece) for piece in reply.content)
        else:
            frames.extend(
                (content_logprob_choices(piece, logprob_entry(piece, top)), 1, False, None)
                for piece in reply.content
            )
    return frames


class _Pacer:
    """Waits for each paced chunk's turn: chunk k is due k pauses (each ``pace`` ± up to
    ``jitter`` seconds) after the first wait, so a late write shortens the next pause instead
    of slowing the whole stream."""

    __slots__ = ("_due", "_jitter", "_pace")

    def __init__(self, pace: float, jitter: float) -> None:
        self._pace = pace
        self._jitter = min(jitter, pace)
        self._due: float | None = None

    async def next(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        pause = self._pace
        if self._jitter:
            pause += random.uniform(-self._jitter, self._jitter)
        self._due = (now if self._due is None else self._due) + pause
        await asyncio.sleep(max(0.0, self._due - now))


def _logprobs_asked(call: _Call) -> int | None:
    """``top_logprobs`` (0 if unset) when the request asks for logprobs the model gives."""
    if call.body.get("logprobs") is not True or not call.model.supports("logprobs"):
        return None
    top = call.body.get("top_logprobs")
    return top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 0


def _unary_logprobs(call: _Call, reply: Reply) -> dict[str, Any] | None:
    top = _logprobs_asked(call)
    if top is None:
        return None
    return {
        "content": [logprob_entry(piece, top) for piece in reply.content],
        "refusal": [logprob_entry(piece, top) for piece in reply.refusal] or None,
    }


def _parsed_files(
    body: dict[str, Any], model: ModelInfo, messages: list[Any], media: PromptMedia
) -> list[ParsedFile]:
    """Files the file-parser read: not with the native engine, nor (by default) for a model
    that reads files itself. The native engine makes no annotations."""
    engine = pdf_engine(body)
    if engine == "native" or (engine is None and model.takes("file")):
        return []
    # A file annotation sent back on an earlier turn spares parsing that file again.
    known = {
        note["file"].get("hash")
        for message in messages
        if isinstance(message, dict) and message.get("role") == "assistant"
        for note in message.get("annotations") or []
        if isinstance(note, dict) and isinstance(note.get("file"), dict)
    }
    return [parsed for parsed in media.files if parsed.hash not in known]


def _ocr_pages(
    body: dict[str, Any], model: ModelInfo, messages: list[Any], media: PromptMedia
) -> int:
    """Pages read with ``mistral-ocr``: the engine named, or OpenRouter's default."""
    if pdf_engine(body) not in (None, "mistral-ocr"):
        return 0
    return sum(parsed.pages for parsed in _parsed_files(body, model, messages, media))


def _annotations(call: _Call, reply: Reply) -> list[dict[str, Any]]:
    web = call.extras.web
    found = web.results * web.searches if web is not None else 0
    return [
        *citations(reply.text, call.scenario.citations or found),
        *file_annotations(_parsed_files(call.body, call.model, call.messages, call.media)),
        *unknown_annotations(call.scenario.unknown_outputs),
    ]


def _extra_chunks(call: _Call, reply: Reply) -> list[bytes]:
    """Chunks after the text and before the finish: one per annotation (as recorded), and
    the kinds the gateway's contract does not carry."""
    kinds = call.scenario.unknown_outputs
    chunks = [annotation_choices(a) for a in _annotations(call, reply)]
    if unknown_reasoning(kinds):
        chunks.append(reasoning_detail_choices(None, unknown_reasoning(kinds)))
    chunks.extend(delta_choices(field) for field in [unknown_message_fields(kinds)] if field)
    return chunks


def _error_chunk(encoder: ChunkEncoder, variant: MidStreamError, provider: str) -> bytes:
    error: dict[str, Any]
    failed = orjson.dumps(
        [
            {
                "index": 0,
                "delta": {"content": ""},
                "finish_reason": "error",
                "native_finish_reason": "error",
            }
        ]
    )
    match variant:
        case MidStreamError.STRING_CODE:
            error = {"code": "server_error", "message": "Internal server error"}
        case MidStreamError.EMPTY_CHOICES:
            error = {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {
                    "raw": "Worker local total request limit reached",
                    "provider_name": provider,
                },
            }
            failed = b"[]"
        case _:
            error = {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"error_type": "provider_unavailable", "provider_name": provider},
            }
    return encoder.chunk(b'"error":' + orjson.dumps(error) + b',"choices":' + failed)


def _usage_chunk(encoder: ChunkEncoder, shape: UsageShape, usage: dict[str, Any]) -> bytes | None:
    match shape:
        case UsageShape.AFTER_FINISH:
            return encoder.choices(ROLE_CHOICES, usage=usage)
        case UsageShape.EMPTY:
            return encoder.choices(b"[]", usage=usage)
        case UsageShape.MISSING:
            return encoder.chunk(b'"usage":' + orjson.dumps(usage))
    return None


def _record_generation(
    ctx: SimulatorContext,
    call: _Call,
    progress: _Progress,
    finish_reason: str | None,
    *,
    cancelled: bool,
    charged: bool = True,
    native: str | None = None,
) -> None:
    progress.finished = True
    now = time.monotonic()
    started = call.admitted.started
    completion = progress.tokens_sent
    # Zero-completion insurance: nothing is billed for an empty or failed generation.
    if completion == 0 and finish_reason is None:
        charged = False
    ctx.state.record_generation(
        GenerationRecord(
            id=call.generation_id,
            model=call.model_id,
            provider_name=call.model.provider_name,
            created_at=datetime.fromtimestamp(call.created, UTC).isoformat(),
            streamed=call.stream,
            cancelled=cancelled,
            latency_ms=round(((progress.first_byte_at or now) - started) * 1000),
            generation_time_ms=round((now - started) * 1000),
            finish_reason=finish_reason,
            native_finish_reason=native or call.model.native_finish_reason(finish_reason),
            tokens_prompt=call.prompt_tokens,
            tokens_completion=completion,
            tokens_reasoning=progress.reasoning_sent,
            total_cost=(
                usage_json(
                    call.model,
                    call.prompt_tokens,
                    completion,
                    progress.reasoning_sent,
                    media=call.media,
                    images=progress.images_sent,
                    extras=call.extras,
                )["cost"]
                if charged
                else 0.0
            ),
            external_user=call.external_user,
        )
    )


def _record_lost(ctx: SimulatorContext, call: _Call, progress: _Progress) -> None:
    """Record a client that left before the reply was complete (once per request)."""
    if progress.finished:
        return
    noticed = time.monotonic()
    _record_generation(ctx, call, progress, None, cancelled=True)
    ctx.state.record_disconnect(
        DisconnectRecord(
            request_id=call.admitted.request_id,
            generation_id=call.generation_id,
            time=noticed,
            started=call.admitted.started,
            tokens_sent=progress.tokens_sent,
            phase=progress.phase,
            streamed=call.stream,
        )
    )
