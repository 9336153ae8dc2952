"""The OpenRouter HTTP client: one aiohttp session, retries with jittered backoff, SSE relay.

``OpenRouterClient`` implements ``service.domain.ports.CompletionBackend``. It owns transport
concerns only (connections, timeouts, retries, cancellation); JSON shapes live in ``wire``,
SSE framing in ``sse``, stream semantics in ``streaming`` and the error table in ``errors``.

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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, TypeVar

import aiohttp

from service.config import OpenRouterSettings
from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    StreamEvent,
    StreamFinished,
)
from service.domain.models import ModelInfo
from service.domain.ports import GenerationStats
from service.errors import GatewayError, InternalError, UpstreamError
from service.upstream import wire
from service.upstream.errors import (
    connection_error,
    deadline_error,
    error_from_payload,
    error_from_response,
    is_retryable,
    protocol_error,
    read_timeout_error,
)
from service.upstream.sse import SSEDecoder
from service.upstream.streaming import StreamAssembler

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_KEEPALIVE_TIMEOUT_S: Final = 30.0
# Refresh the catalog when this fraction of its TTL has passed, so readers never wait.
_REFRESH_AT_FRACTION: Final = 0.8
# After a failed refresh, try again after this fraction of the TTL (the stale list is served).
_REFRESH_RETRY_FRACTION: Final = 0.1
# Headers a caller's trace context may not override.
_PROTECTED_HEADERS: Final = frozenset(
    {"authorization", "content-type", "accept", "http-referer", "x-openrouter-title", "x-title"}
)


class UpstreamAttempt(Protocol):
    """One attempt of a chat call, as an observer follows it (for telemetry, a client span).

    Exactly one of ``succeeded``, ``retrying`` or ``failed`` is called per attempt.
    """

    @property
    def headers(self) -> Mapping[str, str]:
        """Trace context to send with this attempt; it overrides the request's."""
        ...

    def succeeded(self, stats: CallStats, finish_reason: str) -> None: ...

    def retrying(self, error: UpstreamError, delay_s: float) -> None:
        """The attempt failed with ``error`` and another follows after ``delay_s``."""
        ...

    def failed(self, error: BaseException) -> None:
        """The attempt failed and the call with it (or the caller left: ``CancelledError``)."""
        ...


class AttemptObserver(Protocol):
    """Watches chat attempts. Defined here so that the upstream layer imports no observer:
    ``service.telemetry`` implements it and ``service.server`` plugs it in."""

    def attempt(
        self, request: CompletionRequest, number: int, *, url: str, stream: bool
    ) -> UpstreamAttempt: ...


class _Unwatched:
    """The attempt of a client with no observer: adds nothing, records nothing."""

    __slots__ = ()
    headers: Mapping[str, str] = {}

    def succeeded(self, stats: CallStats, finish_reason: str) -> None:
        pass

    def retrying(self, error: UpstreamError, delay_s: float) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass


_UNWATCHED: Final = _Unwatched()


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]


class OpenRouterClient:
    """Talks to OpenRouter's ``/chat/completions``, ``/models`` and ``/generation``.

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
        self._rng = rng if rng is not None else random.Random()
        self._observer = observer
        self._base = settings.base
        self._session: aiohttp.ClientSession | None = None
        self._models: tuple[ModelInfo, ...] | None = None
        self._models_by_id: dict[str, ModelInfo] = {}
        self._models_expire_at = 0.0
        self._models_refresh_at = 0.0
        self._models_lock = asyncio.Lock()
        self._models_loaded = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"OpenRouterClient(base_url={self._base!r}, {state})"

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
        self._refresh_task = asyncio.create_task(
            self._refresh_models_forever(), name="openrouter-models-refresh"
        )

    async def close(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Re-raise only if *we* are being cancelled, not because of task.cancel().
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
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
            if completion.content or completion.reasoning or completion.tool_calls:
                stats.first_token_at = loop.time()
            watched.succeeded(stats, completion.finish_reason.value)
            return completion

        try:
            return await self._with_retries(attempt, budget_end, stats, watch)
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
        retries = 0
        try:
            while True:
                stats.attempts += 1
                watched = self._watch(request, stats.attempts, url=url, stream=True)
                send = {**headers, **watched.headers} if watched.headers else headers
                response: aiohttp.ClientResponse | None = None
                clean = False
                try:
                    response = await self._open_stream(url, send, body, budget_end)
                    decoder = SSEDecoder()
                    assembler = StreamAssembler(loop.time)
                    reader = response.content.iter_any()
                    finished: StreamFinished | None = None
                    while finished is None:
                        # Until the first event reaches the caller, the budget bounds the wait:
                        # a stream that opens but never starts must not outlive timeout_ms.
                        chunk = await self._next_chunk(
                            reader, read_deadline if stats.relayed else budget_end, assembler
                        )
                        events = decoder.feed(chunk) if chunk else decoder.close()
                        for sse in events:
                            try:
                                produced = assembler.on_event(sse)
                            finally:
                                _copy_stream_stats(assembler, stats)
                            for event in produced:
                                stats.relayed = True
                                yield event
                            if assembler.done:
                                break
                        if assembler.done or not chunk:
                            # [DONE], or EOF: clean if a finish reason came, else truncated.
                            finished = assembler.finish()
                    clean = assembler.done
                except UpstreamError as exc:
                    # Never retried once an event went out: the caller would see it twice.
                    delay = self._next_delay(exc, retries, budget_end, watched, not stats.relayed)
                except BaseException as exc:
                    watched.failed(exc)
                    raise
                else:
                    # Close before handing over the last event: a caller that stops iterating
                    # after StreamFinished must not leave the connection held open.
                    if clean:
                        response.release()
                    else:
                        response.close()
                    response = None
                    watched.succeeded(stats, finished.finish_reason.value)
                    yield finished
                    return
                finally:
                    if response is not None:
                        # close(), not release(): a half-read body must not go back to the pool,
                        # and dropping the connection is how OpenRouter learns to stop.
                        response.close()
                retries += 1
                stats.retries = retries
                await asyncio.sleep(delay)
        finally:
            stats.upstream_seconds = loop.time() - started

    # --- catalog and generation stats ----------------------------------------------------

    async def list_models(self) -> Sequence[ModelInfo]:
        """The catalog: fetched on first use, then refreshed in the background before expiry.

        When a refresh fails the previous list keeps being served.
        """
        models = self._models
        loop = asyncio.get_running_loop()
        refreshing = self._refresh_task is not None and not self._refresh_task.done()
        if models is not None and (refreshing or loop.time() < self._models_expire_at):
            return models
        async with self._models_lock:
            if self._models is not None and loop.time() < self._models_expire_at:
                return self._models
            try:
                return await self._fetch_models()
            except GatewayError as exc:
                if self._models is None:
                    raise
                logger.warning(
                    "model catalog refresh failed (%s); serving the cached list", exc.reason
                )
                return self._models

    async def get_model(self, model_id: str) -> ModelInfo | None:
        await self.list_models()
        return self._models_by_id.get(model_id)

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

        return await self._with_retries(attempt, budget_end, CallStats())

    async def _fetch_models(self) -> tuple[ModelInfo, ...]:
        loop = asyncio.get_running_loop()
        budget_end = self._budget_end(loop.time(), math.inf)
        url = f"{self._base}/models"
        headers = self._headers({}, accept="application/json", has_body=False)

        async def attempt(_: UpstreamAttempt) -> list[ModelInfo]:
            reply = await self._exchange("GET", url, headers, budget_end)
            if reply.status != 200:
                raise error_from_response(reply.status, reply.body, reply.headers)
            return wire.parse_models(wire.load_object(reply.body, "the model list"))

        models = tuple(await self._with_retries(attempt, budget_end, CallStats()))
        now = loop.time()
        ttl = self._settings.models_ttl_s
        self._models = models
        self._models_by_id = {m.id: m for m in models}
        self._models_expire_at = now + ttl
        self._models_refresh_at = now + ttl * _REFRESH_AT_FRACTION
        self._models_loaded.set()
        logger.debug("model catalog loaded: %d models", len(models))
        return models

    async def _refresh_models_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The first fetch is the first caller's; refreshing starts once there is a list.
            await self._models_loaded.wait()
            delay = self._models_refresh_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with self._models_lock:
                    await self._fetch_models()
            except Exception as exc:
                reason = exc.reason if isinstance(exc, GatewayError) else type(exc).__name__
                logger.warning("model catalog refresh failed (%s); serving the cached list", reason)
                self._models_refresh_at = (
                    loop.time() + self._settings.models_ttl_s * _REFRESH_RETRY_FRACTION
                )

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
            raise _attempt_failure(exc, timer) from exc
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
                    raise protocol_error(f"expected an event stream, got {response.content_type}")
            opened, response = response, None
            return opened
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _attempt_failure(exc, timer) from exc
        finally:
            if response is not None:
                response.close()

    async def _next_chunk(
        self,
        reader: AsyncIterator[bytes],
        read_deadline: float | None,
        assembler: StreamAssembler,
    ) -> bytes:
        """The next raw chunk of a stream body; ``b""`` at EOF (or a cut after the finish)."""
        timer = asyncio.timeout_at(read_deadline)
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

    def _watch(
        self, request: CompletionRequest, number: int, *, url: str, stream: bool
    ) -> UpstreamAttempt:
        if self._observer is None:
            return _UNWATCHED
        return self._observer.attempt(request, number, url=url, stream=stream)

    async def _with_retries(
        self,
        attempt: Callable[[UpstreamAttempt], Awaitable[_T]],
        budget_end: float,
        stats: CallStats,
        watch: Callable[[int], UpstreamAttempt] | None = None,
    ) -> _T:
        retries = 0
        while True:
            stats.attempts += 1
            watched = _UNWATCHED if watch is None else watch(stats.attempts)
            try:
                return await attempt(watched)
            except UpstreamError as exc:
                delay = self._next_delay(exc, retries, budget_end, watched)
            except BaseException as exc:
                watched.failed(exc)
                raise
            retries += 1
            stats.retries = retries
            await asyncio.sleep(delay)

    def _next_delay(
        self,
        error: UpstreamError,
        retries: int,
        budget_end: float,
        watched: UpstreamAttempt,
        may_retry: bool = True,
    ) -> float:
        """The wait before retrying ``error``; raises it (or a deadline error) when it is final."""
        self._scrub(error)
        try:
            delay = self._retry_delay(error, retries, budget_end) if may_retry else None
        except BaseException:
            watched.failed(error)
            raise
        if delay is None:
            watched.failed(error)
            raise error
        watched.retrying(error, delay)
        return delay

    def _retry_delay(self, error: UpstreamError, retries: int, budget_end: float) -> float | None:
        """The wait before retrying ``error``, or None to raise it as is.

        Raises DeadlineExceededError when the budget is already gone.
        """
        if not is_retryable(error) or retries >= self._settings.max_retries:
            return None
        s = self._settings
        if error.retry_after_s is not None:
            delay = min(error.retry_after_s, s.retry_after_cap_ms / 1000)
        else:
            # Full jitter: spreads a burst of failing callers over the whole window.
            ceiling = min(s.backoff_max_ms, s.backoff_base_ms * 2**retries) / 1000
            delay = self._rng.uniform(0.0, ceiling)
        now = asyncio.get_running_loop().time()
        if now >= budget_end:
            raise deadline_error() from error
        if now + delay >= budget_end:
            # Sleeping would cross the deadline; the caller learns the real cause now.
            return None
        logger.info(
            "retrying OpenRouter call after %s (retry %d, wait %.3fs)",
            error.reason,
            retries + 1,
            delay,
        )
        return delay

    def _scrub(self, error: GatewayError) -> None:
        """Last line of defence: our own key never leaves in a message or metadata value."""
        key = self._settings.api_key
        secret = key.get_secret_value() if key is not None else ""
        if not secret:
            return
        if secret in error.message:
            error.message = error.message.replace(secret, "[redacted]")
            error.args = (error.message,)
        for name, value in error.metadata.items():
            if secret in value:
                error.metadata[name] = value.replace(secret, "[redacted]")


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


def _attempt_failure(exc: BaseException, timer: asyncio.Timeout) -> GatewayError:
    """Our own deadline when it is the timer that expired, else the transport's failure."""
    if isinstance(exc, TimeoutError) and timer.expired():
        return deadline_error()
    return _transport_error(exc)


def _transport_error(exc: BaseException) -> UpstreamError:
    """A failed attempt below HTTP: the connection, or a read timeout."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return connection_error("connecting timed out")
    if isinstance(exc, TimeoutError):
        return read_timeout_error()
    if isinstance(exc, aiohttp.ClientConnectorError):
        return connection_error("the connection was refused or could not be made")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return connection_error("the server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return connection_error("the connection closed mid-answer")
    return connection_error(type(exc).__name__)


__all__ = ["OpenRouterClient"]
