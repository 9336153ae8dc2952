"""The OpenRouter HTTP client: one aiohttp session, retries with jittered backoff, SSE relay.

``OpenRouterClient`` implements ``service.domain.ports.CompletionBackend``. It owns transport
concerns only (connections, timeouts, cancellation); JSON shapes live in ``wire``, SSE
framing in ``sse``, stream semantics in ``streaming``, the failure table in ``errors``, the
retry loop in ``retries`` and the model cache in ``catalog``.

Timing model: ``deadline`` is an absolute ``loop.time()``, infinite when the caller set
none. The budget is the caller's deadline, or ``start + timeout_ms`` without one. A unary
call (all attempts and backoff waits) must end within the budget. A stream must deliver its
first event within the budget; after that its body may run until ``deadline`` itself (no
limit without one), bounded meanwhile by ``read_timeout_ms`` of silence (keep-alive
comments count as data), so a long, healthy stream is never cut.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiohttp
from pydantic import SecretStr

from service.config import OpenRouterSettings
from service.domain.coalescing import coalesce
from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    StreamEvent,
    StreamFinished,
)
from service.domain.embeddings import EmbeddingRequest, Embeddings
from service.domain.models import ModelInfo
from service.domain.ports import GenerationStats
from service.errors import InternalError, UpstreamError
from service.upstream import embeddings, wire
from service.upstream.catalog import ModelCatalog
from service.upstream.errors import (
    attempt_failure,
    deadline_error,
    error_from_payload,
    error_from_response,
    protocol_error,
    read_timeout_error,
)
from service.upstream.observer import UNWATCHED, AttemptObserver, ObservedRequest, UpstreamAttempt
from service.upstream.retries import Retrier
from service.upstream.sse import SSEDecoder, SSEEvent
from service.upstream.streaming import StreamAssembler

logger = logging.getLogger(__name__)

_KEEPALIVE_TIMEOUT_S: Final = 30.0
_ALL_MODELS: Final = {"output_modalities": "all"}
# Headers a caller's trace context may not override.
_PROTECTED_HEADERS: Final = frozenset(
    {"authorization", "content-type", "accept", "http-referer", "x-openrouter-title", "x-title"}
)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]


class OpenRouterClient:
    """Talks to OpenRouter's ``/chat/completions``, ``/embeddings``, ``/models`` and
    ``/generation``.

    ``rng`` drives backoff jitter; pass a seeded ``random.Random`` for repeatable tests.
    ``observer`` (telemetry) sees every chat completion attempt.
    Use ``async with OpenRouterClient(settings) as client`` or ``start()``/``close()``.
    """

    def __init__(
        self,
        settings: OpenRouterSettings,
        *,
        rng: random.Random | None = None,
        observer: AttemptObserver | None = None,
    ) -> None:
        self._settings = settings
        self._retries = Retrier(settings, rng if rng is not None else random.Random())
        self._observer = observer
        self._base = settings.base
        self._session: aiohttp.ClientSession | None = None
        self._catalog = ModelCatalog(self._fetch_models, ttl_s=settings.models_ttl_s)

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"OpenRouterClient(base_url={self._base!r}, {state})"

    def use_api_key(self, key: SecretStr) -> None:
        """Send ``key`` from the next request on (a rotated ``OPENROUTER_API_KEY_FILE``);
        requests already sent keep theirs."""
        self._settings = self._settings.model_copy(update={"api_key": key})

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the one connection pool and start the catalog refresher (idempotent)."""
        if self._session is not None:
            return
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            limit_per_host=s.max_connections,
            keepalive_timeout=_KEEPALIVE_TIMEOUT_S,
        )
        # total=None: aiohttp's default 300 s total would kill long streams. Silence is
        # bounded by sock_read instead, and whole calls by our own deadline timers.
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.connect_timeout_ms / 1000,
            sock_connect=s.connect_timeout_ms / 1000,
            sock_read=s.read_timeout_ms / 1000,
        )
        headers = {"X-OpenRouter-Title": s.x_title, "X-Title": s.x_title}
        if s.http_referer:
            headers["HTTP-Referer"] = s.http_referer
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers, raise_for_status=False
        )
        self._catalog.start()

    async def close(self) -> None:
        await self._catalog.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> OpenRouterClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- completions ---------------------------------------------------------------------

    async def complete(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Completion:
        """One whole answer; retried on transient failures within the budget."""
        stats = stats if stats is not None else CallStats()
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget_end = self._budget_end(started, deadline)
        url = f"{self._base}/chat/completions"
        body = wire.encode_body(request, stream=False)
        headers = self._headers(request.trace_headers, accept="application/json")

        def watch(number: int) -> UpstreamAttempt:
            return self._watch(request, number, url=url, stream=False)

        async def attempt(watched: UpstreamAttempt) -> Completion:
            send = {**headers, **watched.headers} if watched.headers else headers
            reply = await self._exchange("POST", url, send, budget_end, data=body)
            if reply.status != 200:
                raise error_from_response(reply.status, reply.body, reply.headers)
            data = wire.load_object(reply.body, "the answer")
            # Recorded before parsing, so a 200 whose choice carries an error still books
            # the usage it reports.
            stats.generation_id = _str_or_empty(data.get("id")) or reply.headers.get(
                "X-Generation-Id", ""
            )
            stats.served_model = _str_or_empty(data.get("model"))
            stats.provider = _str_or_empty(data.get("provider"))
            stats.usage = wire.parse_usage(data.get("usage"))
            completion = wire.parse_completion(data)
            if completion.produced:
                stats.first_token_at = loop.time()
            watched.succeeded(stats, completion.finish_reason.value)
            return completion

        try:
            return await self._retries.run(attempt, budget_end, stats, watch)
        finally:
            stats.upstream_seconds = loop.time() - started

    async def stream(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Relay one streamed answer as domain events, each as soon as it arrives.

        Retried only until the first event reaches the caller (``stats.relayed``); after
        that, a failure is raised as it is. Closing the generator (or cancelling the task
        iterating it) closes the upstream connection at once, which stops billing for
        providers that support it.
        """
        stats = stats if stats is not None else CallStats()
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget_end = self._budget_end(started, deadline)
        read_deadline = deadline if math.isfinite(deadline) else None
        url = f"{self._base}/chat/completions"
        body = wire.encode_body(request, stream=True)
        headers = self._headers(request.trace_headers, accept="text/event-stream")

        def watch(number: int) -> UpstreamAttempt:
            return self._watch(request, number, url=url, stream=True)

        async def attempt(
            watched: UpstreamAttempt,
        ) -> tuple[UpstreamAttempt, _StreamBody, Sequence[StreamEvent] | StreamFinished]:
            # Opening, and reading until the first event: a stream that opens but never
            # starts must not outlive the budget, and until then a failure may be retried.
            send = {**headers, **watched.headers} if watched.headers else headers
            response = await self._open_stream(url, send, body, budget_end)
            opened = _StreamBody(response, loop.time, stats)
            try:
                return watched, opened, await opened.read(budget_end)
            except BaseException:
                opened.close()
                raise

        try:
            watched, opened, first = await self._retries.run(attempt, budget_end, stats, watch)
            try:
                read = first
                while not isinstance(read, StreamFinished):
                    for event in read:
                        stats.relayed = True
                        yield event
                    read = await opened.read(read_deadline)
            except UpstreamError as exc:
                # Never retried once an event went out: the caller would see it twice.
                self._retries.fail(exc, watched)
            except BaseException as exc:
                watched.failed(exc)
                raise
            finally:
                # close(), not release(): a half-read body must not go back to the pool, and
                # dropping the connection is how OpenRouter learns to stop. (No-op once the
                # body finished: it let go of its connection before handing over the end.)
                opened.close()
            watched.succeeded(stats, read.finish_reason.value)
            yield read
        finally:
            stats.upstream_seconds = loop.time() - started

    async def embed(
        self, request: EmbeddingRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Embeddings:
        """The vectors of every input, in order; retried like ``complete``."""
        stats = stats if stats is not None else CallStats()
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget_end = self._budget_end(started, deadline)
        url = f"{self._base}/embeddings"
        body = embeddings.encode_body(request)
        headers = self._headers(request.trace_headers, accept="application/json")

        def watch(number: int) -> UpstreamAttempt:
            return self._watch(request, number, url=url, stream=False, operation="embeddings")

        async def attempt(watched: UpstreamAttempt) -> Embeddings:
            send = {**headers, **watched.headers} if watched.headers else headers
            reply = await self._exchange("POST", url, send, budget_end, data=body)
            if reply.status != 200:
                raise error_from_response(reply.status, reply.body, reply.headers)
            data = wire.load_object(reply.body, "the embeddings answer")
            if isinstance(data.get("error"), dict):
                raise error_from_payload(data["error"], http_status=200)
            # Recorded before the vectors are read, so an answer whose vectors are broken
            # still books the usage it reports.
            stats.generation_id = _str_or_empty(data.get("id"))
            stats.served_model = _str_or_empty(data.get("model"))
            stats.provider = _str_or_empty(data.get("provider"))
            stats.usage = wire.parse_usage(data.get("usage"))
            result = embeddings.parse_embeddings(data, expected=len(request.inputs))
            stats.first_token_at = loop.time()
            watched.succeeded(stats, "")
            return result

        try:
            return await self._retries.run(attempt, budget_end, stats, watch)
        finally:
            stats.upstream_seconds = loop.time() - started

    # --- catalog and generation stats ----------------------------------------------------

    async def list_models(self) -> Sequence[ModelInfo]:
        """The catalog: fetched on first use, then refreshed in the background before expiry.

        When a refresh fails the previous list keeps being served.
        """
        return await self._catalog.models()

    async def get_generation(
        self, generation_id: str, *, deadline: float
    ) -> GenerationStats | None:
        """OpenRouter's record of a generation; None on 404 (unknown, or not yet written)."""
        loop = asyncio.get_running_loop()
        budget_end = self._budget_end(loop.time(), deadline)
        url = f"{self._base}/generation"
        headers = self._headers({}, accept="application/json", has_body=False)

        async def attempt(_: UpstreamAttempt) -> GenerationStats | None:
            reply = await self._exchange(
                "GET", url, headers, budget_end, params={"id": generation_id}
            )
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise error_from_response(reply.status, reply.body, reply.headers)
            return wire.parse_generation(wire.load_object(reply.body, "the generation record"))

        return await self._retries.run(attempt, budget_end, CallStats())

    async def _fetch_models(self) -> tuple[ModelInfo, ...]:
        loop = asyncio.get_running_loop()
        budget_end = self._budget_end(loop.time(), math.inf)
        url = f"{self._base}/models"
        headers = self._headers({}, accept="application/json", has_body=False)

        async def attempt(_: UpstreamAttempt) -> list[ModelInfo]:
            # Without the filter OpenRouter lists text models only: no embedding models.
            reply = await self._exchange("GET", url, headers, budget_end, params=_ALL_MODELS)
            if reply.status != 200:
                raise error_from_response(reply.status, reply.body, reply.headers)
            models = wire.parse_models(wire.load_object(reply.body, "the model list"))
            return [model for model in models if model.servable]

        return tuple(await self._retries.run(attempt, budget_end, CallStats()))

    # --- transport -----------------------------------------------------------------------

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise InternalError("the OpenRouter client is not started")
        return self._session

    def _budget_end(self, now: float, deadline: float) -> float:
        # The caller's deadline when it set one (a long one may be on purpose), else the
        # configured timeout.
        if math.isfinite(deadline):
            return deadline
        return now + self._settings.timeout_ms / 1000

    def _headers(
        self, trace: Mapping[str, str], *, accept: str, has_body: bool = True
    ) -> dict[str, str]:
        headers = {k: v for k, v in trace.items() if k.lower() not in _PROTECTED_HEADERS}
        headers["Accept"] = accept
        if has_body:
            headers["Content-Type"] = "application/json"
        key = self._settings.api_key
        if key is not None:
            # Read from the SecretStr only here, per request, so it lives in no other object.
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        return headers

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        budget_end: float,
        *,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One attempt: send, read the whole body, map transport failures."""
        session = self._require_session()
        response: aiohttp.ClientResponse | None = None
        clean = False
        timer = asyncio.timeout_at(budget_end)
        try:
            async with timer:
                response = await session.request(
                    method, url, data=data, params=params, headers=headers
                )
                body = await response.read()
            clean = True
            return _Reply(response.status, body, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise attempt_failure(exc, deadline_passed=timer.expired()) from exc
        finally:
            if response is not None:
                if clean:
                    response.release()
                else:
                    response.close()

    async def _open_stream(
        self, url: str, headers: Mapping[str, str], body: bytes, budget_end: float
    ) -> aiohttp.ClientResponse:
        """POST and return a 200 ``text/event-stream`` response, or raise the mapped error."""
        session = self._require_session()
        response: aiohttp.ClientResponse | None = None
        timer = asyncio.timeout_at(budget_end)
        try:
            async with timer:
                response = await session.post(url, data=body, headers=headers)
                if response.status != 200:
                    raw = await response.read()
                    raise error_from_response(response.status, raw, response.headers)
                if response.content_type != "text/event-stream":
                    raw = await response.read()
                    data = wire.load_json(raw, "the answer")
                    if isinstance(data, dict) and isinstance(data.get("error"), dict):
                        raise error_from_payload(data["error"], http_status=200)
                    # Not the content type itself: it is OpenRouter's text, not ours.
                    logger.debug("expected an event stream, got %.64r", response.content_type)
                    raise protocol_error("expected an event stream")
            opened, response = response, None
            return opened
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise attempt_failure(exc, deadline_passed=timer.expired()) from exc
        finally:
            if response is not None:
                response.close()

    def _watch(
        self,
        request: ObservedRequest,
        number: int,
        *,
        url: str,
        stream: bool,
        operation: str = "chat",
    ) -> UpstreamAttempt:
        if self._observer is None:
            return UNWATCHED
        return self._observer.attempt(request, number, url=url, stream=stream, operation=operation)


def _str_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _copy_stream_stats(assembler: StreamAssembler, stats: CallStats) -> None:
    stats.generation_id = assembler.generation_id
    stats.served_model = assembler.model
    stats.provider = assembler.provider
    if assembler.usage is not None:
        stats.usage = assembler.usage
    if stats.first_token_at is None:
        stats.first_token_at = assembler.first_token_at


class _StreamBody:
    """The body of an opened stream, read as batches of domain events.

    ``read`` returns the next non-empty batch, or the ``StreamFinished`` once the stream
    ended (``[DONE]``, or EOF after a finish reason; EOF without one raises
    ``StreamTruncatedError``). On finishing it lets go of its connection first, so a caller
    that stops iterating after the end leaves nothing held open.

    A batch is everything already received (a relay that fell behind finds several events
    buffered), with runs of same-kind deltas merged (``service.domain.coalescing``); it never
    waits for more than the first event. A failure found after some events of a batch is
    raised by the next ``read``, so those events are relayed first, as they would have been
    one by one.
    """

    __slots__ = (
        "_assembler",
        "_decoder",
        "_eof",
        "_failure",
        "_pending",
        "_reader",
        "_response",
        "_stats",
    )

    def __init__(
        self, response: aiohttp.ClientResponse, clock: Callable[[], float], stats: CallStats
    ) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._reader = response.content.iter_any()
        self._decoder = SSEDecoder()
        self._assembler = StreamAssembler(clock)
        self._pending: deque[SSEEvent] = deque()
        self._eof = False
        self._failure: Exception | None = None
        self._stats = stats

    async def read(self, until: float | None) -> Sequence[StreamEvent] | StreamFinished:
        """The next events, waiting for data at most until ``until`` (None: no limit)."""
        assembler = self._assembler
        while True:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            produced = self._received()
            if produced:
                return coalesce(produced)
            if assembler.done or self._eof:
                finished = assembler.finish()
                self._let_go(clean=assembler.done)
                return finished
            chunk = await _next_chunk(self._reader, until, assembler)
            if chunk:
                self._pending.extend(self._decoder.feed(chunk))
            else:
                # EOF, or a cut: clean if a finish reason came, else truncated.
                self._pending.extend(self._decoder.close())
                self._eof = True

    def _received(self) -> list[StreamEvent]:
        """The events of every SSE event decoded so far (up to ``[DONE]``)."""
        assembler = self._assembler
        produced: list[StreamEvent] = []
        try:
            while self._pending and not assembler.done:
                try:
                    produced += assembler.on_event(self._pending.popleft())
                finally:
                    _copy_stream_stats(assembler, self._stats)
        except Exception as exc:
            if not produced:
                raise
            self._failure = exc
        return produced

    def close(self) -> None:
        """Drop the connection unless the body already let go of it."""
        self._let_go(clean=False)

    def _let_go(self, *, clean: bool) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if clean:
            response.release()
        else:
            response.close()


async def _next_chunk(
    reader: AsyncIterator[bytes], until: float | None, assembler: StreamAssembler
) -> bytes:
    """The next raw chunk of a stream body; ``b""`` at EOF (or a cut after the finish)."""
    timer = asyncio.timeout_at(until)
    try:
        async with timer:
            return await anext(reader)
    except StopAsyncIteration:
        return b""
    except TimeoutError as exc:
        if timer.expired():
            raise deadline_error() from exc
        if assembler.finish_reason is not None:
            # Silence after the finish chunk: finish with what we have (usage may be lost).
            logger.debug("stream went silent after its finish reason; ending it")
            return b""
        raise read_timeout_error() from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        # The socket closed mid-body: treated as EOF, which ``finish()`` turns into
        # StreamTruncatedError unless a finish reason already came.
        return b""


__all__ = ["OpenRouterClient"]
